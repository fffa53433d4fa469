"""The probe targets a pass hands the health monitor, and the memo that spares rebuilding
them for endpoints that did not change."""

from __future__ import annotations

from typing import Any

from switchyard.handlers.state import _endpoint_record
from switchyard.handlers.sync import _probe_targets
from switchyard.plan.gateway import plan_gateway
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, gateway


def endpoint_body(uid: str, url: str) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "team-a", "name": "chat", "uid": uid, "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "gatewayRef": {"name": GATEWAY_KEY[1], "namespace": GATEWAY_KEY[0]},
            "model": "chat",
            "backends": [{"name": "a", "provider": "OpenAICompatible", "model": "m", "url": url,
                          "credentialsRef": {"name": "keys", "key": "openai"}}],
        },
    }  # fmt: skip


def test_an_endpoint_made_again_under_its_name_is_not_probed_as_its_predecessor() -> None:
    """Deleted and created again between two passes, it is at generation 1 again: only its
    uid tells it from the old one, whose backends it must not inherit."""
    memo: dict[Any, Any] = {}
    for uid, url in (("uid-1", "http://old.example"), ("uid-2", "http://new.example")):
        record = _endpoint_record(endpoint_body(uid, url))
        plan = plan_gateway(GATEWAY_KEY, gateway(), [record.source], {}, ALL_KEYS)
        targets, _ = _probe_targets(plan, [record], memo, None, None)
        [(target, _, _)] = targets.values()
        assert target.url == url
