"""The operator's token minter against the fake Google token endpoint, Entra ID, STS and
IAM: what it mints, when it mints again, what it keeps while the endpoint refuses, and where
it never connects."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from e2e.test_fake_vertex_entra import CLIENT_ID, SECRET, TENANT, entra, service_account_token
from gatewaylab import service_account_key_json
from switchyard.fakes.entra import FakeEntra
from switchyard.fakes.provider import Fault, running
from switchyard.fakes.sts import FakeSTS
from switchyard.fakes.vertex import FakeGoogleAuth
from switchyard.plan.egress import ANY_CLUSTER, refusal
from switchyard.providers import Exchange
from switchyard.tokens import (
    IAM_CREDENTIALS_ENV,
    RETRY_SECONDS,
    IdentitySource,
    MintingFailed,
    TokenMinter,
    WorkloadIdentity,
)
from tests_support.metadata import METADATA_PORT
from tests_support.tokens import Issuer

pytestmark = pytest.mark.e2e

GOOGLE = Exchange.GOOGLE_SERVICE_ACCOUNT
ENTRA = Exchange.ENTRA_ID
IRSA = Exchange.AWS_WORKLOAD_IDENTITY
GKE = Exchange.GOOGLE_WORKLOAD_IDENTITY
EMAIL = "minter@switchyard-lab.iam.gserviceaccount.com"
LIFETIME = 600


def key_json(token_uri: str, key: rsa.RSAPrivateKey | None = None) -> dict[str, str]:
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return service_account_key_json(key, EMAIL, "switchyard-lab", token_uri, secrets.token_hex(20))


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000_000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def token_endpoint() -> AsyncIterator[FakeGoogleAuth]:
    auth = FakeGoogleAuth(token_lifetime=LIFETIME)
    async with running(auth):
        yield auth


def minted_by(auth: FakeGoogleAuth) -> Callable[[], int]:
    return lambda: sum(1 for r in auth.requests if r.path == "/token")


def test_a_token_is_minted_once_and_again_after_two_thirds_of_its_life() -> None:
    async def scenario() -> None:
        async with token_endpoint() as auth:
            info = key_json(auth.token_uri)
            auth.add_service_account(info)
            material = json.dumps(info).encode()
            clock = Clock()
            minter = TokenMinter(clock=clock)
            first = await minter.token(GOOGLE, material)
            assert auth.valid(first.token)
            assert first.expires_at == pytest.approx(clock.now + LIFETIME, abs=5)
            assert first.refresh_at == pytest.approx(clock.now + LIFETIME * 2 / 3, abs=5)
            clock.now = first.refresh_at - 1
            assert await minter.token(GOOGLE, material) == first
            assert minted_by(auth)() == 1
            clock.now = first.refresh_at
            second = await minter.token(GOOGLE, material)
            assert second.token != first.token
            assert auth.valid(second.token)
            assert minted_by(auth)() == 2

    asyncio.run(scenario())


def test_a_refused_key_is_reported_and_asked_again_only_after_a_while() -> None:
    async def scenario() -> None:
        async with token_endpoint() as auth:
            auth.add_service_account(key_json(auth.token_uri))
            # The same account's email, another key: the endpoint refuses the signature.
            material = json.dumps(key_json(auth.token_uri)).encode()
            clock = Clock()
            minter = TokenMinter(clock=clock)
            for _ in range(3):
                with pytest.raises(MintingFailed) as failed:
                    await minter.token(GOOGLE, material)
                assert failed.value.reason == (
                    "the token endpoint refused the service-account key (invalid_grant)"
                )
            assert minted_by(auth)() == 1
            clock.now += RETRY_SECONDS
            with pytest.raises(MintingFailed):
                await minter.token(GOOGLE, material)
            assert minted_by(auth)() == 2

    asyncio.run(scenario())


def test_a_token_that_still_works_is_kept_while_the_endpoint_fails() -> None:
    async def scenario() -> None:
        async with token_endpoint() as auth:
            info = key_json(auth.token_uri)
            auth.add_service_account(info)
            material = json.dumps(info).encode()
            clock = Clock()
            minter = TokenMinter(clock=clock)
            held = await minter.token(GOOGLE, material)
            await auth.set_fault(Fault(status=503))
            clock.now = held.refresh_at + 1
            assert await minter.token(GOOGLE, material) == held
            clock.now = held.expires_at
            with pytest.raises(MintingFailed):
                await minter.token(GOOGLE, material)

    asyncio.run(scenario())


def test_a_token_the_provider_refused_is_minted_anew() -> None:
    async def scenario() -> None:
        async with token_endpoint() as auth:
            info = key_json(auth.token_uri)
            auth.add_service_account(info)
            material = json.dumps(info).encode()
            minter = TokenMinter()
            first = await minter.token(GOOGLE, material)
            minter.invalidate(GOOGLE, material)
            assert (await minter.token(GOOGLE, material)).token != first.token

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("token_uri", "why"),
    [
        ("http://169.254.169.254/token", "cloud metadata"),
        ("https://kubernetes.default.svc/token", "Kubernetes API server"),
    ],
)
def test_a_token_uri_where_no_backend_may_be_is_never_asked(token_uri: str, why: str) -> None:
    minter = TokenMinter(forbidden=lambda url: refusal(url, None, ANY_CLUSTER))
    with pytest.raises(MintingFailed, match=f"token_uri is refused: .*{why}"):
        asyncio.run(minter.token(GOOGLE, json.dumps(key_json(token_uri)).encode()))


def test_what_is_not_a_key_is_named_without_quoting_it() -> None:
    minter = TokenMinter()
    for material in (b"sk-not-a-key-json", json.dumps({"private_key": "sk-secret"}).encode()):
        with pytest.raises(MintingFailed) as failed:
            asyncio.run(minter.token(GOOGLE, material))
        assert "not a service-account key JSON" in failed.value.reason
        assert "sk-" not in failed.value.reason


# --- Entra ID, for Azure OpenAI


def entra_app(fake: FakeEntra, secret: str | None = SECRET) -> bytes:
    app = {"tenantId": TENANT, "clientId": CLIENT_ID, "authorityHost": fake.authority()}
    return json.dumps(app | ({"clientSecret": secret} if secret else {})).encode()


def test_an_entra_app_gets_azure_openai_tokens_and_a_wrong_secret_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with entra(tmp_path) as (fake, ca):
            # How the operator's Pod trusts a private authority's CA.
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
            minter = TokenMinter()
            minted = await minter.token(ENTRA, entra_app(fake))
            assert fake.valid(minted.token)
            with pytest.raises(MintingFailed) as failed:
                await minter.token(ENTRA, entra_app(fake, "not-the-secret"))
            assert failed.value.reason == "Entra ID refused the app's credentials (AADSTS7000215)"

    asyncio.run(scenario())


def test_without_a_secret_the_operators_workload_identity_stands_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        async with entra(tmp_path) as (fake, ca):
            monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca)
            minter = TokenMinter()
            monkeypatch.delenv("AZURE_FEDERATED_TOKEN_FILE", raising=False)
            with pytest.raises(MintingFailed, match="no workload identity"):
                await minter.token(ENTRA, entra_app(fake, None))
            # As Azure's workload identity webhook mounts it into the operator's Pod.
            token_file = tmp_path / "azure-identity-token"
            token_file.write_text(service_account_token())
            monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
            # A new operator (the failure above is believed for RETRY_SECONDS).
            minted = await TokenMinter().token(ENTRA, entra_app(fake, None))
            assert fake.valid(minted.token)
            assert "client_assertion=" in fake.requests[-1].body

    asyncio.run(scenario())


def test_an_authority_where_no_backend_may_be_is_never_asked() -> None:
    minter = TokenMinter(forbidden=lambda url: refusal(url, None, ANY_CLUSTER))
    app = {"tenantId": TENANT, "clientId": CLIENT_ID, "clientSecret": SECRET,
           "authorityHost": "https://169.254.169.254"}  # fmt: skip
    with pytest.raises(MintingFailed, match=r"authorityHost is refused: .*metadata"):
        asyncio.run(minter.token(ENTRA, json.dumps(app).encode()))
    with pytest.raises(MintingFailed, match="not an Entra ID app"):
        asyncio.run(minter.token(ENTRA, SECRET.encode()))


def test_aws_workload_identity_is_exchanged_at_sts_and_refusals_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issuer = Issuer()
    role = "arn:aws:iam::123456789012:role/switchyard-bedrock"
    subject = "system:serviceaccount:ai:bedrock-caller"

    async def scenario() -> None:
        async with FakeSTS(issuer.jwks(), issuer.issuer, {role: subject}) as sts:
            monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
            tokens = TokenMinter()
            calls: list[str] = []

            def source(account: str, audience: str = "sts.amazonaws.com") -> IdentitySource:
                async def read() -> WorkloadIdentity:
                    calls.append(account)
                    token = issuer.token("ai", account, audience=audience)
                    return WorkloadIdentity(role, token, "switchyard-ai-" + account)

                return read

            minted = await tokens.token(IRSA, b"ai/bedrock-caller", source("bedrock-caller"))
            [issued] = sts.issued
            assert minted.token.splitlines() == [
                "[default]",
                f"aws_access_key_id = {issued.access_key_id}",
                f"aws_secret_access_key = {issued.secret_access_key}",
                f"aws_session_token = {issued.session_token}",
            ]
            # Kept, and its ServiceAccount's token not asked for again, until it is due.
            assert (
                await tokens.token(IRSA, b"ai/bedrock-caller", source("bedrock-caller")) == minted
            )
            assert calls == ["bedrock-caller"]
            # Another ServiceAccount than the role trusts; a token for another audience.
            with pytest.raises(MintingFailed, match=r"STS refused .* \(AccessDenied\)$"):
                await tokens.token(IRSA, b"ai/other", source("other"))
            with pytest.raises(MintingFailed, match=r"\(InvalidIdentityToken\)$"):
                await tokens.token(IRSA, b"ai/aud", source("bedrock-caller", "switchyard"))
            assert len(sts.issued) == 1

    asyncio.run(scenario())


def test_aws_without_a_role_asks_eks_pod_identity_for_the_associations_role(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    issuer = Issuer()
    role = "arn:aws:iam::123456789012:role/switchyard-bedrock"

    async def scenario() -> None:
        associations = {("ai", "bedrock-caller"): role}
        async with FakeSTS(issuer.jwks(), issuer.issuer, {}, associations=associations) as sts:
            monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", f"{sts.url}/v1/credentials")
            tokens = TokenMinter()

            def source(account: str, audience: str = "pods.eks.amazonaws.com") -> IdentitySource:
                async def read() -> WorkloadIdentity:
                    token = issuer.token("ai", account, audience=audience)
                    return WorkloadIdentity("", token, "switchyard", f"ai/{account}")

                return read

            minted = await tokens.token(IRSA, b"ai/bedrock-caller", source("bedrock-caller"))
            [issued] = sts.issued
            assert f"aws_session_token = {issued.session_token}" in minted.token
            # The agent's credentials live 6 hours: minted again after 4, 2 before they end.
            assert abs(minted.expires_at - minted.refresh_at - 2 * 3600) < 60
            with pytest.raises(MintingFailed, match=r"^ServiceAccount ai/other has no .*HTTP 400"):
                await tokens.token(IRSA, b"ai/other", source("other"))
            with pytest.raises(MintingFailed, match=r"HTTP 400"):
                await tokens.token(IRSA, b"ai/aud", source("bedrock-caller", "sts.amazonaws.com"))

    asyncio.run(scenario())


def test_google_workload_identity_acts_as_the_annotated_account(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The operator's metadata server identity gets the gateway's account's tokens from IAM,
    where it holds roles/iam.serviceAccountTokenCreator, and is refused elsewhere."""
    operator, gateway = "op@lab.iam.gserviceaccount.com", "gw@lab.iam.gserviceaccount.com"

    async def scenario() -> None:
        auth = FakeGoogleAuth(
            metadata_account=operator, token_creators={gateway: [operator]}, port=METADATA_PORT
        )
        async with running(auth):
            monkeypatch.setenv(IAM_CREDENTIALS_ENV, auth.url)
            tokens = TokenMinter()

            def source(account: str) -> IdentitySource:
                async def read() -> WorkloadIdentity:
                    return WorkloadIdentity(account)

                return read

            minted = await tokens.token(GKE, b"ai/vertex-caller", source(gateway))
            [issued] = [t for t, i in auth.store.tokens.items() if i.subject == gateway]
            assert minted.token == issued
            with pytest.raises(MintingFailed, match=r"IAM refused \(PERMISSION_DENIED\)$"):
                await tokens.token(
                    GKE, b"ai/stranger", source("stranger@lab.iam.gserviceaccount.com")
                )

    asyncio.run(scenario())
