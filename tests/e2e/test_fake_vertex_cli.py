"""The Vertex AI fake as the tests and the demo run it: `switchyard fake-provider --provider
GCPVertexAI` in a process of its own (VertexProcess), reached by the vendors' libraries with
a service-account key written for it, and steered through its one control port."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import anthropic
import openai
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from gatewaylab import (
    SWITCHYARD,
    VertexProcess,
    service_account_key_json,
    wait_for_port,
)
from ports import free_port
from switchyard.cli import main

pytestmark = pytest.mark.e2e

CLAUDE, GEMINI = "claude-x@20250101", "gemini-x"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"


@pytest.fixture(scope="module")
def vertex() -> Iterator[VertexProcess]:
    process = VertexProcess([CLAUDE, f"google/{GEMINI}"], project="proj-1")
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(autouse=True)
def fresh(vertex: VertexProcess) -> Iterator[None]:
    """Each test starts from no fault, no records and the default token lifetime."""
    vertex.forget_requests()
    yield
    vertex.heal()
    vertex.set_token_lifetime(3599)


def credentials(info: dict[str, Any]) -> service_account.Credentials:
    # google-auth leaves this classmethod untyped.
    load: Any = service_account.Credentials.from_service_account_info
    return cast(service_account.Credentials, load(info, scopes=[CLOUD_PLATFORM]))


def refresh(creds: service_account.Credentials) -> str:
    """Get `creds` a new access token from its token endpoint, as google-auth does."""
    # google-auth leaves refresh untyped.
    untyped: Any = creds.refresh
    untyped(GoogleRequest())
    return cast(str, creds.token)


def mint(info: dict[str, Any]) -> str:
    """An access token for the key `info`."""
    return refresh(credentials(info))


def probe(vertex: VertexProcess, publisher: str, model: str, token: str | None) -> tuple[int, Any]:
    """GET the publisher model, as the operator's probe does: its status and JSON."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(
        f"{vertex.url}/v1beta1/publishers/{publisher}/models/{model}", headers=headers
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_claude_answers_anthropic_vertex(vertex: VertexProcess) -> None:
    token = mint(vertex.service_account_info)
    assert token.startswith("ya29.")
    with anthropic.AnthropicVertex(
        region=vertex.region,
        project_id=vertex.project,
        base_url=f"{vertex.url}/v1",
        access_token=token,
        max_retries=0,
    ) as client:
        message = client.messages.create(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Say hi"}]
        )
        with client.messages.stream(
            model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Say hi"}]
        ) as stream:
            streamed = "".join(stream.text_stream)
    expected = f"Hello from GCPVertexAI {CLAUDE} on port {vertex.port}."
    assert cast(anthropic.types.TextBlock, message.content[0]).text == expected
    assert streamed == expected
    sent = vertex.traffic()
    assert [r["path"].rpartition(":")[2] for r in sent] == ["rawPredict", "streamRawPredict"]
    assert sent[0]["path"].startswith(
        f"/v1/projects/proj-1/locations/{vertex.region}/publishers/anthropic/models/{CLAUDE}"
    )
    assert sent[0]["headers"]["authorization"] == f"Bearer {token}"
    assert vertex.model == CLAUDE


def test_gemini_answers_the_openai_sdk(vertex: VertexProcess) -> None:
    token = mint(vertex.service_account_info)
    base = f"{vertex.url}/v1/projects/{vertex.project}/locations/{vertex.region}/endpoints/openapi"
    with openai.OpenAI(api_key=token, base_url=base, max_retries=0) as client:
        completion = client.chat.completions.create(
            model=f"google/{GEMINI}", messages=[{"role": "user", "content": "Say hi"}]
        )
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model="google/gemini-unknown", messages=[{"role": "user", "content": "hi"}]
            )
    expected = f"Hello from GCPVertexAI google/{GEMINI} on port {vertex.port}."
    assert completion.choices[0].message.content == expected
    with (
        openai.OpenAI(api_key="ya29.not-issued-here", base_url=base, max_retries=0) as client,
        pytest.raises(openai.AuthenticationError),
    ):
        client.chat.completions.create(
            model=f"google/{GEMINI}", messages=[{"role": "user", "content": "hi"}]
        )


def test_probe_checks_the_token_as_predictions_do(vertex: VertexProcess) -> None:
    token = mint(vertex.service_account_info)
    assert probe(vertex, "anthropic", CLAUDE, token) == (
        200,
        {"name": f"publishers/anthropic/models/{CLAUDE}", "versionId": "001", "launchStage": "GA"},
    )
    status, answer = probe(vertex, "google", GEMINI, token)
    assert (status, answer["name"]) == (200, f"publishers/google/models/{GEMINI}")
    for publisher, model in [("anthropic", "claude-unknown"), ("google", CLAUDE), ("meta", GEMINI)]:
        status, answer = probe(vertex, publisher, model, token)
        assert (status, answer["error"]["status"]) == (404, "NOT_FOUND"), (publisher, model)
        assert answer["error"]["message"] == (
            f"Publisher Model `publishers/{publisher}/models/{model}` not found."
        )
    status, answer = probe(vertex, "anthropic", CLAUDE, None)
    assert (status, answer["error"]["status"]) == (401, "UNAUTHENTICATED")
    recorded = vertex.requests()
    assert {r["method"] for r in recorded} == {"GET"}
    assert len(recorded) == 6
    assert vertex.traffic() == [], "probes are not clients' traffic"

    assert token in {entry["token"] for entry in vertex.tokens()}
    assert vertex.expire_tokens() >= 1
    assert probe(vertex, "anthropic", CLAUDE, token)[0] == 401
    assert probe(vertex, "google", GEMINI, token)[0] == 401
    fresh = mint(vertex.service_account_info)
    assert probe(vertex, "anthropic", CLAUDE, fresh)[0] == 200
    assert vertex.revoke_tokens(fresh) == 1
    status, answer = probe(vertex, "anthropic", CLAUDE, fresh)
    assert (status, answer["error"]["code"]) == (401, 401)
    assert fresh not in {entry["token"] for entry in vertex.tokens()}
    vertex.revoke_tokens()
    assert vertex.tokens() == []


def test_faults_and_token_lifetime(vertex: VertexProcess) -> None:
    vertex.set_token_lifetime(120)
    creds = credentials(vertex.service_account_info)
    refresh(creds)
    assert creds.expiry is not None
    # google-auth keeps expiry naive UTC.
    left = creds.expiry.replace(tzinfo=datetime.UTC).timestamp() - time.time()
    assert 100 < left <= 120, left
    vertex.fault(status=429, retryAfter=2)
    status, answer = probe(vertex, "anthropic", CLAUDE, cast(str, creds.token))
    assert (status, answer["error"]["status"]) == (429, "RESOURCE_EXHAUSTED")
    vertex.heal()
    assert probe(vertex, "anthropic", CLAUDE, cast(str, creds.token))[0] == 200
    with pytest.raises(TypeError):
        vertex.rotate_key("sk-anything")


def test_token_endpoint_refuses_another_key_of_the_account(vertex: VertexProcess) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = service_account_key_json(
        other, vertex.email, vertex.project, vertex.token_uri, vertex.key_id
    )
    with pytest.raises(RefreshError, match=r"invalid_grant.*Invalid JWT Signature"):
        mint(forged)
    unknown = {**vertex.service_account_info, "client_email": "x@proj-1.iam.gserviceaccount.com"}
    with pytest.raises(RefreshError, match="account not found"):
        mint(unknown)


def test_cli_runs_vertex_with_its_own_auth_port_and_auth_controls(tmp_path: Path) -> None:
    """Without --auth-port the token endpoint takes any free port and says which; with
    --auth-control-port its own faults are steered there."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = "other@proj-2.iam.gserviceaccount.com"
    port, control, auth_control = free_port(), free_port(), free_port()
    key_file = tmp_path / "key.json"
    command = [
        SWITCHYARD, "fake-provider", "--provider", "GCPVertexAI", "--port", str(port),
        "--control-port", str(control), "--auth-control-port", str(auth_control),
        "--project", "proj-2", "--location", "global", "--service-account-key", str(key_file),
    ]  # fmt: skip
    # The token endpoint's URL is known only once the process prints it, so the key file's
    # token_uri is empty: the endpoint checks only the account and its key.
    key_file.write_text(json.dumps(service_account_key_json(key, email, "proj-2", "", "k1")))
    process = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        wait_for_port(control, process)
        assert process.stdout is not None
        lines = [process.stdout.readline().decode() for _ in range(4)]
        assert lines[0] == f"GCPVertexAI fake provider on http://127.0.0.1:{port}\n"
        found = re.fullmatch(
            r"Google OAuth token endpoint on (http://127.0.0.1:\d+/token)\n", lines[1]
        )
        assert found, lines
        assert lines[2:] == [
            f"control API on http://127.0.0.1:{control}\n",
            f"token endpoint control API on http://127.0.0.1:{auth_control}\n",
        ]
        info = service_account_key_json(key, email, "proj-2", found[1], "k1")
        token = mint(info)
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1beta1/publishers/google/models/{GEMINI}",
            headers={"Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            assert reply.status == 200, "FakeVertex's default models"
        fault = urllib.request.Request(
            f"http://127.0.0.1:{auth_control}/fault",
            data=json.dumps({"status": 400}).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(fault, timeout=10).close()
        # Not a 5xx, which google-auth would retry with backoff: the test stays fast.
        with pytest.raises(RefreshError, match=r"invalid_request.*injected fault"):
            mint(info)
    finally:
        process.terminate()
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--provider", "OpenAI"], "--api-key is required for OpenAI"),
        (["--provider", "GCPVertexAI", "--project", "p"], "--service-account-key is required"),
        (["--provider", "GCPVertexAI", "--service-account-key", "k"], "--project is required"),
        (
            ["--provider", "GCPVertexAI", "--project", "p", "--service-account-key", "k",
             "--api-key", "sk"],
            "--api-key: GCPVertexAI takes tokens",
        ),
        (
            ["--provider", "Anthropic", "--api-key", "sk", "--project", "p", "--auth-port", "1"],
            "--project, --auth-port: only for GCPVertexAI",
        ),
    ],
)  # fmt: skip
def test_cli_flags_each_provider_needs(
    flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["fake-provider", "--port", "1", *flags])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
