"""Two operator replicas against the real API server: one writes, the other takes over."""

from __future__ import annotations

import asyncio
import copy
import time

import pytest

from switchyard.handlers.leadership import (
    LEASE_SECONDS,
    RENEW_DEADLINE_SECONDS,
    RETRY_SECONDS,
    Leadership,
)
from switchyard.kube.client import ApiError, Kube, load_configuration
from tests_support.cluster import Cluster
from tests_support.partition import Partition
from tests_support.scenario import API_VERSION

pytestmark = pytest.mark.integration


def test_one_leader_and_a_standby_that_takes_over(namespace: str) -> None:
    async def scenario() -> tuple[float, float]:
        kubes = [Kube(await load_configuration()) for _ in range(3)]
        try:
            first = Leadership(kubes[0], namespace, "first")
            second = Leadership(kubes[1], namespace, "second")
            running = {name: asyncio.create_task(c.run()) for name, c in
                       (("first", first), ("second", second))}  # fmt: skip
            deadline = time.monotonic() + 10
            while not (first.leading() or second.leading()):
                assert time.monotonic() < deadline, "nobody took the free lease"
                await asyncio.sleep(0.1)
            leader, standby = (first, second) if first.leading() else (second, first)
            for _ in range(30):  # 3 s of rounds: never two leaders
                assert leader.leading() != standby.leading()
                await asyncio.sleep(0.1)
            # The leader dies without a word (kill -9): its lease runs out.
            running[leader.identity].cancel()
            died = time.monotonic()
            while not standby.leading():
                assert time.monotonic() - died < 15, "the standby did not take over in 15 s"
                await asyncio.sleep(0.1)
            takeover = time.monotonic() - died
            # A clean stop hands the lease back: a newcomer leads at its next round.
            newcomer = Leadership(kubes[2], namespace, "newcomer")
            joined = asyncio.create_task(newcomer.run())
            await asyncio.sleep(RETRY_SECONDS + 0.5)
            assert not newcomer.leading()
            running[standby.identity].cancel()
            await standby.release()
            released = time.monotonic()
            while not newcomer.leading():
                assert time.monotonic() - released < LEASE_SECONDS, "the handover waited"
                await asyncio.sleep(0.1)
            handover = time.monotonic() - released
            joined.cancel()
            return takeover, handover
        finally:
            for kube in kubes:
                await kube.close()

    takeover, handover = asyncio.run(scenario())
    print(f"takeover after kill: {takeover:.1f} s; after a clean stop: {handover:.1f} s")
    assert handover < RETRY_SECONDS + 1


def test_a_leader_the_api_server_stops_answering_steps_down_before_its_lease_runs_out(
    namespace: str,
) -> None:
    """A round that hangs (etcd away, a connection that died without a word) must not keep a
    replica leading after another could have taken the lease: never two leaders."""

    async def scenario() -> float:
        configuration = await load_configuration()
        host, _, port = str(configuration.host).removeprefix("https://").rpartition(":")
        partition = Partition(host, int(port))
        through_partition = copy.copy(configuration)
        through_partition.host = f"https://127.0.0.1:{partition.port}"
        kubes = [Kube(through_partition), Kube(await load_configuration())]
        try:
            leader = Leadership(kubes[0], namespace, "leader")
            standby = Leadership(kubes[1], namespace, "standby")
            running = [asyncio.create_task(leader.run())]
            deadline = time.monotonic() + 10
            while not leader.leading():
                assert time.monotonic() < deadline, "the leader did not take the free lease"
                await asyncio.sleep(0.1)
            running.append(asyncio.create_task(standby.run()))
            await asyncio.sleep(RETRY_SECONDS + 0.5)
            partition.cut()
            cut = time.monotonic()
            while not standby.leading():
                assert not leader.leading() or time.monotonic() - cut < RENEW_DEADLINE_SECONDS + 1
                assert time.monotonic() - cut < LEASE_SECONDS * 2, "the standby never took over"
                await asyncio.sleep(0.05)
            assert not leader.leading(), "two leaders"
            for task in running:
                task.cancel()
            return time.monotonic() - cut
        finally:
            partition.close()
            for kube in kubes:
                await kube.close()

    takeover = asyncio.run(scenario())
    print(f"the standby led {takeover:.1f} s after the leader was cut off")


def test_a_status_computed_from_an_older_version_is_refused(
    cluster: Cluster, namespace: str
) -> None:
    """What a deposed leader would write from its stale view never lands."""
    cluster.apply({"apiVersion": API_VERSION, "kind": "ModelGateway",
                   "metadata": {"name": "gw", "namespace": namespace}, "spec": {}})  # fmt: skip
    stale = cluster.get("modelgateways", "gw", namespace)
    assert stale is not None

    async def writes() -> int:
        kube = Kube(await load_configuration())
        try:
            version = stale["metadata"]["resourceVersion"]
            await kube.patch_status("modelgateways", namespace, "gw", {"attachedEndpoints": 1},
                                    version)  # fmt: skip
            try:
                await kube.patch_status("modelgateways", namespace, "gw",
                                        {"attachedEndpoints": 7}, version)  # fmt: skip
            except ApiError as error:
                return int(error.status)
            return 200
        finally:
            await kube.close()

    assert asyncio.run(writes()) == 409
    current = cluster.get("modelgateways", "gw", namespace)
    assert current is not None
    assert current["status"]["attachedEndpoints"] == 1
