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
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from e2e.cloudlab import SECRET, GatewayLab, bearer, gateway_lab
from gatewaylab import CLIENT_KEY, AzureEntraProcess, FakeProcess
from tests_support.cluster import Cluster

pytestmark = pytest.mark.e2e

TOKEN_LIFETIME = 24


@dataclass
class EntraLab(GatewayLab):
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


@pytest.fixture(scope="module")
def lab(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EntraLab]:
    azure = AzureEntraProcess(model="gpt-deploy", token_lifetime=TOKEN_LIFETIME)
    fallback = FakeProcess("OpenAI", "sk-test-entra-fallback", "gpt-4o")
    wrong = json.loads(azure.credentials_json) | {"clientSecret": "not-the-apps-secret"}
    credentials = {
        "app.json": azure.credentials_json,
        "wrong-app.json": json.dumps(wrong),
        "openai": fallback.api_key,
    }
    trusted = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(azure.ca_bundle)
    try:
        with gateway_lab(cluster, tmp_path_factory, "sy-entra", credentials) as gateway:
            yield EntraLab(
                gateway.cluster, gateway.operator, gateway.namespace, gateway.envoy, azure,
                fallback,
            )  # fmt: skip
    finally:
        azure.stop()
        fallback.stop()
        if trusted is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = trusted


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
        assert bearer(record) in issued
        assert "api-key" not in record["headers"]


def test_entra_tokens_rotate_under_load_without_a_failed_request(lab: EntraLab) -> None:
    lab.serve("entra-rotating", [lab.azure_backend()])
    lab.azure.forget_requests()
    statuses = lab.statuses_under_load("entra-rotating", 2.5 * TOKEN_LIFETIME)
    assert set(statuses) == {200}, statuses
    assert len({bearer(r) for r in lab.azure.traffic()}) >= 3, "the tokens did not rotate"
    credentials = lab.cluster.get("secrets", "gw-switchyard-credentials", lab.namespace)
    assert credentials is not None
    values = [base64.b64decode(v).decode() for v in credentials["data"].values()]
    assert not any(lab.azure.client_secret in value for value in values)


def test_an_app_entra_refuses_is_credentials_invalid_and_traffic_moves(lab: EntraLab) -> None:
    lab.apply_endpoint("entra-refused", [lab.azure_backend("wrong-app.json"), lab.openai_backend()])
    backend = lab.backend_reported("entra-refused", "azure", "CredentialsInvalid")
    assert backend["message"] == "Entra ID refused the app's credentials (AADSTS7000215)"
    lab.assert_served_only_by("entra-refused", lab.openai_fake.port)


def test_no_app_secret_or_token_anywhere_a_person_or_program_can_read(lab: EntraLab) -> None:
    tokens = [str(t["token"]) for t in lab.azure.tokens()]
    assert tokens, "no token was minted"
    lab.assert_no_secret_readable([lab.openai_fake.api_key, lab.azure.client_secret, *tokens])
