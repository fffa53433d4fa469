"""The routing plan: tiers, effective weights, shares and the split string."""

from __future__ import annotations

from typing import Any

import pytest

from switchyard.api.models import ModelEndpointSpec
from switchyard.plan.routing import (
    credentials_key,
    format_split,
    plan_endpoint,
    zero_weight_tiers,
)


def spec(*backends: dict[str, Any]) -> ModelEndpointSpec:
    return ModelEndpointSpec.model_validate(
        {"gatewayRef": {"name": "gw"}, "model": "chat", "backends": list(backends)}
    )


def compatible(name: str, weight: int = 1, priority: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "OpenAICompatible",
        "model": f"{name}-model",
        "url": f"http://{name}.svc:8000",
        "weight": weight,
        "priority": priority,
    }


def shares(plan: Any) -> dict[str, float]:
    return {b.name: round(b.share, 4) for b in plan.backends}


def test_weights_in_the_primary_tier_become_shares() -> None:
    plan = plan_endpoint("ns", "ep", spec(compatible("a", 70), compatible("b", 30)))
    assert shares(plan) == {"a": 0.7, "b": 0.3}
    assert plan.split == "a=70% b=30%"


def test_lower_tiers_stand_by_while_the_primary_tier_has_weight() -> None:
    plan = plan_endpoint(
        "ns", "ep", spec(compatible("a", 1), compatible("b", 3), compatible("standby", 5, 1))
    )
    assert shares(plan) == {"a": 0.25, "b": 0.75, "standby": 0.0}
    assert [b.priority for b in plan.backends] == [0, 0, 1]


def test_an_unavailable_backend_gets_no_weight_and_its_tier_peers_take_its_share() -> None:
    plan = plan_endpoint(
        "ns",
        "ep",
        spec(compatible("a", 2), compatible("b", 1), compatible("c", 1)),
        unavailable={"a": "SecretNotFound"},
    )
    assert shares(plan) == {"a": 0.0, "b": 0.5, "c": 0.5}
    a = next(b for b in plan.backends if b.name == "a")
    assert (a.effective_weight, a.unavailable_reason) == (0, "SecretNotFound")


def test_an_empty_tier_hands_its_traffic_to_the_next() -> None:
    plan = plan_endpoint(
        "ns",
        "ep",
        spec(compatible("a", 5), compatible("b", 1, 1), compatible("c", 3, 1)),
        unavailable={"a": "Unhealthy"},
    )
    assert shares(plan) == {"a": 0.0, "b": 0.25, "c": 0.75}
    assert plan.routable


def test_a_plan_with_no_available_backend_is_not_routable() -> None:
    plan = plan_endpoint("ns", "ep", spec(compatible("a")), unavailable={"a": "SecretNotFound"})
    assert not plan.routable
    assert plan.split == ""


def test_zero_weight_tiers_are_found() -> None:
    assert zero_weight_tiers(spec(compatible("a", 0), compatible("b", 1, 1))) == [0]
    assert zero_weight_tiers(spec(compatible("a", 0), compatible("b", 1))) == []


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ((1, 1, 1), "a=33.3% b=33.3% c=33.3%"),
        ((1, 0, 1), "a=50% c=50%"),
        ((999, 1, 0), "a=99.9% b=0.1%"),
    ],
)
def test_split_text(weights: tuple[int, ...], expected: str) -> None:
    backends = [compatible(n, w) for n, w in zip("abc", weights, strict=True)]
    plan = plan_endpoint("ns", "ep", spec(*backends))
    assert format_split(plan.backends) == expected


def test_credentials_keys_name_the_namespace_secret_and_key() -> None:
    plan = plan_endpoint(
        "team-a",
        "chat",
        spec(
            {
                "name": "oai",
                "provider": "OpenAI",
                "model": "gpt-4o",
                "credentialsRef": {"name": "s", "key": "k"},
            },
            compatible("local"),
        ),
    )
    keys = {b.name: b.credentials_key for b in plan.backends}
    assert keys == {"oai": "team-a_s_k", "local": None}
    assert next(b.url for b in plan.backends if b.name == "oai") == "https://api.openai.com"


def test_retry_settings_are_carried_in_seconds() -> None:
    endpoint = spec(compatible("a")).model_copy(deep=True)
    endpoint.retry.per_try_timeout = "1m30s"
    plan = plan_endpoint("ns", "ep", endpoint)
    assert plan.per_try_timeout_seconds == 90
    assert plan.retry_on == ("ConnectFailure", "ServerError", "RateLimited")


def test_a_credentials_key_too_long_for_a_secret_is_hashed() -> None:
    long_name = "s" * 253
    key = credentials_key("team-a", long_name, "api-key")
    assert len(key) <= 253
    assert key == credentials_key("team-a", long_name, "api-key")
    assert key != credentials_key("team-a", long_name, "other-key")
