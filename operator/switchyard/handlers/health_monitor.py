"""Runs every attached backend's probe on its interval, with bounded concurrency, and tells
the gateway pass when a backend changes state (or its status is due a refresh)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from switchyard import metrics
from switchyard.api.models import parse_duration
from switchyard.handlers import identity
from switchyard.health.probes import Outcome, ProbeResult, Target, probe
from switchyard.health.state import BackendHealth
from switchyard.kube.secrets import SecretCache
from switchyard.plan.gateway import ObjectKey, key_material
from switchyard.providers import Exchange
from switchyard.tokens import IdentitySource, MintingFailed, TokenMinter, is_workload_identity

logger = logging.getLogger(__name__)

BackendKey = tuple[str, str, str]  # (namespace, endpoint, backend)
# Thousands of backends must not open thousands of sockets at once.
MAX_CONCURRENT_PROBES = 64
# A steady backend's probe time and latency reach its status at most this often.
STATUS_REFRESH_SECONDS = 60.0
TICK_SECONDS = 0.2
# Live failures reported by Envoy bring a backend's probe forward, but no closer than this.
EXPEDITE_SECONDS = 1.0
IN_DOUBT_SECONDS = 30.0


@dataclass(frozen=True)
class Credentials:
    """Where a backend's key is: a Secret's key, sent as it is or exchanged for a token; or,
    for a workload identity's exchange, the gateway's ServiceAccount (`secret`)."""

    secret: ObjectKey
    key: str
    exchange: Exchange | None = None


@dataclass
class Watched:
    gateway: ObjectKey
    labels: tuple[str, str, str, str, str]  # namespace, endpoint, backend, provider, gateway
    target: Target
    credentials: Credentials | None
    interval: float
    health: BackendHealth
    next_due: float
    running: bool = False
    last_started: float = float("-inf")
    in_doubt_until: float = float("-inf")


class HealthMonitor:
    def __init__(
        self,
        secrets: SecretCache,
        on_change: Callable[[ObjectKey], None],
        tokens: TokenMinter | None = None,
        identities: Callable[[ObjectKey, Exchange], IdentitySource] | None = None,
    ) -> None:
        self._secrets = secrets
        self._tokens = tokens or TokenMinter()
        self._identities = identities
        self._on_change = on_change
        self._watched: dict[BackendKey, Watched] = {}
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_PROBES)
        self._tasks: set[asyncio.Task[None]] = set()

    def watch(
        self,
        gateway: ObjectKey,
        backends: Mapping[BackendKey, tuple[Target, Credentials | None, Any]],
        shown: Mapping[BackendKey, dict[str, Any]],
    ) -> None:
        """Set the backends probed for a gateway: (target, credentials, healthCheck spec).

        A backend seen for the first time resumes from what its status shows."""
        now = time.monotonic()
        for key in [k for k, w in self._watched.items() if w.gateway == gateway]:
            if key not in backends:
                metrics.forget_backend(self._watched.pop(key).labels)
        for key, (target, credentials, check) in backends.items():
            current = self._watched.get(key)
            thresholds = (check.unhealthy_threshold, check.healthy_threshold)
            if (
                current is None
                or (
                    current.health.unhealthy_threshold,
                    current.health.healthy_threshold,
                )
                != thresholds
            ):
                health = BackendHealth(*thresholds)
                if key in shown:
                    health.restore(shown[key], now, datetime.datetime.now(datetime.UTC))
                interval = _seconds(check.interval)
                # Spread the first probes over the interval instead of all at once.
                labels = (*key, target.provider, f"{gateway[0]}/{gateway[1]}")
                # Its failover counters exist from 0, so that increase() sees the first.
                metrics.BACKENDS.of(labels)
                current = Watched(
                    gateway, labels, target, credentials, interval, health,
                    now + random.uniform(0, min(interval, 1.0)),
                )  # fmt: skip
                self._watched[key] = current
            else:
                current.target, current.credentials = target, credentials
                current.interval = _seconds(check.interval)
                if current.gateway != gateway:
                    # The endpoint moved here: its probes go on, filed under this gateway, so
                    # the pass of the one it left does not drop them.
                    metrics.forget_backend(current.labels)
                    current.gateway = gateway
                    current.labels = (*key, target.provider, f"{gateway[0]}/{gateway[1]}")
                    metrics.BACKENDS.of(current.labels)

    def resume(self, shown: Mapping[BackendKey, dict[str, Any]]) -> None:
        """Take on what status shows for each watched backend, as after a restart: a
        standby that becomes the leader writes on from the status its predecessor wrote,
        not from the probe times of its own."""
        now, wall = time.monotonic(), datetime.datetime.now(datetime.UTC)
        for key, entry in shown.items():
            if (watched := self._watched.get(key)) is not None:
                watched.health.restore(entry, now, wall)

    def watching(self, key: BackendKey) -> ObjectKey | None:
        """The gateway a backend is probed for, if it is probed."""
        watched = self._watched.get(key)
        return watched.gateway if watched else None

    def expedite(self, key: BackendKey) -> None:
        """Live traffic to the backend is failing: probe it now, and keep probing it once a
        second while it is in doubt, so the thresholds are met in seconds, not intervals."""
        watched = self._watched.get(key)
        if watched is None:
            return
        watched.in_doubt_until = time.monotonic() + IN_DOUBT_SECONDS
        if not watched.running:
            watched.next_due = min(watched.next_due, watched.last_started + EXPEDITE_SECONDS)

    def back_off(self, key: BackendKey, seconds: float) -> None:
        """A provider answered live traffic with 429: route around the backend until its
        Retry-After has passed, then back to it."""
        watched = self._watched.get(key)
        if watched is None:
            return
        now = time.monotonic()
        before = watched.health.held_back(now)
        until = watched.health.rate_limited_until
        if watched.health.back_off(seconds, now, _wall_time(seconds)):
            self._on_change(watched.gateway)
        if watched.health.rate_limited_until > until:
            # Each later Retry-After moves the moment the backend comes back.
            asyncio.get_running_loop().call_later(seconds, self._on_change, watched.gateway)
        _export_state(watched, before, now)

    def forget(self, gateway: ObjectKey) -> None:
        for key in [k for k, w in self._watched.items() if w.gateway == gateway]:
            metrics.forget_backend(self._watched.pop(key).labels)

    def held_back(self, gateway: ObjectKey) -> dict[BackendKey, str]:
        now = time.monotonic()
        held = {}
        for key, watched in self._watched.items():
            if watched.gateway == gateway and (reason := watched.health.held_back(now)):
                held[key] = reason
        return held

    def shown(self, key: BackendKey) -> dict[str, Any]:
        watched = self._watched.get(key)
        if watched is None:
            return {}
        shown = dict(watched.health.published)
        if ends := watched.health.rate_limit_shown(time.monotonic()):
            shown["rateLimitedUntil"] = ends
        return shown

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=MAX_CONCURRENT_PROBES, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            while True:
                now = time.monotonic()
                for key, watched in list(self._watched.items()):
                    if not watched.running and watched.next_due <= now:
                        watched.running = True
                        watched.last_started = now
                        task = asyncio.create_task(self._probe(session, key, watched))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                await asyncio.sleep(TICK_SECONDS)

    async def _probe(
        self, session: aiohttp.ClientSession, key: BackendKey, watched: Watched
    ) -> None:
        try:
            async with self._limit:
                result = await self._probed(session, watched)
            now = time.monotonic()
            before = watched.health.held_back(now)
            if watched.health.observe(
                result, now, _wall_time(), STATUS_REFRESH_SECONDS, _wall_time(result.retry_after)
            ):
                self._on_change(watched.gateway)
            metrics.BACKENDS.of(watched.labels).observe_probe(result.latency_ms / 1000)
            _export_state(watched, before, now)
            if result.retry_after:
                # Route to it again once its Retry-After has passed.
                loop = asyncio.get_running_loop()
                loop.call_later(result.retry_after, self._on_change, watched.gateway)
        except Exception:
            logger.exception("probe of backend %s/%s/%s failed", *key)
        finally:
            watched.running = False
            now = time.monotonic()
            doubtful = now < watched.in_doubt_until and watched.health.consecutive_failures > 0
            watched.next_due = now + (EXPEDITE_SECONDS if doubtful else watched.interval)

    async def _probed(self, session: aiohttp.ClientSession, watched: Watched) -> ProbeResult:
        """The probe, with the key the data plane sends: a minted token for a key that is
        exchanged. A key the token endpoint refuses is invalid credentials, as a refused
        key is; a token the provider refuses is minted anew for the next pass and probe."""
        credentials = watched.credentials
        material = await self._material(credentials)
        if credentials is None or credentials.exchange is None or material is None:
            key = material.decode() if material is not None else None
            return await probe(session, watched.target, key)
        source = None
        if is_workload_identity(credentials.exchange) and self._identities is not None:
            source = self._identities(credentials.secret, credentials.exchange)
        try:
            minted = await self._tokens.token(credentials.exchange, material, source)
        except MintingFailed as failure:
            return ProbeResult(Outcome.CREDENTIALS_INVALID, 0, failure.reason)
        result = await probe(session, watched.target, minted.token)
        if result.outcome == Outcome.CREDENTIALS_INVALID:
            self._tokens.invalidate(credentials.exchange, material)
            self._on_change(watched.gateway)
        return result

    async def _material(self, credentials: Credentials | None) -> bytes | None:
        if credentials is None:
            return None
        if is_workload_identity(credentials.exchange):
            return identity.material(credentials.secret)
        data = await self._secrets.get(credentials.secret) or {}
        value = data.get(credentials.key)
        return base64.b64decode(key_material(value)) if value else None


def _wall_time(later: float = 0.0) -> str:
    """Now, or `later` seconds from now (rounded up), as status writes times."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=later)
    if later and moment.microsecond:
        moment += datetime.timedelta(seconds=1)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _export_state(watched: Watched, before: str | None, now: float) -> None:
    health, values = watched.health, metrics.BACKENDS.of(watched.labels)
    values.up = 1 if health.healthy else 0
    values.consecutive_failures = health.consecutive_failures
    values.credentials_valid = 1 if health.credentials_valid else 0
    values.rate_limited = 1 if health.rate_limited_until > now else 0
    after = health.held_back(now)
    if after is not None and before is None:
        values.failed_over(after)


def _seconds(duration: str) -> float:
    return parse_duration(duration)
