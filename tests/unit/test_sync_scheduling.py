"""How the operator schedules gateway passes and routes Envoy's failure reports."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from switchyard.handlers.state import Store
from switchyard.handlers.sync import GatewaySync, _Seen
from switchyard.render.deployment import EnvoyPods
from switchyard.xds.server import FailedAttempt, node_of_gateway
from tests_support.plans import GATEWAY_KEY, sample_plan

# The slow one sorts first: a batch passed in order would hold the other back.
SLOW, FAST = ("infra", "a-slow"), ("infra", "b-fast")


class TimedSync(GatewaySync):
    """The real scheduler, with passes that take as long as the test says."""

    def __init__(self, durations: dict[tuple[str, str], float]) -> None:
        super().__init__(Store(), None, None, None, EnvoyPods("xds", 1), None)  # type: ignore[arg-type]
        self.durations = durations
        self.finished: list[tuple[str, str]] = []

    async def sync(self, key: tuple[str, str]) -> None:
        await asyncio.sleep(self.durations[key])
        self.finished.append(key)


def passes_finished(
    durations: dict[tuple[str, str], float],
    marks: list[tuple[float, set[tuple[str, str]]]],
    after: float,
) -> list[tuple[str, str]]:
    """Run the scheduler, mark gateways (each after its delay), and return the passes
    finished `after` seconds later, in order."""

    async def scenario() -> list[tuple[str, str]]:
        sync = TimedSync(durations)
        runner = asyncio.create_task(sync.run())
        for delay, keys in marks:
            await asyncio.sleep(delay)
            sync.mark(keys)
        await asyncio.sleep(after)
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        return list(sync.finished)

    return asyncio.run(scenario())


def test_a_slow_gateway_delays_no_other() -> None:
    assert passes_finished({SLOW: 2.0, FAST: 0.01}, [(0, {SLOW, FAST})], after=0.5) == [FAST]


def test_a_gateway_marked_during_its_pass_passes_again_after_it() -> None:
    # A change while it passes: never two passes at once, and none lost.
    marks = [(0, {SLOW}), (0.1, {SLOW})]
    assert passes_finished({SLOW: 0.3}, marks, after=1.0) == [SLOW, SLOW]


class NoScan(Store):
    def endpoints_of(self, gateway: Any) -> Any:
        raise AssertionError("a failure report scanned the gateway's endpoints")


class Recorder:
    def __init__(self) -> None:
        self.expedited: list[Any] = []
        self.backed_off: list[Any] = []

    def expedite(self, key: Any) -> None:
        self.expedited.append(key)

    def back_off(self, key: Any, seconds: float) -> None:
        self.backed_off.append((key, seconds))


def test_a_failure_report_finds_its_endpoint_without_scanning_the_gateway() -> None:
    """During an outage Envoy reports hundreds of failed attempts a second: each must cost a
    look-up, not a pass over every endpoint of the gateway (4.6 ms at 5,000)."""
    health = Recorder()
    sync = GatewaySync(NoScan(), None, None, None, EnvoyPods("xds", 1), health)  # type: ignore[arg-type]
    seen = sync._seen.setdefault(GATEWAY_KEY, _Seen())
    plan = sample_plan()
    seen.served = {p.model: (p.namespace, p.name) for p in plan.attached}
    node = node_of_gateway(*GATEWAY_KEY)
    sync.failed_attempt(FailedAttempt(node, "switchyard/chat", "oai", 503, 0.0))
    sync.failed_attempt(FailedAttempt(node, "switchyard/chat", "claude", 429, 7.0))
    sync.failed_attempt(FailedAttempt(node, "switchyard/unknown", "oai", 503, 0.0))
    assert health.expedited == [("team-a", "chat", "oai")]
    assert health.backed_off == [(("team-a", "chat", "claude"), 7.0)]
