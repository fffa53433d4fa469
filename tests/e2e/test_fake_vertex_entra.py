"""The fake Google token endpoint, Vertex AI and Entra ID as the vendors' own libraries see
them (google-auth, the anthropic SDK's AnthropicVertex, the openai SDK, azure-identity): the
tokens they issue and accept, and the credentials, signatures and tokens they refuse. A fake
that accepts a wrong signature or an expired token is a failing test."""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiohttp
import anthropic
import openai
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import (
    ClientAssertionCredential,
    ClientSecretCredential,
    WorkloadIdentityCredential,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth.exceptions import RefreshError
from google.auth.transport.requests import Request as GoogleRequest
from google.oauth2 import service_account

from switchyard.fakes.entra import COGNITIVE_SCOPE, FakeEntra, Federation, rsa_jwk
from switchyard.fakes.provider import FakeProvider, Fault, running
from switchyard.fakes.vertex import (
    CLOUD_PLATFORM,
    GOOGLE_TOKEN_AUDIENCE,
    JWT_BEARER,
    UNAUTHENTICATED,
    FakeGoogleAuth,
    FakeVertex,
    Jwt,
)
from tests_support.tls import make_ca_and_server

pytestmark = pytest.mark.e2e

PROJECT, REGION = "proj-1", "us-east5"
CLAUDE, GEMINI = "claude-x@20250101", "gemini-x"
EMAIL = "switchyard@proj-1.iam.gserviceaccount.com"
TENANT, CLIENT_ID, SECRET = "tenant-1", "client-1", "s3cret"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_SUBJECT = "system:serviceaccount:llm:gateway"


@functools.cache
def private_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def key_json(token_uri: str, key: str = "account", email: str = EMAIL) -> dict[str, Any]:
    """A service-account key JSON, as `gcloud iam service-accounts keys create` writes it."""
    return {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": "key-1",
        "private_key": pem(private_key(key)),
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_uri,
    }


def credentials(info: dict[str, Any]) -> service_account.Credentials:
    # google-auth leaves this classmethod untyped.
    load: Any = service_account.Credentials.from_service_account_info
    return cast(service_account.Credentials, load(info, scopes=[CLOUD_PLATFORM]))


async def refreshed(creds: service_account.Credentials) -> str:
    await asyncio.to_thread(creds.refresh, GoogleRequest())
    return cast(str, creds.token)


def signed(key: str, claims: dict[str, Any], kid: str = "key-1") -> str:
    """A JWT with `claims`, signed RS256 by the private key named `key`."""

    def encode(value: bytes) -> str:
        return base64.urlsafe_b64encode(value).rstrip(b"=").decode()

    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    content = ".".join(encode(json.dumps(part).encode()) for part in (header, claims))
    signature = private_key(key).sign(content.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{content}.{encode(signature)}"


def run(test: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    """The async test, run to the end in a fresh event loop."""

    @functools.wraps(test)
    def sync(*args: Any, **kwargs: Any) -> None:
        asyncio.run(test(*args, **kwargs))

    return sync


@asynccontextmanager
async def google(lifetime: int = 3599) -> AsyncIterator[tuple[FakeGoogleAuth, FakeVertex]]:
    auth = FakeGoogleAuth(metadata_account=EMAIL, token_lifetime=lifetime)
    async with running(auth, control_port=0):
        auth.add_service_account(key_json(auth.token_uri))
        vertex = FakeVertex(auth, PROJECT, [REGION, "global"], [CLAUDE], [GEMINI])
        async with running(vertex):
            yield auth, vertex


def control_url(fake: FakeProvider) -> str:
    """The control port a fake started on with control_port=0."""
    assert fake._control is not None
    return f"http://{fake.host}:{fake._control.addresses[0][1]}"


def constant(value: str) -> Callable[[], str]:
    return lambda: value


async def post(url: str, **kwargs: Any) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(url, **kwargs) as reply:
        text = await reply.text()
        try:
            return reply.status, json.loads(text)
        except ValueError:
            return reply.status, text


# What an app on GKE runs: google-auth's workload credentials from the metadata server.
WORKLOAD_IDENTITY_SCRIPT = """
from google.auth import compute_engine
from google.auth.transport.requests import Request
credentials = compute_engine.Credentials()
credentials.refresh(Request())
print(credentials.token, credentials.service_account_email)
"""

# --- the Google token endpoint


@run
async def test_google_auth_refreshes_a_service_account_token() -> None:
    async with google(lifetime=600) as (auth, _):
        creds = credentials(key_json(auth.token_uri))
        token = await refreshed(creds)
        assert token.startswith("ya29.")
        assert auth.valid(token)
        assert creds.expiry is not None
        left = creds.expiry.timestamp() - time.time()
        assert 500 < left <= 600, "google-auth read the lifetime the fake gave"
        form = auth.requests[-1].body
        assert f"grant_type={JWT_BEARER.replace(':', '%3A')}" in form
        assertion = Jwt.read(form.split("assertion=")[1]).claims
        assert assertion["aud"] == GOOGLE_TOKEN_AUDIENCE, "google-auth's audience, always"
        assert not auth.valid(token, "https://www.googleapis.com/auth/other")


@run
async def test_google_token_endpoint_refuses_another_key_and_unknown_accounts() -> None:
    async with google() as (auth, _):
        with pytest.raises(RefreshError, match=r"invalid_grant.*Invalid JWT Signature"):
            await refreshed(credentials(key_json(auth.token_uri, key="intruder")))
        with pytest.raises(RefreshError, match="account not found"):
            await refreshed(
                credentials(key_json(auth.token_uri, email="x@p.iam.gserviceaccount.com"))
            )
        assert auth.store.tokens == {}


@run
async def test_google_token_endpoint_refuses_bad_assertions() -> None:
    async with google() as (auth, _):
        now = int(time.time())
        good = {
            "iss": EMAIL,
            "aud": GOOGLE_TOKEN_AUDIENCE,
            "scope": CLOUD_PLATFORM,
            "iat": now,
            "exp": now + 3600,
        }
        bad = {
            "expired": ({**good, "iat": now - 7200, "exp": now - 3600}, "invalid_grant"),
            "too long": ({**good, "exp": now + 7200}, "invalid_grant"),
            "audience": ({**good, "aud": "https://example.com/token"}, "invalid_grant"),
            "scope": ({**good, "scope": "https://www.googleapis.com/auth/drive"}, "invalid_scope"),
            "subject": ({**good, "sub": "someone@example.com"}, "unauthorized_client"),
        }
        for name, (claims, error) in bad.items():
            form = {"grant_type": JWT_BEARER, "assertion": signed("account", claims)}
            status, body = await post(auth.token_uri, data=form)
            assert (status, body["error"]) == (
                401 if error == "unauthorized_client" else 400,
                error,
            ), name
        header, _, signature = signed("account", good).split(".")
        more = {**good, "scope": f"{CLOUD_PLATFORM} https://www.googleapis.com/auth/drive"}
        other = signed("account", more).split(".")[1]
        unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
        forged = {
            "another kid": signed("account", good, kid="key-2"),
            "changed claims": f"{header}.{other}.{signature}",
            "no signature": f"{header}.{other}.",
            "alg none": f"{unsigned}.{other}.",
        }
        for name, assertion in forged.items():
            form = {"grant_type": JWT_BEARER, "assertion": assertion}
            status, body = await post(auth.token_uri, data=form)
            assert (status, body) == (
                400,
                {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
            ), name
        form = {"grant_type": JWT_BEARER, "assertion": "not-a-jwt"}
        assert (await post(auth.token_uri, data=form))[1]["error"] == "invalid_grant"
        form = {"grant_type": "client_credentials", "assertion": signed("account", good)}
        assert (await post(auth.token_uri, data=form))[1]["error"] == "unsupported_grant_type"
        form = {"grant_type": JWT_BEARER, "assertion": signed("account", good)}
        status, body = await post(auth.token_uri, data=form)
        assert status == 200
        assert set(body) == {"access_token", "expires_in", "token_type"}
        assert (body["expires_in"], body["token_type"]) == (3599, "Bearer")


@run
async def test_metadata_server_serves_the_workload_token() -> None:
    async with google() as (auth, _):
        url = f"{auth.url}/computeMetadata/v1/instance/service-accounts/default/token"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as reply:
                assert reply.status == 403, "Metadata-Flavor is required"
            flavor = {"Metadata-Flavor": "Google"}
            async with http.get(url, headers={**flavor, "X-Forwarded-For": "10.0.0.1"}) as reply:
                assert reply.status == 403, "a proxied request is refused"
            async with http.get(url, headers=flavor) as reply:
                assert reply.status == 200
                assert reply.headers["Metadata-Flavor"] == "Google"
                body = await reply.json()
        assert body["token_type"] == "Bearer"
        assert auth.valid(body["access_token"])
        assert auth.store.tokens[body["access_token"]].subject == EMAIL

        # google-auth on GKE, in a process of its own: it reads GCE_METADATA_HOST once, at
        # import, as the environment of a Pod sets it.
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKLOAD_IDENTITY_SCRIPT,
            env={**os.environ, "GCE_METADATA_HOST": auth.metadata_host},
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        output, _ = await process.communicate()
        assert process.returncode == 0
        token, email = output.decode().split()
        assert auth.valid(token)
        assert email == EMAIL


# --- Vertex AI: Claude


def claude(vertex: FakeVertex, token: str, region: str = REGION) -> anthropic.AsyncAnthropicVertex:
    return anthropic.AsyncAnthropicVertex(
        region=region,
        project_id=PROJECT,
        base_url=vertex.base_url,
        access_token=token,
        max_retries=0,
    )


@run
async def test_vertex_claude_answers_anthropic_vertex() -> None:
    async with google() as (auth, vertex):
        token = await refreshed(credentials(key_json(auth.token_uri)))
        async with claude(vertex, token) as client:
            message = await client.messages.create(
                model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Say hi"}]
            )
        text = cast(anthropic.types.TextBlock, message.content[0]).text
        assert text == f"Hello from GCPVertexAI {CLAUDE} on port {vertex.port}."
        assert text == vertex.reply_text(CLAUDE)
        assert message.model == "claude-x-20250101"
        assert message.id.startswith("msg_vrtx_")
        assert (message.usage.input_tokens, message.usage.output_tokens) == (2, 7)
        sent = vertex.requests[-1]
        assert sent.path == (
            f"/v1/projects/{PROJECT}/locations/{REGION}/publishers/anthropic/models/"
            f"{CLAUDE}:rawPredict"
        )
        assert sent.headers["authorization"] == f"Bearer {token}"
        assert "model" not in sent.body
        assert sent.body["anthropic_version"] == "2026-10-21", "what anthropic 2.x sends"


@run
async def test_vertex_claude_streams_and_calls_tools() -> None:
    async with google() as (auth, vertex):
        token = await refreshed(credentials(key_json(auth.token_uri)))
        weather = {
            "name": "get_weather",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        }
        async with claude(vertex, token) as client:
            async with client.messages.stream(
                model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "hi there"}]
            ) as stream:
                texts = [text async for text in stream.text_stream]
                final = await stream.get_final_message()
            called = await client.messages.create(
                model=CLAUDE,
                max_tokens=64,
                tools=[cast(Any, weather)],
                messages=[{"role": "user", "content": "weather?"}],
            )
        assert "".join(texts) == vertex.reply_text(CLAUDE)
        assert final.stop_reason == "end_turn"
        assert vertex.requests[-2].path.endswith(f"{CLAUDE}:streamRawPredict")
        assert vertex.requests[-2].body["stream"] is True
        assert called.stop_reason == "tool_use"
        use = cast(anthropic.types.ToolUseBlock, called.content[0])
        assert (use.name, use.input) == ("get_weather", {"city": "sample"})


@run
async def test_vertex_claude_with_google_auth_credentials() -> None:
    async with google() as (auth, vertex):
        creds = credentials(key_json(auth.token_uri))
        async with anthropic.AsyncAnthropicVertex(
            region="global",
            project_id=PROJECT,
            base_url=vertex.base_url,
            credentials=creds,
            max_retries=0,
        ) as client:
            message = await client.messages.create(
                model=CLAUDE, max_tokens=64, messages=[{"role": "user", "content": "Say hi"}]
            )
        assert cast(anthropic.types.TextBlock, message.content[0]).text == vertex.reply_text(CLAUDE)
        assert auth.valid(cast(str, creds.token))
        assert "/locations/global/" in vertex.requests[-1].path


@run
async def test_vertex_refuses_expired_revoked_and_foreign_tokens() -> None:
    async with google(lifetime=1) as (auth, vertex):
        token = await refreshed(credentials(key_json(auth.token_uri)))
        revoked = await refreshed(credentials(key_json(auth.token_uri)))
        auth.store.revoke(revoked)
        await asyncio.sleep(1.1)
        request: Any = {
            "model": CLAUDE,
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}],
        }
        for bad in (token, revoked, "ya29.not-issued-here"):
            async with claude(vertex, bad) as client:
                with pytest.raises(anthropic.AuthenticationError) as caught:
                    await client.messages.create(**request)
            error = cast(dict[str, Any], caught.value.body)["error"]
            assert (error["code"], error["status"]) == (401, "UNAUTHENTICATED")
            assert error["message"].startswith("Request had invalid authentication credentials")
            assert "invalid authentication credentials" in caught.value.message
        control = control_url(auth)
        lifetime = {"seconds": 3599}
        async with (
            aiohttp.ClientSession() as http,
            http.put(f"{control}/token-lifetime", json=lifetime) as reply,
        ):
            assert reply.status == 204
        fresh = await refreshed(credentials(key_json(auth.token_uri)))
        assert auth.valid(fresh)
        expire = {"token": fresh}
        async with (
            aiohttp.ClientSession() as http,
            http.post(f"{control}/tokens/expire", json=expire) as reply,
        ):
            assert (await reply.json()) == {"expired": 1}
        assert not auth.valid(fresh), "the control port expires a token at once"
        kept = auth.issue(EMAIL)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{control}/tokens") as reply:
                listed = {entry["token"]: entry for entry in await reply.json()}
            assert listed[kept]["subject"] == EMAIL
            assert listed[kept]["scopes"] == [CLOUD_PLATFORM]
            assert listed[fresh]["expiresIn"] <= 0
            async with http.post(f"{control}/tokens/revoke") as reply:
                assert (await reply.json()) == {"revoked": len(listed)}
        assert not auth.valid(kept), "the control port revokes every token"


@run
async def test_vertex_refuses_what_vertex_refuses() -> None:
    async with google() as (auth, vertex):
        token = auth.issue(EMAIL)
        headers = {"Authorization": f"Bearer {token}"}
        base = f"{vertex.base_url}/projects/{PROJECT}/locations/{REGION}/publishers/anthropic"
        body: dict[str, Any] = {
            "anthropic_version": "vertex-2023-10-16",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "hi"}],
        }
        status, answer = await post(
            f"{base}/models/{CLAUDE}:rawPredict", json=body, headers=headers
        )
        assert status == 200
        assert answer["content"][0]["text"] == vertex.reply_text(CLAUDE)
        refused = {
            "model in the body": ({**body, "model": CLAUDE}, "model: Extra inputs"),
            "no version": (
                {k: v for k, v in body.items() if k != "anthropic_version"},
                "anthropic_version: Field required",
            ),
            "the API's version": (
                {**body, "anthropic_version": "2023-06-01"},
                "anthropic_version: Input should be",
            ),
            "a field Vertex lacks": (
                {**body, "service_tier": "auto"},
                "service_tier: Extra inputs",
            ),
            "a stream": ({**body, "stream": True}, "stream: "),
            "a Messages error": ({**body, "messages": []}, "messages: "),
        }
        for name, (sent, message) in refused.items():
            status, answer = await post(
                f"{base}/models/{CLAUDE}:rawPredict", json=sent, headers=headers
            )
            assert status == 400, name
            assert answer["type"] == "error", "Claude's refusals are Anthropic's"
            assert answer["error"]["type"] == "invalid_request_error"
            assert answer["error"]["message"].startswith(message), name
        status, answer = await post(
            f"{base}/models/{CLAUDE}:streamRawPredict", json=body, headers=headers
        )
        assert (status, answer["error"]["message"][:7]) == (400, "stream:")
        elsewhere = base.replace(PROJECT, "other-project")
        status, answer = await post(
            f"{elsewhere}/models/{CLAUDE}:rawPredict", json=body, headers=headers
        )
        assert (status, answer["error"]["code"], answer["error"]["status"]) == (
            404,
            404,
            "NOT_FOUND",
        )
        status, answer = await post(
            f"{base}/models/claude-unknown:rawPredict", json=body, headers=headers
        )
        assert (status, answer["error"]["status"]) == (404, "NOT_FOUND")
        counted = {**body, "model": CLAUDE}
        del counted["max_tokens"]
        status, answer = await post(
            f"{base}/models/count-tokens:rawPredict", json=counted, headers=headers
        )
        assert (status, answer) == (200, {"input_tokens": 1})
        await vertex.set_fault(Fault(status=429, retry_after=3))
        async with claude(vertex, token) as client:
            with pytest.raises(anthropic.RateLimitError) as caught:
                await client.messages.create(
                    model=CLAUDE, max_tokens=8, messages=[{"role": "user", "content": "hi"}]
                )
        error = cast(dict[str, Any], caught.value.body)["error"]
        assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED")
        assert caught.value.response.headers["Retry-After"] == "3"


@run
async def test_vertex_probe_and_its_control_port_steering_the_tokens() -> None:
    """The publisher model GET takes the predictions' token and costs none; Vertex's control
    port steers its auth's tokens, as one port does for `fake-provider --provider GCPVertexAI`."""
    async with google() as (auth, _):
        vertex = FakeVertex(auth, PROJECT, [REGION], [CLAUDE], [GEMINI])
        async with running(vertex, control_port=0), aiohttp.ClientSession() as http:
            token = auth.issue(EMAIL)
            other = auth.issue(EMAIL, ["https://www.googleapis.com/auth/other"])
            url = f"{vertex.url}/v1beta1/publishers/anthropic/models/{CLAUDE}"
            described = {
                "name": f"publishers/anthropic/models/{CLAUDE}",
                "versionId": "001",
                "launchStage": "GA",
            }
            refused = {"code": 401, "message": UNAUTHENTICATED, "status": "UNAUTHENTICATED"}
            for sent, expected in [
                (token, (200, described)),
                (other, (401, {"error": refused})),
                ("ya29.unknown", (401, {"error": refused})),
            ]:
                headers = {"Authorization": f"Bearer {sent}"}
                async with http.get(url, headers=headers) as reply:
                    assert (reply.status, await reply.json()) == expected
            assert [r.method for r in vertex.requests] == ["GET"] * 3
            revoke = f"{control_url(vertex)}/tokens/revoke"
            async with http.post(revoke, json={"token": token}) as reply:
                assert await reply.json() == {"revoked": 1}
            assert not auth.valid(token), "Vertex's control port revokes its auth's tokens"


# --- Vertex AI: Gemini through the OpenAI-compatible API


@run
async def test_vertex_gemini_answers_the_openai_sdk() -> None:
    async with google() as (auth, vertex):
        token = await refreshed(credentials(key_json(auth.token_uri)))
        model = f"google/{GEMINI}"
        async with openai.AsyncOpenAI(
            api_key=token, base_url=vertex.openai_base_url(REGION), max_retries=0
        ) as client:
            completion = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Say hi"}]
            )
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "Say hi"}], stream=True
                )
            ]
            with pytest.raises(openai.NotFoundError):
                await client.chat.completions.create(
                    model=f"google/{GEMINI}-unknown", messages=[{"role": "user", "content": "hi"}]
                )
            with pytest.raises(openai.BadRequestError) as caught:
                await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "hi"}],
                    extra_body={"top_k": 3},
                )
        assert caught.value.body == {
            "code": 400,
            "message": "Unrecognized request argument supplied: top_k",
            "status": "INVALID_ARGUMENT",
        }
        expected = f"Hello from GCPVertexAI {model} on port {vertex.port}."
        assert completion.choices[0].message.content == expected
        assert completion.model == model
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == expected
        assert vertex.requests[0].path == (
            f"/v1/projects/{PROJECT}/locations/{REGION}/endpoints/openapi/chat/completions"
        )
    async with (
        google() as (auth, vertex),
        openai.AsyncOpenAI(
            api_key="ya29.unknown", base_url=vertex.openai_base_url(REGION), max_retries=0
        ) as client,
    ):
        with pytest.raises(openai.AuthenticationError):
            await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}]
            )


# --- Entra ID


@asynccontextmanager
async def entra(tmp_path: Path, **options: Any) -> AsyncIterator[tuple[FakeEntra, str]]:
    """A started FakeEntra, and the CA file a client must trust."""
    ca, certificate, key = make_ca_and_server(tmp_path, "localhost")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    jwks = {"keys": [rsa_jwk(private_key("cluster").public_key(), "cluster-key")]}
    federation = Federation(SA_ISSUER, SA_SUBJECT, jwks)
    fake = FakeEntra(TENANT, CLIENT_ID, SECRET, federation, ssl_context=context, **options)
    async with running(fake, control_port=0):
        yield fake, str(ca)


def service_account_token(key: str = "cluster", **changes: Any) -> str:
    """A projected Kubernetes service account token for Entra, signed by the cluster's key."""
    now = int(time.time())
    claims = {
        "iss": SA_ISSUER,
        "sub": SA_SUBJECT,
        "aud": ["api://AzureADTokenExchange"],
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        **changes,
    }
    return signed(key, claims, kid="cluster-key")


def options(fake: FakeEntra, ca: str) -> dict[str, Any]:
    return {
        "authority": fake.authority(),
        "disable_instance_discovery": True,
        "connection_verify": ca,
    }


@run
async def test_entra_client_secret(tmp_path: Path) -> None:
    async with entra(tmp_path) as (fake, ca):
        good = ClientSecretCredential(TENANT, CLIENT_ID, SECRET, **options(fake, ca))
        token = await asyncio.to_thread(good.get_token, COGNITIVE_SCOPE)
        assert fake.valid(token.token)
        assert 3500 < token.expires_on - time.time() <= 3599
        form = fake.requests[-1].body
        assert "grant_type=client_credentials" in form
        assert fake.requests[0].path == f"/{TENANT}/v2.0/.well-known/openid-configuration"
        wrong = ClientSecretCredential(TENANT, CLIENT_ID, "not-it", **options(fake, ca))
        with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
            await asyncio.to_thread(wrong.get_token, COGNITIVE_SCOPE)
        other = ClientSecretCredential(TENANT, "client-2", SECRET, **options(fake, ca))
        with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
            await asyncio.to_thread(other.get_token, COGNITIVE_SCOPE)
        fresh = ClientSecretCredential(TENANT, CLIENT_ID, SECRET, **options(fake, ca))
        with pytest.raises(ClientAuthenticationError, match="AADSTS500011"):
            await asyncio.to_thread(fresh.get_token, "https://management.azure.com/.default")
        url = f"https://localhost:{fake.port}/{TENANT}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "scope": COGNITIVE_SCOPE,
            "client_secret": "nope",
        }
        status, body = await post(url, data=form, ssl=ssl.create_default_context(cafile=ca))
        assert (status, body["error"], body["error_codes"]) == (401, "invalid_client", [7000215])
        assert body["error_description"].startswith(
            "AADSTS7000215: Invalid client secret provided."
        )


@run
async def test_entra_federated_tokens(tmp_path: Path) -> None:
    async with entra(tmp_path, token_lifetime=1) as (fake, ca):
        assertion = ClientAssertionCredential(
            TENANT, CLIENT_ID, service_account_token, **options(fake, ca)
        )
        token = await asyncio.to_thread(assertion.get_token, COGNITIVE_SCOPE)
        assert fake.valid(token.token)
        token_file = tmp_path / "azure-identity-token"
        token_file.write_text(service_account_token())
        workload = WorkloadIdentityCredential(
            tenant_id=TENANT,
            client_id=CLIENT_ID,
            token_file_path=str(token_file),
            **options(fake, ca),
        )
        second = await asyncio.to_thread(workload.get_token, COGNITIVE_SCOPE)
        assert fake.valid(second.token)
        await asyncio.sleep(1.1)
        assert not fake.valid(token.token), "an Entra token expires"

        refused = {
            "another key": (service_account_token(key="intruder"), "AADSTS50013"),
            "expired": (
                service_account_token(iat=int(time.time()) - 7200, exp=int(time.time()) - 3600),
                "AADSTS700024",
            ),
            "another subject": (
                service_account_token(sub="system:serviceaccount:x:y"),
                "AADSTS700213",
            ),
            "another issuer": (
                service_account_token(iss="https://evil.example.com"),
                "AADSTS700211",
            ),
            "another audience": (service_account_token(aud=["api://other"]), "AADSTS700212"),
        }
        for name, (jwt, code) in refused.items():
            credential = ClientAssertionCredential(
                TENANT, CLIENT_ID, constant(jwt), **options(fake, ca)
            )
            with pytest.raises(ClientAuthenticationError, match=code):
                await asyncio.to_thread(credential.get_token, COGNITIVE_SCOPE)
            assert len(fake.store.tokens) == 2, name
