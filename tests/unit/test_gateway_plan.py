"""One pass over a gateway: admission, model conflicts, Secret resolution, conditions."""

from __future__ import annotations

from typing import Any

from switchyard.plan.gateway import EndpointSource, SecretKeys, plan_gateway
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, endpoint, gateway


def conditions(plan: Any, key: tuple[str, str]) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in plan.outcomes[key].conditions}


def test_an_admitted_endpoint_with_resolved_refs_is_attached_and_ready() -> None:
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS)
    assert [p.model for p in plan.attached] == ["chat"]
    assert conditions(plan, ("team-a", "chat")) == {
        "Accepted": ("True", "Accepted"),
        "ResolvedRefs": ("True", "ResolvedRefs"),
        "Degraded": ("False", "AllBackendsAvailable"),
        "Ready": ("True", "Ready"),
    }
    copies = {(c.target_key, c.source, c.source_key) for c in plan.credentials}
    assert copies == {
        ("team-a_keys_anthropic", ("team-a", "keys"), "anthropic"),
        ("team-a_keys_openai", ("team-a", "keys"), "openai"),
    }


def test_a_missing_gateway_is_reported_on_its_endpoints() -> None:
    plan = plan_gateway(GATEWAY_KEY, None, [endpoint("chat")], {}, ALL_KEYS)
    assert conditions(plan, ("team-a", "chat"))["Accepted"] == ("False", "GatewayNotFound")
    assert "infra/shared" in plan.outcomes[("team-a", "chat")].conditions[0].message
    assert plan.attached == []
    assert plan.credentials == []


def test_namespace_admission_same_all_and_selector() -> None:
    same = gateway({"from": "Same"})
    plan = plan_gateway(GATEWAY_KEY, same, [endpoint("chat")], {}, ALL_KEYS)
    assert conditions(plan, ("team-a", "chat"))["Accepted"] == ("False", "NotAllowedByGateway")
    assert plan.rejected[0].reason == "NotAllowedByGateway"

    selector = gateway({"from": "Selector", "selector": {"matchLabels": {"ai": "yes"}}})
    labels = {"team-a": {"ai": "yes"}}
    plan = plan_gateway(GATEWAY_KEY, selector, [endpoint("chat")], labels, ALL_KEYS)
    assert conditions(plan, ("team-a", "chat"))["Accepted"] == ("True", "Accepted")
    plan = plan_gateway(GATEWAY_KEY, selector, [endpoint("chat")], {"team-a": {}}, ALL_KEYS)
    assert conditions(plan, ("team-a", "chat"))["Accepted"] == ("False", "NotAllowedByGateway")


def test_the_older_endpoint_keeps_a_contested_model() -> None:
    older = endpoint("old", model="chat", created="2026-01-01T00:00:00Z")
    newer = endpoint("new", model="chat", created="2026-02-01T00:00:00Z")
    plan = plan_gateway(GATEWAY_KEY, gateway(), [newer, older], {}, ALL_KEYS)
    assert conditions(plan, ("team-a", "old"))["Ready"] == ("True", "Ready")
    assert conditions(plan, ("team-a", "new"))["Accepted"] == ("False", "ModelConflict")
    message = plan.outcomes[("team-a", "new")].conditions[0].message
    assert "'chat'" in message
    assert "team-a/old" in message
    assert [(p.name, p.model) for p in plan.attached] == [("old", "chat")]
    assert {c.target_key for c in plan.credentials} == {
        "team-a_keys_openai",
        "team-a_keys_anthropic",
    }


def test_a_missing_secret_or_key_takes_only_that_backend_out() -> None:
    keys = {("team-a", "keys"): SecretKeys(frozenset({"openai"}))}
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, keys)
    state = conditions(plan, ("team-a", "chat"))
    assert state["ResolvedRefs"] == ("False", "SecretKeyNotFound")
    assert state["Ready"] == ("False", "RefsNotResolved")
    assert state["Accepted"] == ("True", "Accepted")
    routes = {b.name: b.effective_weight for b in plan.attached[0].backends}
    assert routes == {"oai": 3, "claude": 0}
    assert [c.target_key for c in plan.credentials] == ["team-a_keys_openai"]


def test_an_endpoint_whose_every_secret_is_missing_is_not_attached() -> None:
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, {("team-a", "keys"): None})
    state = conditions(plan, ("team-a", "chat"))
    assert state["ResolvedRefs"] == ("False", "SecretNotFound")
    assert state["Ready"] == ("False", "NoRoutableBackend")
    assert plan.attached == []
    assert plan.rejected[0].reason == "NoRoutableBackend"
    assert "Secret team-a/keys not found" in plan.outcomes[("team-a", "chat")].conditions[1].message


def test_a_tier_with_only_zero_weights_is_refused() -> None:
    backends = [
        {"name": "a", "provider": "OpenAICompatible", "model": "m", "url": "http://a", "weight": 0},
        {
            "name": "b",
            "provider": "OpenAICompatible",
            "model": "m",
            "url": "http://b",
            "priority": 1,
        },
    ]
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat", backends=backends)], {}, {})
    assert conditions(plan, ("team-a", "chat"))["Accepted"] == ("False", "ZeroWeightTier")
    assert plan.attached == []


def test_an_invalid_spec_is_reported_without_a_plan() -> None:
    broken = EndpointSource("team-a", "broken", 1, "", None, "backends: too short")
    plan = plan_gateway(GATEWAY_KEY, gateway(), [broken, endpoint("chat")], {}, ALL_KEYS)
    assert conditions(plan, ("team-a", "broken"))["Accepted"] == ("False", "InvalidSpec")
    assert [p.name for p in plan.attached] == ["chat"]


def test_backends_held_back_give_their_share_to_the_others() -> None:
    held = {("team-a", "chat", "oai"): "Unhealthy"}
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS, held)
    state = conditions(plan, ("team-a", "chat"))
    assert state["Degraded"] == ("True", "BackendsUnavailable")
    assert state["Ready"] == ("True", "Ready")
    routes = {b.name: (b.effective_weight, b.unavailable_reason) for b in plan.attached[0].backends}
    assert routes == {"oai": (0, "Unhealthy"), "claude": (1, None)}


def test_when_every_backend_is_held_back_traffic_fails_open() -> None:
    held = {
        ("team-a", "chat", "oai"): "Unhealthy",
        ("team-a", "chat", "claude"): "RateLimited",
    }
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS, held)
    state = conditions(plan, ("team-a", "chat"))
    assert state["Degraded"] == ("True", "NoHealthyBackend")
    assert state["Ready"] == ("False", "NoHealthyBackend")
    assert {b.name: b.effective_weight for b in plan.attached[0].backends} == {
        "oai": 3,
        "claude": 1,
    }


def test_a_held_back_backend_keeps_its_key_in_the_gateways_credentials() -> None:
    """The kubelet brings a changed Secret into the Pods up to a minute late: a key dropped
    while its backend is held back would be missing when the backend comes back."""
    for reason in ("Unhealthy", "RateLimited", "CredentialsInvalid"):
        held = {("team-a", "chat", "oai"): reason}
        plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS, held)
        assert {c.target_key for c in plan.credentials} == {
            "team-a_keys_openai",
            "team-a_keys_anthropic",
        }, reason


def test_a_key_that_several_backends_use_is_copied_once() -> None:
    shared = [
        {"name": f"b{i}", "provider": "OpenAI", "model": "gpt-4o", "weight": 1,
         "credentialsRef": {"name": "keys", "key": "openai"}}
        for i in range(3)
    ]  # fmt: skip
    endpoints = [endpoint("chat", backends=shared), endpoint("embed", backends=shared)]
    plan = plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS)
    assert [c.target_key for c in plan.credentials] == ["team-a_keys_openai"]


def _bedrock_without_credentials() -> EndpointSource:
    bedrock = {
        "name": "bedrock",
        "provider": "AWSBedrock",
        "region": "us-east-1",
        "model": "meta.llama3-1-70b-instruct-v1:0",
        "authentication": "SigV4",
    }
    return endpoint("llama", backends=[bedrock])


def test_a_bedrock_backend_without_credentials_signs_as_the_gateways_service_account() -> None:
    with_identity = gateway()
    with_identity.spec.data_plane.service_account_name = "bedrock-caller"
    plan = plan_gateway(GATEWAY_KEY, with_identity, [_bedrock_without_credentials()], {}, ALL_KEYS)
    assert conditions(plan, ("team-a", "llama"))["Ready"] == ("True", "Ready")
    [backend] = plan.attached[0].backends
    assert backend.workload_identity
    [copy] = plan.credentials
    assert (copy.target_key, copy.source, copy.exchange) == (
        "_AWSWorkloadIdentity", ("infra", "bedrock-caller"), "AWSWorkloadIdentity",
    )  # fmt: skip


def test_a_gateway_without_a_service_account_cannot_lend_its_identity() -> None:
    plan = plan_gateway(GATEWAY_KEY, gateway(), [_bedrock_without_credentials()], {}, ALL_KEYS)
    state = conditions(plan, ("team-a", "llama"))
    assert state["ResolvedRefs"] == ("False", "WorkloadIdentityNotSet")
    assert state["Ready"] == ("False", "NoRoutableBackend")
    message = plan.outcomes[("team-a", "llama")].conditions[1].message
    assert "spec.dataPlane.serviceAccountName" in message
    assert "infra/shared" in message
    assert plan.credentials == []
