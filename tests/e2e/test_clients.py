"""ModelClients through the operator: the real API server issues the ServiceAccount tokens
and holds the keys, the operator plans and serves the client table over ECDS, and the real
Envoy checks every request. The data-plane checks alone are in test_client_auth.py."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from e2e.conftest import Lab
from gatewaylab import CLIENT_HEADERS, CLIENT_KEY, chat
from tests_support import hygiene
from tests_support.cluster import condition, eventually
from tests_support.scenario import API_VERSION

pytestmark = pytest.mark.e2e


def call(lab: Lab, headers: dict[str, str], model: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        lab.url,
        data=json.dumps(chat(model)).encode(),
        method="POST",
        headers={"content-type": "application/json", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def client(name: str, namespace: str, gateway_namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelClient",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"gatewayRef": {"name": "gw", "namespace": gateway_namespace}, **spec},
    }


def key_secret(name: str, namespace: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "stringData": {"api-key": key},
    }


def ready(lab: Lab, name: str, namespace: str) -> dict[str, Any] | None:
    found = condition(lab.cluster.get("modelclients", name, namespace), "Ready")
    return found if found and found["status"] == "True" else None


def token(lab: Lab, namespace: str, account: str, audience: str = "switchyard") -> str:
    return lab.cluster.kubectl(
        "create", "token", account, "-n", namespace, "--audience", audience
    ).strip()


def test_only_identified_clients_reach_a_provider(lab: Lab) -> None:
    lab.serve("guarded", [lab.backend("local-a")])
    fake = lab.fakes["local-a"]
    fake.forget_requests()
    # No credential, or one that names no client: 401, and the provider never hears of it.
    status, body = call(lab, {}, "guarded")
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    assert call(lab, {"authorization": "Bearer sk-guess"}, "guarded")[0] == 401
    assert not fake.traffic()
    assert call(lab, CLIENT_HEADERS, "guarded")[0] == 200
    lab_client = lab.cluster.get("modelclients", "lab", lab.namespace)
    assert lab_client is not None
    assert "guarded" in lab_client["status"]["models"]
    table = lab.cluster.kubectl("get", "modelclients", "-n", lab.namespace)
    assert table.split("\n")[0].split() == ["NAME", "GATEWAY", "MODELS", "READY", "AGE"]


def test_another_teams_client_gets_403_until_the_endpoint_admits_its_namespace(lab: Lab) -> None:
    other = f"{lab.namespace}-other"
    other_key = f"sk-other-team-{uuid.uuid4().hex}"
    lab.cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}},
        key_secret("key", other, other_key),
        client("analytics", other, lab.namespace, apiKeyRef={"name": "key", "key": "api-key"}),
    )
    try:
        lab.serve("team-only", [lab.backend("local-b")])
        # Known, but team-only admits its own namespace's clients only.
        eventually(lambda: call(lab, {"x-api-key": other_key}, "team-only")[0] == 403)
        assert call(lab, {"x-api-key": other_key}, "team-only")[1]["error"]["code"] == (
            "model_not_allowed"
        )
        shown = condition(lab.cluster.get("modelclients", "analytics", other), "Ready")
        assert shown is not None
        assert (shown["status"], shown["reason"]) == ("False", "NoModelAllowed")
        lab.serve(
            "team-only",
            [lab.backend("local-b")],
            allowedClients={"namespaces": {"from": "All"}},
        )
        eventually(lambda: call(lab, {"x-api-key": other_key}, "team-only")[0] == 200)
        eventually(lambda: ready(lab, "analytics", other))
    finally:
        lab.cluster.kubectl("delete", "namespace", other, "--wait=false")


def test_a_rotated_key_is_refused_and_the_new_one_served_within_seconds(lab: Lab) -> None:
    lab.serve("rotating", [lab.backend("local-c")])
    old_key, new_key = f"sk-old-{uuid.uuid4().hex}", f"sk-new-{uuid.uuid4().hex}"
    lab.cluster.apply(
        key_secret("rotating-key", lab.namespace, old_key),
        client(
            "rotating", lab.namespace, lab.namespace,
            apiKeyRef={"name": "rotating-key", "key": "api-key"},
        ),
    )  # fmt: skip
    eventually(lambda: call(lab, {"api-key": old_key}, "rotating")[0] == 200)
    lab.cluster.apply(key_secret("rotating-key", lab.namespace, new_key))
    started = time.monotonic()
    eventually(lambda: call(lab, {"api-key": new_key}, "rotating")[0] == 200, timeout=10)
    took = time.monotonic() - started
    assert call(lab, {"api-key": old_key}, "rotating")[0] == 401
    print(f"rotation took effect after {took:.1f} s")
    # Two clients cannot share a key: the newer one is refused, the older keeps it (in the
    # same second, the first by name: "twin" comes after "rotating" both ways).
    lab.cluster.apply(
        client(
            "twin", lab.namespace, lab.namespace,
            apiKeyRef={"name": "rotating-key", "key": "api-key"},
        ),
    )  # fmt: skip
    shown = eventually(
        lambda: condition(lab.cluster.get("modelclients", "twin", lab.namespace), "Accepted")
    )
    assert (shown["status"], shown["reason"]) == ("False", "CredentialConflict")
    assert "rotating" in shown["message"]
    assert call(lab, {"api-key": new_key}, "rotating")[0] == 200


def test_a_service_account_token_for_the_gateway_is_its_clients_credential(lab: Lab) -> None:
    lab.serve("tokens", [lab.backend("local-a")])
    other = f"{lab.namespace}-tokens"
    lab.cluster.kubectl("create", "serviceaccount", "checkout", "-n", lab.namespace)
    lab.cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}},
        client("checkout", lab.namespace, lab.namespace, serviceAccounts=["checkout"]),
    )
    lab.cluster.kubectl("create", "serviceaccount", "checkout", "-n", other)
    try:
        eventually(lambda: ready(lab, "checkout", lab.namespace))
        right = token(lab, lab.namespace, "checkout")
        eventually(lambda: call(lab, {"authorization": f"Bearer {right}"}, "tokens")[0] == 200)
        # For the API server, not the gateway:
        wrong_audience = token(lab, lab.namespace, "checkout", audience="https://kubernetes")
        assert call(lab, {"authorization": f"Bearer {wrong_audience}"}, "tokens")[0] == 401
        # The same account name in another namespace is another account:
        elsewhere = token(lab, other, "checkout")
        assert call(lab, {"authorization": f"Bearer {elsewhere}"}, "tokens")[0] == 401
        # A token is no API key either.
        assert call(lab, {"x-api-key": right}, "tokens")[0] == 401
    finally:
        lab.cluster.kubectl("delete", "namespace", other, "--wait=false")


def test_a_gateway_that_checks_no_client_says_so(lab: Lab) -> None:
    open_namespace = f"{lab.namespace}-open"
    lab.cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": open_namespace}},
        {
            "apiVersion": API_VERSION,
            "kind": "ModelGateway",
            "metadata": {"name": "gw", "namespace": open_namespace},
            "spec": {"clientAuth": {"mode": "Disabled"}},
        },
    )
    try:
        shown = eventually(
            lambda: condition(lab.cluster.get("modelgateways", "gw", open_namespace), "Ready")
        )
        assert "clientAuth.mode: Disabled" in shown["message"]
        table = lab.cluster.kubectl("get", "modelgateways", "-n", open_namespace)
        assert "Disabled" in table
    finally:
        lab.cluster.kubectl("delete", "namespace", open_namespace, "--wait=false")


def test_no_client_key_anywhere_a_person_or_program_can_read(lab: Lab) -> None:
    lab.serve("guarded", [lab.backend("local-a")])
    assert call(lab, {"x-api-key": CLIENT_KEY}, "guarded")[0] == 200
    assert call(lab, {"x-api-key": CLIENT_KEY + "-not"}, "guarded")[0] == 401
    time.sleep(1.5)  # Envoy flushes its access log every second
    places = {
        "Envoy's config dump": lab.envoy.config_dump(),
        "xDS as sent": lab.xds_as_sent(),
        "Envoy's log": lab.envoy.log.read_text(errors="replace"),
        "operator log": lab.operator.log,
        **hygiene.cluster_places(lab.cluster, [lab.namespace]),
    }
    assert "switchyard.clients" in places["Envoy's config dump"]
    assert "switchyard.clients" in places["xDS as sent"]
    # The access records and Envoy's counters name the client, never its key.
    assert f'"client":"{lab.namespace}/lab"' in places["Envoy's log"]
    places["Envoy's stats"] = lab.envoy.admin("/stats/prometheus")
    counted = [
        line
        for line in places["Envoy's stats"].splitlines()
        if line.startswith("envoy_switchyard_client_requests{")
    ]
    assert any(
        f'client="{lab.namespace}/lab"' in line
        and 'model="guarded"' in line
        and 'code="200"' in line
        for line in counted
    ), counted
    hygiene.assert_clean(places, [CLIENT_KEY])
