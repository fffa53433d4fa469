"""Vertex AI through the gateway: Claude and Gemini for both SDKs, the access tokens the
operator mints from a service-account key (and only those) reaching the data plane, their
rotation under load, a refused key reported as CredentialsInvalid, and Claude failing over
between Anthropic and Vertex AI.

The fake Vertex AI's tokens live TOKEN_LIFETIME seconds here, so every test runs across
token rotations."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from e2e.cloudlab import SECRET, GatewayLab, bearer, gateway_lab
from gatewaylab import (
    CLIENT_KEY,
    FakeProcess,
    VertexProcess,
    chat,
    send_sync,
    service_account_key_json,
)
from switchyard.tokens import IAM_CREDENTIALS_ENV
from tests_support.cluster import Cluster, eventually
from tests_support.metadata import METADATA_PORT

pytestmark = pytest.mark.e2e

CLAUDE, GEMINI = "claude-x@20250101", "google/gemini-x"
TOKEN_LIFETIME = 24
SA_KEY, STRANGER_KEY = "service-account.json", "stranger.json"
# The operator's own Google identity (what the GKE metadata server gives it), and the one a
# gateway acts as, which the operator may get tokens of (roles/iam.serviceAccountTokenCreator).
OPERATOR_ACCOUNT = "switchyard-operator@switchyard-lab.iam.gserviceaccount.com"
GATEWAY_ACCOUNT = "gateway-vertex@switchyard-lab.iam.gserviceaccount.com"


@dataclass
class CloudLab(GatewayLab):
    vertex: VertexProcess
    claude: FakeProcess

    def vertex_backend(self, model: str, name: str = "vertex", **fields: Any) -> dict[str, Any]:
        return {
            "name": name,
            "provider": "GCPVertexAI",
            "model": model,
            "region": self.vertex.region,
            "project": self.vertex.project,
            # The fake's address in place of the region's endpoint, as a private endpoint.
            "url": self.vertex.url,
            "credentialsRef": {"name": SECRET, "key": SA_KEY},
            **fields,
        }

    def anthropic_backend(self, **fields: Any) -> dict[str, Any]:
        return {
            "name": "anthropic",
            "provider": "Anthropic",
            "model": self.claude.model,
            "url": self.claude.url,
            "credentialsRef": {"name": SECRET, "key": "anthropic"},
            **fields,
        }

    def openai(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)

    def anthropic_sdk(self) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.envoy.url, api_key=CLIENT_KEY, max_retries=0)


@pytest.fixture(scope="module")
def cloud(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudLab]:
    vertex = VertexProcess(
        models=(CLAUDE, GEMINI),
        token_lifetime=TOKEN_LIFETIME,
        metadata_account=OPERATOR_ACCOUNT,
        token_creators=[(GATEWAY_ACCOUNT, OPERATOR_ACCOUNT)],
        auth_port=METADATA_PORT,
    )
    claude = FakeProcess("Anthropic", f"sk-ant-{uuid.uuid4().hex[:8]}", "claude-x")
    # Another key of the same account, which the token endpoint does not know.
    stranger = service_account_key_json(
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
        vertex.email, vertex.project, vertex.token_uri, "not-a-known-key",
    )  # fmt: skip
    credentials = {
        SA_KEY: vertex.service_account_key,
        STRANGER_KEY: json.dumps(stranger),
        "anthropic": claude.api_key,
    }
    try:
        with gateway_lab(cluster, tmp_path_factory, "sy-vertex", credentials) as lab:
            yield CloudLab(lab.cluster, lab.operator, lab.namespace, lab.envoy, vertex, claude)
    finally:
        vertex.stop()
        claude.stop()


def test_both_sdks_reach_claude_on_vertex_whole_and_streamed(cloud: CloudLab) -> None:
    cloud.serve("vertex-claude", [cloud.vertex_backend(CLAUDE)])
    cloud.vertex.forget_requests()
    answer = cloud.openai().chat.completions.create(
        model="vertex-claude", messages=[{"role": "user", "content": "hello"}]
    )
    assert f"GCPVertexAI {CLAUDE}" in (answer.choices[0].message.content or "")
    chunks = cloud.openai().chat.completions.create(
        model="vertex-claude", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert f"GCPVertexAI {CLAUDE}" in streamed
    message = cloud.anthropic_sdk().messages.create(
        model="vertex-claude", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.content[0].type == "text"
    assert f"GCPVertexAI {CLAUDE}" in message.content[0].text
    with cloud.anthropic_sdk().messages.stream(
        model="vertex-claude", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    ) as stream:
        assert f"GCPVertexAI {CLAUDE}" in stream.get_final_text()

    requests = cloud.vertex.traffic()
    paths = [r["path"].rsplit("/", 1)[-1] for r in requests]
    assert paths == [f"{CLAUDE}:rawPredict", f"{CLAUDE}:streamRawPredict"] * 2
    prefix = f"/v1/projects/{cloud.vertex.project}/locations/{cloud.vertex.region}/"
    assert all(r["path"].startswith(prefix + "publishers/anthropic/models/") for r in requests)
    for record in requests:
        body = record["body"]
        assert "model" not in body
        assert body["anthropic_version"] == "vertex-2023-10-16"
        assert "anthropic-version" not in record["headers"]
        # A minted access token, never the service-account key or the client's key.
        assert bearer(record).startswith("ya29.")


def test_both_sdks_reach_gemini_on_vertex(cloud: CloudLab) -> None:
    cloud.serve("vertex-gemini", [cloud.vertex_backend(GEMINI)])
    cloud.vertex.forget_requests()
    answer = cloud.openai().chat.completions.create(
        model="vertex-gemini", messages=[{"role": "user", "content": "hello"}]
    )
    assert f"GCPVertexAI {GEMINI}" in (answer.choices[0].message.content or "")
    chunks = cloud.openai().chat.completions.create(
        model="vertex-gemini", messages=[{"role": "user", "content": "hello"}], stream=True
    )
    assert GEMINI in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    message = cloud.anthropic_sdk().messages.create(
        model="vertex-gemini", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.content[0].type == "text"
    assert GEMINI in message.content[0].text
    requests = cloud.vertex.traffic()
    endpoint = (
        f"/v1/projects/{cloud.vertex.project}/locations/{cloud.vertex.region}"
        "/endpoints/openapi/chat/completions"
    )
    assert [r["path"] for r in requests] == [endpoint] * 3
    assert {r["body"]["model"] for r in requests} == {GEMINI}
    assert all(bearer(r).startswith("ya29.") for r in requests)


def test_tokens_rotate_under_load_without_a_failed_request(cloud: CloudLab) -> None:
    """Tokens live TOKEN_LIFETIME seconds: over two and a half lifetimes of steady load, the
    operator mints new ones and the data plane takes them up before the old ones expire."""
    cloud.serve("rotating", [cloud.vertex_backend(CLAUDE)])
    cloud.vertex.forget_requests()
    statuses = cloud.statuses_under_load("rotating", 2.5 * TOKEN_LIFETIME)
    assert set(statuses) == {200}, statuses
    tokens = {bearer(r) for r in cloud.vertex.traffic()}
    assert len(tokens) >= 3, "the tokens did not rotate"
    # Only access tokens reached the data plane: the credentials Secret holds no key.
    credentials = cloud.cluster.get("secrets", "gw-switchyard-credentials", cloud.namespace)
    assert credentials is not None
    values = [base64.b64decode(v).decode() for v in credentials["data"].values()]
    assert not any("PRIVATE KEY" in value for value in values)
    assert any(value.startswith("ya29.") for value in values)


def test_a_key_the_token_endpoint_refuses_is_credentials_invalid_and_traffic_moves(
    cloud: CloudLab,
) -> None:
    refused = cloud.vertex_backend(
        CLAUDE, name="refused", credentialsRef={"name": SECRET, "key": STRANGER_KEY}
    )
    cloud.apply_endpoint("refused-key", [refused, cloud.anthropic_backend()])
    backend = cloud.backend_reported("refused-key", "refused", "CredentialsInvalid")
    assert backend["message"] == (
        "the token endpoint refused the service-account key (invalid_grant)"
    )
    cloud.assert_served_only_by("refused-key", cloud.claude.port)


def test_claude_fails_over_between_anthropic_and_vertex(cloud: CloudLab) -> None:
    cloud.serve("claude", [cloud.anthropic_backend(), cloud.vertex_backend(CLAUDE)])
    for down, up in ((cloud.claude, cloud.vertex), (cloud.vertex, cloud.claude)):
        down.fault(status=500)
        try:
            outcome = send_sync(cloud.chat_url, chat("claude"), 100, 8)
            assert outcome.statuses == {200: 100}, outcome.statuses
            assert set(outcome.ports) == {up.port}
        finally:
            down.heal()


def test_no_key_or_token_anywhere_a_person_or_program_can_read(cloud: CloudLab) -> None:
    """After the module's tests: the service-account key and the tokens minted from it are in
    no log, metric, status, Event, ConfigMap or Envoy config."""
    tokens = [str(t["token"]) for t in cloud.vertex.tokens()]
    assert tokens, "no token was minted"
    private_key = json.loads(cloud.vertex.service_account_key)["private_key"]
    cloud.assert_no_secret_readable([cloud.claude.api_key, private_key, *tokens])


def test_vertex_takes_the_gateways_workload_identity(cloud: CloudLab) -> None:
    """No credentialsRef: the gateway's ServiceAccount names the Google service account it
    acts as; the operator, as its own workload identity (the metadata server), gets that
    account's tokens from IAM, and the data plane and the probes send them."""
    annotation = "iam.gke.io/gcp-service-account"
    cloud.cluster.apply(
        *(
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": name, "namespace": cloud.namespace, "annotations": notes}}
            for name, notes in (
                ("vertex-caller", {annotation: GATEWAY_ACCOUNT}),
                ("stranger", {annotation: "stranger@switchyard-lab.iam.gserviceaccount.com"}),
            )
        )
    )  # fmt: skip
    backend = cloud.vertex_backend(CLAUDE)
    del backend["credentialsRef"]
    os.environ[IAM_CREDENTIALS_ENV] = f"http://{cloud.vertex.metadata_host}"
    try:
        cloud.run_gateway_as("vertex-caller")
        cloud.serve("vertex-wi", [backend])
        cloud.vertex.forget_requests()
        answer = cloud.openai().chat.completions.create(
            model="vertex-wi", messages=[{"role": "user", "content": "hello"}]
        )
        assert f"GCPVertexAI {CLAUDE}" in (answer.choices[0].message.content or "")
        message = cloud.anthropic_sdk().messages.create(
            model="vertex-wi", max_tokens=64, messages=[{"role": "user", "content": "hello"}]
        )
        assert message.content[0].type == "text"
        subjects = {t["token"]: t["subject"] for t in cloud.vertex.tokens()}
        sent = {subjects.get(bearer(r)) for r in cloud.vertex.traffic()}
        assert sent == {GATEWAY_ACCOUNT}

        # An account the operator may not act as: the backend says why, and its traffic moves.
        cloud.run_gateway_as("stranger")
        cloud.apply_endpoint("vertex-stranger", [backend, cloud.anthropic_backend()])
        reported = cloud.backend_reported("vertex-stranger", "vertex", "CredentialsInvalid")
        assert "IAM refused (PERMISSION_DENIED)" in reported["message"]
        cloud.assert_served_only_by("vertex-stranger", cloud.claude.port)
    finally:
        del os.environ[IAM_CREDENTIALS_ENV]
        cloud.run_gateway_as(None)
    eventually(
        lambda: (
            "spec.dataPlane.serviceAccountName"
            in json.dumps((cloud.endpoint("vertex-wi") or {}).get("status", {}).get("conditions"))
        )
    )


def test_vertex_errors_reach_each_client_in_its_format(cloud: CloudLab) -> None:
    """Vertex's own errors come in Google's format; each client gets its API's."""
    cloud.serve("vertex-errors", [cloud.vertex_backend(CLAUDE)])
    cloud.serve("gemini-errors", [cloud.vertex_backend(GEMINI, name="gemini")])
    cloud.vertex.fault(status=400)
    try:
        with pytest.raises(anthropic.BadRequestError) as claude:
            cloud.anthropic_sdk().messages.create(
                model="vertex-errors", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
            )
        body = claude.value.response.json()
        assert body["type"] == "error"
        assert body["error"] == {"type": "invalid_request_error", "message": "injected fault"}
        with pytest.raises(openai.BadRequestError) as gemini:
            cloud.openai().chat.completions.create(
                model="gemini-errors", messages=[{"role": "user", "content": "hi"}]
            )
        error = gemini.value.response.json()["error"]
        assert (error["type"], error["code"], error["message"]) == (
            "invalid_request_error", "INVALID_ARGUMENT", "injected fault",
        )  # fmt: skip
    finally:
        cloud.vertex.heal()
