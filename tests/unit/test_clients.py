"""Which clients a gateway serves and what each may call: the plan, the API's checks, and
the store that feeds them."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import pytest
from pydantic import ValidationError

from switchyard.api.models import ModelClientSpec, ModelGatewaySpec
from switchyard.handlers.state import Store
from switchyard.plan.clients import ClientsPlan, key_digest, plan_clients
from switchyard.plan.gateway import GatewaySource, plan_gateway
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, client, endpoint, gateway

DIGESTS = {
    ("team-a", "keys"): {"a": key_digest(b"sk-a"), "b": key_digest(b"sk-b")},
    ("team-b", "keys"): {"a": key_digest(b"sk-team-b")},
}


def planned(*clients: Any, labels: dict[str, dict[str, str]] | None = None) -> ClientsPlan:
    open_to_team_b = endpoint("shared")
    assert open_to_team_b.spec is not None
    spec = open_to_team_b.spec.model_copy(
        update={
            "allowed_clients": open_to_team_b.spec.allowed_clients.model_validate(
                {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "b"}}}}
            )
        }
    )
    endpoints = [endpoint("chat"), endpoint("embed"), replace(open_to_team_b, spec=spec)]
    plan = plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS)
    return plan_clients(GATEWAY_KEY, gateway(), list(clients), plan, labels or {}, DIGESTS)


def condition(plan: ClientsPlan, key: tuple[str, str], kind: str) -> tuple[str, str, str]:
    [found] = [c for c in plan.outcomes[key].conditions if c.type == kind]
    return found.status, found.reason, found.message


def test_a_client_may_call_the_models_whose_endpoints_admit_its_namespace() -> None:
    plan = planned(
        client("app", apiKeyRef={"name": "keys", "key": "a"}),
        client("narrow", apiKeyRef={"name": "keys", "key": "b"}, models=["embed", "nope"]),
        client("b", "team-b", apiKeyRef={"name": "keys", "key": "a"}),
    )
    models = {g.identity: g.models for g in plan.grants}
    assert models == {
        "team-a/app": ("chat", "embed"),
        "team-a/narrow": ("embed",),
        "team-b/b": (),  # "shared" selects team: b, whose labels are not known here
    }
    assert condition(plan, ("team-a", "app"), "Ready") == ("True", "Ready", "may call chat, embed")
    status, reason, message = condition(plan, ("team-b", "b"), "Ready")
    assert (status, reason) == ("False", "NoModelAllowed")
    assert "namespace team-b" in message
    labelled = planned(
        client("b", "team-b", apiKeyRef={"name": "keys", "key": "a"}),
        labels={"team-b": {"team": "b"}},
    )
    assert labelled.grants[0].models == ("shared",)


def test_a_client_is_known_by_its_keys_digest_and_its_accounts_subjects_only() -> None:
    plan = planned(client("app", apiKeyRef={"name": "keys", "key": "a"}, serviceAccounts=["web"]))
    [grant] = plan.grants
    assert grant.key_digest == key_digest(b"sk-a")
    assert grant.subjects == ("system:serviceaccount:team-a:web",)
    assert "sk-a" not in repr(plan)


def test_the_digest_is_of_the_key_as_sent_without_surrounding_white_space() -> None:
    assert key_digest(b"sk-a\n") == key_digest(b"sk-a")
    assert key_digest(b"sk-a") == hashlib.sha256(b"sk-a").hexdigest()


def test_unresolved_keys_are_reported_and_accounts_still_identify() -> None:
    plan = planned(
        client("gone", apiKeyRef={"name": "missing", "key": "a"}),
        client("empty", apiKeyRef={"name": "keys", "key": "absent"}, serviceAccounts=["web"]),
    )
    assert condition(plan, ("team-a", "gone"), "ResolvedRefs")[:2] == ("False", "SecretNotFound")
    assert condition(plan, ("team-a", "gone"), "Ready")[:2] == ("False", "SecretNotFound")
    assert condition(plan, ("team-a", "empty"), "ResolvedRefs")[1] == "SecretKeyNotFound"
    assert condition(plan, ("team-a", "empty"), "Ready")[1] == "RefsNotResolved"
    grants = {g.identity: g for g in plan.grants}
    assert grants["team-a/empty"].subjects
    assert grants["team-a/empty"].key_digest is None
    assert grants["team-a/gone"].key_digest is None
    assert not grants["team-a/gone"].subjects


def test_two_clients_never_share_a_credential_the_older_keeps_it() -> None:
    older = replace(client("z-old", apiKeyRef={"name": "keys", "key": "a"}), created="2026-01-01")
    newer = replace(
        client("a-new", apiKeyRef={"name": "keys", "key": "a"}, serviceAccounts=["web"]),
        created="2026-02-01",
    )
    account = replace(client("acct", serviceAccounts=["web"]), created="2026-03-01")
    plan = planned(newer, older, account)
    assert [g.identity for g in plan.grants] == ["team-a/acct", "team-a/z-old"]
    status, reason, message = condition(plan, ("team-a", "a-new"), "Accepted")
    assert (status, reason) == ("False", "CredentialConflict")
    assert "team-a/z-old" in message
    assert "API key" in message
    # The refused client's account stays free for the next one.
    assert condition(plan, ("team-a", "acct"), "Accepted")[0] == "True"


def test_without_a_gateway_or_with_checks_disabled() -> None:
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS)
    app = client("app", apiKeyRef={"name": "keys", "key": "a"})
    missing = plan_clients(GATEWAY_KEY, None, [app], plan, {}, DIGESTS)
    assert condition(missing, app.key, "Accepted")[1] == "GatewayNotFound"
    disabled = GatewaySource(
        *GATEWAY_KEY, 1, ModelGatewaySpec.model_validate({"clientAuth": {"mode": "Disabled"}})
    )
    open_plan = plan_clients(GATEWAY_KEY, disabled, [app], plan, {}, DIGESTS)
    assert not open_plan.required
    assert condition(open_plan, app.key, "Ready")[:2] == ("True", "ClientAuthDisabled")


def test_limits_are_granted_only_where_the_data_plane_holds_them() -> None:
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS)
    limited = client(
        "app", apiKeyRef={"name": "keys", "key": "a"}, limits={"tokensPerMinute": 1000}
    )
    held = plan_clients(GATEWAY_KEY, gateway(), [limited], plan, {}, DIGESTS, limits_enforced=True)
    assert condition(held, limited.key, "Accepted")[0] == "True"
    assert [g.limits for g in held.grants] == [(("tokens", 1000),)]
    # No rate limit service: refused, never served without its limits.
    unheld = plan_clients(GATEWAY_KEY, gateway(), [limited], plan, {}, DIGESTS)
    accepted = condition(unheld, limited.key, "Accepted")
    assert accepted[:2] == ("False", "LimitsNotEnforced")
    assert "--rate-limit-service" in accepted[2]
    assert unheld.grants == []
    disabled = GatewaySource(
        *GATEWAY_KEY, 1, ModelGatewaySpec.model_validate({"clientAuth": {"mode": "Disabled"}})
    )
    open_plan = plan_clients(GATEWAY_KEY, disabled, [limited], plan, {}, DIGESTS, True)
    assert condition(open_plan, limited.key, "Accepted")[:2] == ("False", "LimitsNotEnforced")


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ({}, "apiKeyRef, serviceAccounts, or both"),
        ({"serviceAccounts": []}, "apiKeyRef, serviceAccounts, or both"),
        ({"serviceAccounts": ["a"], "limits": {}}, "requestsPerMinute, tokensPerMinute, or both"),
        ({"serviceAccounts": ["a"], "limits": {"requestsPerMinute": 0}}, "greater than or equal"),
        ({"serviceAccounts": ["Not_A_Name"]}, "pattern"),
    ],
)
def test_a_client_that_cannot_be_served_is_refused(spec: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint):
        ModelClientSpec.model_validate({"gatewayRef": {"name": "g"}, **spec})


def body(name: str, namespace: str = "team-a", generation: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "generation": generation, "uid": name},
        "spec": {"gatewayRef": {"name": "shared", "namespace": "infra"}, **spec},
    }


def test_the_store_links_clients_to_their_gateway_and_key_secret() -> None:
    store = Store()
    assert store.put_client(body("app", apiKeyRef={"name": "k", "key": "a"})) == {GATEWAY_KEY}
    assert store.gateway_keys() == {GATEWAY_KEY}
    assert store.referenced_secrets() == {("team-a", "k")}
    assert store.gateways_using_secret(("team-a", "k")) == {GATEWAY_KEY}
    assert store.referenced_keys(("team-a", "k")) == {"a"}
    assert store.put_client(body("app", apiKeyRef={"name": "k", "key": "a"})) == set()
    moved = body("app", generation=2, serviceAccounts=["web"])
    assert store.put_client(moved) == {GATEWAY_KEY}
    assert store.referenced_secrets() == set()
    assert [r.source.name for r in store.clients_of(GATEWAY_KEY)] == ["app"]
    assert store.replace_all([], [], {}, []) == {GATEWAY_KEY}
    assert store.clients_of(GATEWAY_KEY) == []
    invalid = store.put_client(body("bad", serviceAccounts=[]))
    assert invalid == {GATEWAY_KEY}
    assert store.clients[("team-a", "bad")].source.spec_error
