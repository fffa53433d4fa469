"""Which backends the health monitor probes, as gateways' passes tell it."""

from __future__ import annotations

from typing import Any

from switchyard.api.models import HealthCheck
from switchyard.handlers.health_monitor import HealthMonitor
from switchyard.health.probes import Target

BACKEND = ("team-a", "chat", "oai")
TARGET = Target("OpenAI", "https://api.openai.com", "gpt-4o", None, 5.0)


def probed(target: Target = TARGET) -> dict[Any, Any]:
    return {BACKEND: (target, None, HealthCheck())}


def test_an_endpoint_moved_to_another_gateway_is_still_probed() -> None:
    monitor = HealthMonitor(secrets=None, on_change=lambda gateway: None)  # type: ignore[arg-type]
    old, new = ("infra", "old"), ("infra", "new")
    monitor.watch(old, probed(), {})
    # The endpoint now names the new gateway: its pass runs first, the old one's after.
    monitor.watch(new, probed(), {})
    monitor.watch(old, {}, {})
    assert monitor.watching(BACKEND) == new
