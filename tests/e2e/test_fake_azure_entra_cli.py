"""Azure OpenAI with Entra ID as the tests and the demo run it: `switchyard fake-provider
--provider AzureOpenAI --entra-...` in a process of its own (AzureEntraProcess), its tokens got
with azure-identity from the fake Entra ID it runs, spent with the openai SDK, and steered
through its one control port."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import ClientSecretCredential, get_bearer_token_provider
from openai.types.chat import ChatCompletionMessageParam

from gatewaylab import (
    SWITCHYARD,
    AzureEntraProcess,
    lab_ca_and_server,
    wait_for_port,
)
from ports import free_port
from switchyard.cli import main
from switchyard.fakes.provider import FakeProvider

pytestmark = pytest.mark.e2e

DEPLOYMENT = "gpt-x"
API_VERSION = "2024-10-21"
SCOPE = "https://cognitiveservices.azure.com/.default"
UNAUTHORIZED = {
    "code": "401",
    "message": "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired.",
}
KEY_DISABLED = {
    "code": "AuthenticationTypeDisabled",
    "message": "Key based authentication is disabled for this resource.",
}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hi"}]


@pytest.fixture(scope="module")
def azure() -> Iterator[AzureEntraProcess]:
    process = AzureEntraProcess(DEPLOYMENT)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def fresh(azure: AzureEntraProcess) -> Iterator[None]:
    """Each test starts from no fault, no records, the default token lifetime and the app's
    first secret."""
    secret = azure.client_secret
    azure.forget_requests()
    yield
    azure.heal()
    azure.set_token_lifetime(3599)
    if azure.client_secret != secret:
        azure.rotate_client_secret(secret)


def credential(azure: AzureEntraProcess, secret: str | None = None) -> ClientSecretCredential:
    """The app's credential, as an app configures azure-identity for this Entra. A new one
    each time: azure-identity caches tokens per credential."""
    return ClientSecretCredential(
        azure.tenant,
        azure.client_id,
        azure.client_secret if secret is None else secret,
        authority=azure.authority,
        disable_instance_discovery=True,
        connection_verify=azure.ca_bundle,
    )


def mint(azure: AzureEntraProcess) -> str:
    return credential(azure).get_token(SCOPE).token


def client(azure: AzureEntraProcess, token: str) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=azure.url, azure_ad_token=token, api_version=API_VERSION, max_retries=0
    )


def get(azure: AzureEntraProcess, path: str, headers: dict[str, str]) -> tuple[int, Any]:
    """GET `path`, as the operator's probe does: its status and JSON."""
    request = urllib.request.Request(f"{azure.url}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_chat_with_an_entra_token(azure: AzureEntraProcess) -> None:
    token = mint(azure)
    with client(azure, token) as azure_openai:
        completion = azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
        stream = azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO, stream=True)
        streamed = "".join(
            chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
        )
    expected = f"Hello from AzureOpenAI {DEPLOYMENT} on port {azure.port}."
    assert completion.choices[0].message.content == expected
    assert streamed == expected
    sent = azure.traffic()
    assert [r["path"] for r in sent] == [f"/openai/deployments/{DEPLOYMENT}/chat/completions"] * 2
    assert all(r["query"] == {"api-version": API_VERSION} for r in sent)
    assert all(r["headers"]["authorization"] == f"Bearer {token}" for r in sent)
    assert all("api-key" not in r["headers"] for r in sent)
    # As apps usually do: azure-identity hands the SDK a fresh token when it needs one.
    provider = get_bearer_token_provider(credential(azure), SCOPE)
    with openai.AzureOpenAI(
        azure_endpoint=azure.url,
        azure_ad_token_provider=provider,
        api_version=API_VERSION,
        max_retries=0,
    ) as azure_openai:
        completion = azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert completion.choices[0].message.content == expected


def test_v1_api_takes_the_token_as_its_key(azure: AzureEntraProcess) -> None:
    token = mint(azure)
    with openai.OpenAI(base_url=f"{azure.url}/openai/v1", api_key=token, max_retries=0) as v1:
        assert [model.id for model in v1.models.list()] == [DEPLOYMENT]
        completion = v1.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert completion.choices[0].message.content == (
        f"Hello from AzureOpenAI {DEPLOYMENT} on port {azure.port}."
    )
    with (
        openai.OpenAI(base_url=f"{azure.url}/openai/v1", api_key="sk-x", max_retries=0) as v1,
        pytest.raises(openai.AuthenticationError) as refused,
    ):
        v1.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert refused.value.body == UNAUTHORIZED


def test_a_key_is_refused_as_local_auth_is_disabled(azure: AzureEntraProcess) -> None:
    with (
        openai.AzureOpenAI(
            azure_endpoint=azure.url, api_key="any-key", api_version=API_VERSION, max_retries=0
        ) as keyed,
        pytest.raises(openai.PermissionDeniedError) as refused,
    ):
        keyed.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert refused.value.status_code == 403
    assert refused.value.body == KEY_DISABLED
    # Even beside a good token: the key alone decides.
    token = mint(azure)
    both = {"api-key": "any-key", "Authorization": f"Bearer {token}"}
    for path in [f"/openai/deployments?api-version={API_VERSION}", "/openai/v1/models"]:
        assert get(azure, path, both) == (403, {"error": KEY_DISABLED}), path


def test_probes_check_the_token_as_completions_do(azure: AzureEntraProcess) -> None:
    token = mint(azure)
    bearer = {"Authorization": f"Bearer {token}"}
    for path in [
        f"/openai/deployments?api-version={API_VERSION}",
        f"/openai/models?api-version={API_VERSION}",
        "/openai/v1/models",
    ]:
        status, answer = get(azure, path, bearer)
        assert (status, [m["id"] for m in answer["data"]]) == (200, [DEPLOYMENT]), path
        assert get(azure, path, {}) == (401, {"error": UNAUTHORIZED}), path
        assert get(azure, path, {"Authorization": token}) == (401, {"error": UNAUTHORIZED})
    status, answer = get(azure, "/openai/deployments", bearer)
    assert (status, answer["error"]["code"]) == (404, "404"), "no api-version"
    assert {r["method"] for r in azure.requests()} == {"GET"}
    assert azure.traffic() == [], "probes are not clients' traffic"


def test_expired_revoked_and_foreign_tokens_are_refused(azure: AzureEntraProcess) -> None:
    token = mint(azure)
    assert token in {entry["token"] for entry in azure.tokens()}
    assert azure.expire_tokens(token) == 1
    with client(azure, token) as azure_openai, pytest.raises(openai.AuthenticationError) as refused:
        azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert refused.value.body == UNAUTHORIZED
    (listed,) = [entry for entry in azure.tokens() if entry["token"] == token]
    assert listed["expiresIn"] <= 0
    assert listed["subject"] == azure.client_id
    assert listed["scopes"] == [SCOPE]

    fresh = mint(azure)
    bearer = {"Authorization": f"Bearer {fresh}"}
    path = f"/openai/deployments?api-version={API_VERSION}"
    assert get(azure, path, bearer)[0] == 200
    assert azure.revoke_tokens(fresh) == 1
    assert get(azure, path, bearer) == (401, {"error": UNAUTHORIZED})
    assert fresh not in {entry["token"] for entry in azure.tokens()}

    # Shaped as this Entra's tokens are, but not issued by it.
    header, claims, _ = mint(azure).split(".")
    for foreign in [f"{header}.{claims}.forged", "not-a-token"]:
        with (
            client(azure, foreign) as azure_openai,
            pytest.raises(openai.AuthenticationError),
        ):
            azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    azure.revoke_tokens()
    assert azure.tokens() == []


def test_token_lifetime_and_faults(azure: AzureEntraProcess) -> None:
    azure.set_token_lifetime(120)
    token = credential(azure).get_token(SCOPE)
    assert 100 < token.expires_on - time.time() <= 120
    azure.fault(status=429, retryAfter=2)  # the control API's JSON names
    with (
        client(azure, token.token) as azure_openai,
        pytest.raises(openai.RateLimitError) as limited,
    ):
        azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert limited.value.response.headers["retry-after"] == "2"
    assert mint(azure), "a fault of Azure OpenAI is not one of its Entra"
    azure.heal()
    with client(azure, token.token) as azure_openai:
        azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    with pytest.raises(TypeError):
        azure.rotate_key("sk-anything")


def test_a_wrong_or_rotated_client_secret_is_refused(azure: AzureEntraProcess) -> None:
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential(azure, "not-the-secret").get_token(SCOPE)
    old = azure.client_secret
    before = mint(azure)
    azure.rotate_client_secret("rotated-secret")
    assert azure.client_secret == "rotated-secret"
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        credential(azure, old).get_token(SCOPE)
    after = mint(azure)
    with client(azure, after) as azure_openai:
        azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    with client(azure, before) as azure_openai:
        # As at Entra: a new secret does not take back the tokens already issued.
        azure_openai.chat.completions.create(model=DEPLOYMENT, messages=HELLO)
    assert json.loads(azure.credentials_json)["clientSecret"] == "rotated-secret"


def test_credentials_json_is_what_the_secret_holds(azure: AzureEntraProcess) -> None:
    assert json.loads(azure.credentials_json) == {
        "tenantId": azure.tenant,
        "clientId": azure.client_id,
        "clientSecret": azure.client_secret,
        "authorityHost": f"https://localhost:{azure.entra_port}",
    }
    assert azure.authority == f"https://localhost:{azure.entra_port}"
    assert azure.provider == "AzureOpenAI"
    assert azure.model == DEPLOYMENT
    assert azure.url == f"http://127.0.0.1:{azure.port}"
    assert Path(azure.ca_bundle).read_text().startswith("-----BEGIN CERTIFICATE-----")


def test_cli_prints_its_urls_and_serves_entra_controls(tmp_path: Path) -> None:
    """Without --entra-port the token endpoint takes any free port and says which; with
    --entra-control-port its own faults are steered there."""
    _, certificate, key = lab_ca_and_server(tmp_path, "localhost", ["127.0.0.1"])
    ca = str(tmp_path / "ca.crt")
    port, control, entra_control = free_port(), free_port(), free_port()
    command = [
        SWITCHYARD, "fake-provider", "--provider", "AzureOpenAI", "--port", str(port),
        "--control-port", str(control), "--entra-control-port", str(entra_control),
        "--model", "dep-1", "--entra-tenant", "t-1", "--entra-client-id", "c-1",
        "--entra-client-secret", "s-1", "--entra-tls-cert", str(certificate),
        "--entra-tls-key", str(key), "--token-lifetime", "60",
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        wait_for_port(control, process)
        assert process.stdout is not None
        lines = [process.stdout.readline().decode() for _ in range(4)]
        assert lines[0] == f"AzureOpenAI fake provider on http://127.0.0.1:{port}\n"
        found = re.fullmatch(
            r"Entra ID token endpoint on https://127.0.0.1:(\d+)/t-1/oauth2/v2.0/token\n",
            lines[1],
        )
        assert found, lines
        assert lines[2:] == [
            f"control API on http://127.0.0.1:{control}\n",
            f"token endpoint control API on http://127.0.0.1:{entra_control}\n",
        ]
        options: dict[str, Any] = {
            "authority": f"https://localhost:{found[1]}",
            "disable_instance_discovery": True,
            "connection_verify": ca,
        }
        token = ClientSecretCredential("t-1", "c-1", "s-1", **options).get_token(SCOPE)
        assert 40 < token.expires_on - time.time() <= 60
        with openai.AzureOpenAI(
            azure_endpoint=f"http://127.0.0.1:{port}",
            azure_ad_token=token.token,
            api_version=API_VERSION,
            max_retries=0,
        ) as azure_openai:
            completion = azure_openai.chat.completions.create(model="dep-1", messages=HELLO)
        assert (
            completion.choices[0].message.content == f"Hello from AzureOpenAI dep-1 on port {port}."
        )
        fault = urllib.request.Request(
            f"http://127.0.0.1:{entra_control}/fault",
            data=json.dumps({"status": 400}).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(fault, timeout=10).close()
        # Not a 5xx, which azure-identity would retry with backoff: the test stays fast. A new
        # credential asks for the metadata first, and that is refused.
        with pytest.raises(ClientAuthenticationError, match="authority configuration"):
            ClientSecretCredential("t-1", "c-1", "s-1", **options).get_token(SCOPE)
        with urllib.request.urlopen(f"http://127.0.0.1:{entra_control}/requests") as reply:
            paths = [r["path"] for r in json.loads(reply.read())]
        assert paths[-1] == "/t-1/v2.0/.well-known/openid-configuration"
        assert "/t-1/oauth2/v2.0/token" in paths
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


ENTRA = [
    "--entra-tenant", "t", "--entra-client-id", "c", "--entra-client-secret", "s",
    "--entra-tls-cert", "cert.pem", "--entra-tls-key", "key.pem",
]  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--provider", "OpenAI", "--api-key", "sk", "--entra-tenant", "t"],
         "--entra-tenant: only for AzureOpenAI"),
        (["--provider", "GCPVertexAI", "--project", "p", "--service-account-key", "k",
          "--entra-port", "1", "--entra-control-port", "2"],
         "--entra-port, --entra-control-port: only for AzureOpenAI"),
        (["--provider", "AzureOpenAI", *ENTRA, "--api-key", "sk"],
         "--api-key: AzureOpenAI with Entra ID takes tokens"),
        (["--provider", "AzureOpenAI", "--entra-tenant", "t", "--entra-client-secret", "s"],
         "--entra-client-id, --entra-tls-cert, --entra-tls-key: required for AzureOpenAI with "
         "Entra ID"),
        (["--provider", "AzureOpenAI", *ENTRA, "--project", "p", "--token-lifetime", "5"],
         "--project: only for GCPVertexAI"),
        (["--provider", "AzureOpenAI", "--api-key", "sk", "--token-lifetime", "5"],
         "--token-lifetime: only for GCPVertexAI"),
    ],
)  # fmt: skip
def test_cli_flags_entra_needs(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fake-provider", "--port", "1", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_says_what_is_wrong_with_the_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [*ENTRA[:6], "--entra-tls-cert", str(tmp_path / "no.pem")]
    flags += ["--entra-tls-key", str(tmp_path / "no.key")]
    assert main(["fake-provider", "--port", "1", "--provider", "AzureOpenAI", *flags]) == 2
    assert "--entra-tls-cert/--entra-tls-key" in capsys.readouterr().err


def test_only_azure_openai_takes_entra_tokens() -> None:
    class Issuer:
        def valid(self, token: str) -> bool:
            return True

        def token_control_routes(self, app: Any) -> None:
            pass

    with pytest.raises(ValueError, match="only AzureOpenAI takes Entra ID tokens"):
        FakeProvider("OpenAI", "sk", entra=Issuer())


def test_a_client_secret_that_starts_with_a_dash_is_the_secret_not_a_flag() -> None:
    process = AzureEntraProcess(DEPLOYMENT, client_secret="-" + secrets.token_urlsafe(20))
    try:
        assert mint(process)
    finally:
        process.stop()
