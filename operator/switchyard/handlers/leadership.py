"""Leader election on a coordination.k8s.io Lease, for running two operator replicas.

Every replica watches, plans and probes, and keeps every gateway's xDS snapshot
(content-addressed, so the versions are the same on each); only the leader writes to the API
server and listens for Envoys, since the status it writes must rest on every Envoy's ACKs,
NACKs and failure reports. A
leader that cannot renew in time stops writing before its lease can have passed to another,
and a standby takes over once the lease has gone unrenewed for its duration: after a
`kill -9`, within LEASE_SECONDS + RETRY_SECONDS. A leader that stops cleanly hands the lease
back at once.

Expiry is judged as client-go judges it: by when this replica last saw the lease record
change, on its own monotonic clock, never by another node's timestamps, so clock skew between
nodes cannot make two leaders.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable
from typing import Any

from switchyard.kube.client import ApiError, Kube, describe_error

logger = logging.getLogger(__name__)

LEASE_NAME = "switchyard-leader"
LEASE_SECONDS = 10
RETRY_SECONDS = 2.0
# A leader that has not renewed for this long stops writing: well before LEASE_SECONDS.
RENEW_DEADLINE_SECONDS = 7.0
# A round the API server leaves unanswered (etcd away, a dead connection) is abandoned, and
# the next one tried.
ROUND_TIMEOUT_SECONDS = 5.0


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Leadership:
    def __init__(
        self,
        kube: Kube,
        namespace: str,
        identity: str,
        on_elected: Callable[[], None] = lambda: None,
        on_deposed: Callable[[], None] = lambda: None,
        on_reconnected: Callable[[], None] = lambda: None,
    ) -> None:
        """`on_reconnected`: called when a round succeeds after one that failed, as the API
        server answers again after a gap in which watch events may have been lost."""
        self.kube = kube
        self.namespace = namespace
        self.identity = identity
        self.on_elected = on_elected
        self.on_deposed = on_deposed
        self.on_reconnected = on_reconnected
        self._leading = False
        # Steps a leader down when it has not renewed in time, even while a round hangs.
        self._deadline: asyncio.TimerHandle | None = None
        # The lease record as last seen, and when (monotonic) it was first seen so
        self._seen: tuple[Any, ...] | None = None
        self._seen_at = 0.0

    def leading(self) -> bool:
        return self._leading

    async def run(self) -> None:
        failing = False
        while True:
            try:
                await asyncio.wait_for(self._round(), ROUND_TIMEOUT_SECONDS)
                if failing:
                    failing = False
                    self.on_reconnected()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the API server is away: try again, step down in time
                logger.warning("leader election round failed: %s", describe_error(error))
                failing = True
            await asyncio.sleep(RETRY_SECONDS)

    async def _round(self) -> None:
        lease = await self.kube.read_lease(self.namespace, LEASE_NAME)
        spec = (lease or {}).get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, spec.get("renewTime"), spec.get("leaseTransitions"))
        now = time.monotonic()
        if record != self._seen:
            self._seen, self._seen_at = record, now
        duration = spec.get("leaseDurationSeconds") or LEASE_SECONDS
        if holder and holder != self.identity and now - self._seen_at < duration:
            self._set(False)  # another replica holds a live lease
            return
        stamp = _micro_time()
        taking_over = holder != self.identity
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": LEASE_NAME,
                "namespace": self.namespace,
                **({"resourceVersion": lease["metadata"]["resourceVersion"]} if lease else {}),
            },
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": LEASE_SECONDS,
                "acquireTime": stamp if taking_over else spec.get("acquireTime", stamp),
                "renewTime": stamp,
                "leaseTransitions": (spec.get("leaseTransitions") or 0) + (1 if holder else 0)
                if taking_over
                else spec.get("leaseTransitions") or 0,
            },
        }
        try:
            await self.kube.write_lease(body)
        except ApiError as error:
            if error.status == 409:  # another candidate won this round
                self._set(False)
                return
            raise
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = asyncio.get_running_loop().call_later(
            RENEW_DEADLINE_SECONDS, self._renew_deadline_passed
        )
        self._set(True)

    def _renew_deadline_passed(self) -> None:
        if self._leading:
            logger.warning("could not renew the leader lease in time: no longer writing")
            self._set(False)

    async def release(self) -> None:
        """Hand the lease back on a clean stop, so the standby takes over at once."""
        if not self._leading:
            return
        self._set(False)
        lease = await self.kube.read_lease(self.namespace, LEASE_NAME)
        if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
            lease["spec"] = {**lease["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.kube.write_lease(lease)

    def _set(self, leading: bool) -> None:
        if leading == self._leading:
            return
        self._leading = leading
        if leading:
            logger.info("leading as %s: this replica writes to the API server now", self.identity)
            self.on_elected()
        else:
            logger.info("standing by as %s", self.identity)
            self.on_deposed()
