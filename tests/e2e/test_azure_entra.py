"""Azure OpenAI with Entra ID through the gateway: an Azure OpenAI resource whose key access is
disabled, reached with the access tokens the operator mints from an Entra ID app, by both
SDKs; the tokens rotating under load; an app Entra refuses reported as CredentialsInvalid,
its traffic moved to the endpoint's other backend.

The fake Entra ID's tokens live TOKEN_LIFETIME seconds here, so every test runs across token
rotations. The operator trusts the fake authority's CA as an operator Pod would trust a
private one: through REQUESTS_CA_BUNDLE."""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from gatewaylab import (
    CLIENT_KEY,
    AzureEntraProcess,
    FakeProcess,
    LocalEnvoy,
    chat,
    free_port,
    lab_client,
    send_sync,
)
from tests_support import hygiene
from tests_support.cluster import Cluster, condition, eventually
from tests_support.scenario import API_VERSION, Operator

pytestmark = pytest.mark.e2e

TOKEN_LIFETIME = 24
KUBELET_DELAY = 2.0
SECRET = "azure"


@dataclass
class EntraLab:
    cluster: Cluster
    operator: Operator
    namespace: str
    envoy: LocalEnvoy
    azure: AzureEntraProcess
    openai_fake: FakeProcess

    def azure_backend(self, key: str = "app.json", **fields: Any) -> dict[str, Any]:
        return {
            "name": "azure",
            "provider": "AzureOpenAI",
            "model": self.azure.model,
            "url": self.azure.url,
            "apiVersion": "2024-10-21",
            "authentication": "EntraID",
            "credentialsRef": {"name": SECRET, "key": key},
            **fields,
        }

    def openai_backend(self) -> dict[str, Any]:
        return {
            "name": "openai",
            "provider": "OpenAI",
            "model": self.openai_fake.model,
            "url": self.openai_fake.url,
            "credentialsRef": {"name": SECRET, "key": "openai"},
        }

    def apply_endpoint(self, model: str, backends: list[dict[str, Any]]) -> None:
        self.cluster.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelEndpoint",
                "metadata": {"name": model, "namespace": self.namespace},
                "spec": {"gatewayRef": {"name": "gw"}, "model": model, "backends": backends},
            }
        )

    def serve(self, model: str, backends: list[dict[str, Any]]) -> None:
        self.apply_endpoint(model, backends)
        eventually(lambda: condition(self.endpoint(model), "Ready"))
        eventually(lambda: send_sync(self.chat_url, chat(model), 10, 2).statuses[200] == 10)

    def endpoint(self, model: str) -> dict[str, Any] | None:
        return self.cluster.get("modelendpoints", model, self.namespace)

    @property
    def chat_url(self) -> str:
        return f"{self.envoy.url}/v1/chat/completions"


@pytest.fixture(scope="module")
def lab(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntraLab]:
    namespace = f"sy-entra-{uuid.uuid4().hex[:6]}"
    azure = AzureEntraProcess(model="gpt-deploy", token_lifetime=TOKEN_LIFETIME)
    fallback = FakeProcess("OpenAI", f"sk-test-{uuid.uuid4().hex[:8]}", "gpt-4o")
    wrong = json.loads(azure.credentials_json) | {"clientSecret": "not-the-apps-secret"}
    trusted = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(azure.ca_bundle)
    operator = Operator(
        xds_address=f"127.0.0.1:{free_port()}", metrics_address=f"127.0.0.1:{free_port()}"
    )
    envoy: LocalEnvoy | None = None
    try:
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": namespace},
                "stringData": {
                    "app.json": azure.credentials_json,
                    "wrong-app.json": json.dumps(wrong),
                    "openai": fallback.api_key,
                },
            },
            {
                "apiVersion": API_VERSION,
                "kind": "ModelGateway",
                "metadata": {"name": "gw", "namespace": namespace},
                "spec": {"listener": {"port": 8080}},
            },
            *lab_client(namespace, "gw"),
        )
        operator.start()
        log: Path = tmp_path_factory.mktemp("envoy") / "envoy.log"
        envoy = LocalEnvoy(
            f"{namespace}/gw", free_port(), operator.xds_address, log, secret_delay=KUBELET_DELAY
        )
        envoy.wait_listening()
        yield EntraLab(cluster, operator, namespace, envoy, azure, fallback)
    finally:
        if envoy is not None:
            envoy.stop()
        operator.stop()
        azure.stop()
        fallback.stop()
        if trusted is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = trusted
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def _bearer(record: dict[str, Any]) -> str:
    return str(record["headers"].get("authorization", "")).removeprefix("Bearer ")


def test_both_sdks_reach_azure_openai_with_entra_tokens(lab: EntraLab) -> None:
    lab.serve("entra", [lab.azure_backend()])
    lab.azure.forget_requests()
    messages: Any = [{"role": "user", "content": "hello"}]
    client = openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    answer = client.chat.completions.create(model="entra", messages=messages)
    assert "gpt-deploy" in (answer.choices[0].message.content or "")
    chunks = client.chat.completions.create(model="entra", messages=messages, stream=True)
    assert "gpt-deploy" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    claude = anthropic.Anthropic(base_url=lab.envoy.url, api_key=CLIENT_KEY, max_retries=0)
    message = claude.messages.create(model="entra", max_tokens=64, messages=messages)
    assert message.content[0].type == "text"
    assert "gpt-deploy" in message.content[0].text
    requests = lab.azure.traffic()
    assert len(requests) == 3
    issued = {str(t["token"]) for t in lab.azure.tokens()}
    for record in requests:
        assert record["path"] == "/openai/deployments/gpt-deploy/chat/completions"
        assert _bearer(record) in issued
        assert "api-key" not in record["headers"]


def test_entra_tokens_rotate_under_load_without_a_failed_request(lab: EntraLab) -> None:
    lab.serve("entra-rotating", [lab.azure_backend()])
    lab.azure.forget_requests()
    ends = time.monotonic() + 2.5 * TOKEN_LIFETIME
    statuses: dict[int, int] = {}
    while time.monotonic() < ends:
        outcome = send_sync(lab.chat_url, chat("entra-rotating"), 20, 4)
        for status, count in outcome.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
        assert not outcome.errors, outcome.errors[:3]
    assert set(statuses) == {200}, statuses
    assert len({_bearer(r) for r in lab.azure.traffic()}) >= 3, "the tokens did not rotate"
    credentials = lab.cluster.get("secrets", "gw-switchyard-credentials", lab.namespace)
    assert credentials is not None
    values = [base64.b64decode(v).decode() for v in credentials["data"].values()]
    assert not any(lab.azure.client_secret in value for value in values)


def test_an_app_entra_refuses_is_credentials_invalid_and_traffic_moves(lab: EntraLab) -> None:
    lab.apply_endpoint("entra-refused", [lab.azure_backend("wrong-app.json"), lab.openai_backend()])

    def reported() -> dict[str, Any] | None:
        endpoint = lab.endpoint("entra-refused") or {}
        for backend in (endpoint.get("status") or {}).get("backends") or []:
            if backend.get("name") == "azure" and backend.get("reason") == "CredentialsInvalid":
                return dict(backend)
        return None

    backend = eventually(reported, timeout=30)
    assert backend["message"] == "Entra ID refused the app's credentials (AADSTS7000215)"
    # Once the other backend's key has reached Envoy (KUBELET_DELAY), it serves everything.
    eventually(lambda: send_sync(lab.chat_url, chat("entra-refused"), 10, 2).statuses[200] == 10)
    outcome = send_sync(lab.chat_url, chat("entra-refused"), 40, 4)
    assert outcome.statuses == {200: 40}
    assert set(outcome.ports) == {lab.openai_fake.port}


def test_no_app_secret_or_token_anywhere_a_person_or_program_can_read(lab: EntraLab) -> None:
    with urllib.request.urlopen(
        f"http://{lab.operator.metrics_address}/metrics", timeout=5
    ) as reply:
        metrics = reply.read().decode()
    places = {
        "operator log": lab.operator.log,
        "operator metrics": metrics,
        "Envoy's config dump": lab.envoy.config_dump(),
        "Envoy's log": lab.envoy.log.read_text(errors="replace"),
        **hygiene.cluster_places(lab.cluster, [lab.namespace]),
    }
    tokens = [str(t["token"]) for t in lab.azure.tokens()]
    assert tokens, "no token was minted"
    known = [CLIENT_KEY, lab.openai_fake.api_key, lab.azure.client_secret, *tokens]
    hygiene.assert_clean(places, known)
