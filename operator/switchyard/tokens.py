"""Access tokens minted from the keys in Secrets, for providers that take a short-lived token
rather than the key itself (`providers.Exchange`), with the vendors' own libraries.

A Vertex AI backend's Secret holds a service-account key JSON. The operator exchanges it
with google-auth (a JWT bearer grant at the key's `token_uri`) for an access token that
lives about an hour, and writes only that token into the gateway's credentials Secret; the
private key never leaves the operator. An Azure OpenAI backend with Entra ID holds an app's
tenant, client id and secret, exchanged with azure-identity (client credentials grant) the
same way; without a secret, the operator's own workload identity (the federated token file
AZURE_FEDERATED_TOKEN_FILE names) stands in for it.

A Bedrock or Vertex AI backend with no Secret uses its gateway's workload identity, which
the shell reads from the gateway's data-plane ServiceAccount (`WorkloadIdentity`). On AWS,
a token for that ServiceAccount is exchanged with botocore at STS (AssumeRoleWithWebIdentity,
as IRSA does) for the temporary credentials of the IAM role annotated on it, or, with no role
annotated, at the node's EKS Pod Identity agent for those of the role its Pod Identity
association names; the data plane gets them as a shared-credentials file. On Google Cloud,
the operator's own workload identity (the GKE metadata server) asks IAM, with google-auth,
for access tokens of the service account annotated on it (generateAccessToken).

A token is minted again once two thirds of its life has passed, which leaves the kubelet
ample time to bring the new one into the Pods while the old one still works. A failed
exchange is remembered for a while, so that a bad key costs the token endpoint one request
per `RETRY_SECONDS`, not one per pass and probe.

Reasons given for a failure name the token endpoint's error code, never the key or the
endpoint's whole answer.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from azure.core.exceptions import AzureError, ClientAuthenticationError
from azure.identity import ClientSecretCredential, WorkloadIdentityCredential
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, MetadataRetrievalError
from botocore.session import get_session
from botocore.utils import ContainerMetadataFetcher
from google.auth import compute_engine, impersonated_credentials
from google.auth import exceptions as google_exceptions
from google.auth.transport.requests import Request
from google.oauth2 import service_account

from switchyard.providers import Exchange

GOOGLE_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
MINT_TIMEOUT_SECONDS = 10.0
# The share of a token's life after which it is minted again.
REFRESH_AFTER = 2 / 3
# How long a failed exchange is believed before the token endpoint is asked again.
RETRY_SECONDS = 30.0


@dataclass(frozen=True)
class Minted:
    token: str
    expires_at: float  # seconds since the epoch
    refresh_at: float


class MintingFailed(Exception):
    """The key could not be exchanged; `reason` is fit for a status and a log line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _TimedRequest(Request):
    """google-auth's requests transport, with a timeout (its default is two minutes)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", MINT_TIMEOUT_SECONDS)
        return super().__call__(*args, **kwargs)  # type: ignore[no-untyped-call]


# Why the operator may not connect to a URL (a metadata service, the API server), or None.
Forbidden = Callable[[str], str | None]


def _google_service_account(material: bytes, now: float, forbidden: Forbidden) -> Minted:
    try:
        info = json.loads(material)
        credentials = service_account.Credentials.from_service_account_info(  # type: ignore[no-untyped-call]
            info, scopes=GOOGLE_SCOPES
        )
    except (ValueError, TypeError, KeyError, AttributeError):
        raise MintingFailed(
            "the Secret's value is not a service-account key JSON (type service_account, with "
            "client_email, private_key and token_uri)"
        ) from None
    # The key JSON names where it is exchanged: whoever writes the Secret chooses where the
    # operator connects, so the places no backend may be are no token endpoint either.
    if why := forbidden(str(info["token_uri"])):
        raise MintingFailed(f"the service-account key's token_uri is refused: {why}")
    return _google_token(
        credentials,
        now,
        lambda error: f"the token endpoint refused the service-account key ({_oauth_error(error)})",
        "the service-account key's token_uri did not answer",
    )


def _google_token(
    credentials: Any,
    now: float,
    refused: Callable[[google_exceptions.RefreshError], str],
    unanswered: str,
) -> Minted:
    """google-auth's credentials refreshed into a token, or why not, in the caller's words."""
    try:
        credentials.refresh(_TimedRequest())
    except google_exceptions.RefreshError as error:
        raise MintingFailed(refused(error)) from None
    except google_exceptions.TransportError:
        raise MintingFailed(unanswered) from None
    return _minted(str(credentials.token), _google_expiry(credentials), now)


def _minted(token: str, expires: float | None, now: float) -> Minted:
    """A token that stops working at `expires` (seconds since the epoch by the wall clock;
    None: in an hour), timed by the minter's clock, which may be another."""
    lifetime = expires - time.time() if expires is not None else 3600
    return Minted(token, now + lifetime, now + lifetime * REFRESH_AFTER)


def _google_expiry(credentials: Any) -> float | None:
    """google-auth's expiry: a naive datetime in UTC."""
    expiry: datetime.datetime | None = credentials.expiry
    return expiry.replace(tzinfo=datetime.UTC).timestamp() if expiry else None


def _oauth_error(error: google_exceptions.RefreshError) -> str:
    """The OAuth error code of a refused grant (`invalid_grant`), or that there was none."""
    details = error.args[1] if len(error.args) > 1 else None
    code = details.get("error") if isinstance(details, dict) else None
    return code if isinstance(code, str) and code.replace("_", "").isalnum() else "refused"


AZURE_OPENAI_SCOPE = "https://cognitiveservices.azure.com/.default"
AZURE_AUTHORITY = "https://login.microsoftonline.com"
ENTRA_FORMAT = (
    'the Secret\'s value is not an Entra ID app as JSON ({"tenantId", "clientId", and '
    '"clientSecret" unless the operator\'s workload identity stands in for it})'
)


def _entra_id(material: bytes, now: float, forbidden: Forbidden) -> Minted:
    try:
        app = json.loads(material)
        tenant, client = str(app["tenantId"]), str(app["clientId"])
        secret = app.get("clientSecret")
        authority = str(app.get("authorityHost") or AZURE_AUTHORITY)
    except (ValueError, TypeError, KeyError, AttributeError):
        raise MintingFailed(ENTRA_FORMAT) from None
    if why := forbidden(authority):
        raise MintingFailed(f"the Entra ID app's authorityHost is refused: {why}")
    # The authority is the one the Secret names: no discovery through the public cloud.
    options: dict[str, Any] = {"authority": authority, "disable_instance_discovery": True}
    credential: ClientSecretCredential | WorkloadIdentityCredential
    if secret:
        credential = ClientSecretCredential(tenant, client, str(secret), **options)
    elif token_file := os.environ.get("AZURE_FEDERATED_TOKEN_FILE"):
        credential = WorkloadIdentityCredential(
            tenant_id=tenant, client_id=client, token_file_path=token_file, **options
        )
    else:
        raise MintingFailed(
            "the Entra ID app has no clientSecret, and the operator has no workload identity "
            "(AZURE_FEDERATED_TOKEN_FILE) to stand in for it"
        )
    try:
        with credential:
            token = credential.get_token(AZURE_OPENAI_SCOPE)
    except ClientAuthenticationError as error:
        # Only the AADSTS code: Entra's description may quote the app's identifiers.
        code = re.search(r"AADSTS\d+", str(error))
        raise MintingFailed(
            f"Entra ID refused the app's credentials ({code.group() if code else 'refused'})"
        ) from None
    except AzureError:
        raise MintingFailed("the Entra ID authority did not answer") from None
    return _minted(token.token, token.expires_on, now)


@dataclass(frozen=True)
class WorkloadIdentity:
    """A gateway's workload identity, ready to exchange: whom it acts as (an IAM role's ARN,
    a Google service account's email; none: EKS Pod Identity's association decides) and,
    where one is needed, a token that proves it; `account` names its ServiceAccount."""

    principal: str
    token: str = ""
    session_name: str = ""
    account: str = ""


# Reads a workload identity (and requests a fresh token for it); raises MintingFailed.
IdentitySource = Callable[[], Awaitable[WorkloadIdentity]]
# botocore logs whole requests and answers at DEBUG: the web identity token and the
# credentials STS returns must never reach a log line, whatever the operator's verbosity.
logging.getLogger("botocore").setLevel(logging.WARNING)
# STS's own default; a role may allow up to 12 hours, never less than this.
WEB_IDENTITY_SECONDS = 3600


# Where the node's EKS Pod Identity agent answers, as botocore finds it in a Pod.
EKS_POD_IDENTITY_URI = "http://169.254.170.23/v1/credentials"


def _aws_workload_identity(identity: WorkloadIdentity, now: float) -> Minted:
    if identity.principal:
        return _aws_web_identity(identity, now)
    # EKS Pod Identity, as a Pod's SDK asks the agent on its node (the operator's node here,
    # AWS_CONTAINER_CREDENTIALS_FULL_URI naming another), with its ServiceAccount's token.
    uri = os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") or EKS_POD_IDENTITY_URI
    try:
        answer = ContainerMetadataFetcher().retrieve_full_uri(
            uri, headers={"Authorization": identity.token}
        )
        credentials = {
            "AccessKeyId": answer["AccessKeyId"],
            "SecretAccessKey": answer["SecretAccessKey"],
            "SessionToken": answer["Token"],
            "Expiration": datetime.datetime.fromisoformat(answer["Expiration"]),
        }
    except (MetadataRetrievalError, ValueError, KeyError, TypeError) as error:
        status = re.search(r"non 200 response (\d+)", str(error))
        raise MintingFailed(
            f"ServiceAccount {identity.account} has no eks.amazonaws.com/role-arn annotation "
            "(IRSA), and EKS Pod Identity gave it no credentials"
            + (f" (HTTP {status.group(1)}: is it in a Pod Identity association?)" if status else "")
        ) from None
    return _temporary_credentials(credentials, now)


def _temporary_credentials(credentials: Mapping[str, Any], now: float) -> Minted:
    """AWS temporary credentials as a shared-credentials file, minted again when due."""
    text = (
        "[default]\n"
        f"aws_access_key_id = {credentials['AccessKeyId']}\n"
        f"aws_secret_access_key = {credentials['SecretAccessKey']}\n"
        f"aws_session_token = {credentials['SessionToken']}\n"
    )
    return _minted(text, credentials["Expiration"].timestamp(), now)


def _aws_web_identity(identity: WorkloadIdentity, now: float) -> Minted:
    # STS's endpoint is the operator's to configure (AWS_REGION, AWS_ENDPOINT_URL_STS), as
    # for any AWS SDK: nothing in a Secret or a spec chooses it.
    client = get_session().create_client(
        "sts",
        region_name=os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        config=Config(
            signature_version=UNSIGNED,  # the token is the proof: the call is not signed
            connect_timeout=MINT_TIMEOUT_SECONDS,
            read_timeout=MINT_TIMEOUT_SECONDS,
            retries={"max_attempts": 2},
        ),
    )
    try:
        answer = client.assume_role_with_web_identity(
            RoleArn=identity.principal,
            RoleSessionName=identity.session_name,
            WebIdentityToken=identity.token,
            DurationSeconds=WEB_IDENTITY_SECONDS,
        )
    except ClientError as error:
        code = str(error.response.get("Error", {}).get("Code") or "refused")
        raise MintingFailed(
            f"STS refused the workload identity for {identity.principal} ({code})"
        ) from None
    except BotoCoreError:
        raise MintingFailed("STS did not answer") from None
    finally:
        client.close()
    return _temporary_credentials(answer["Credentials"], now)


# Where IAM's generateAccessToken is, when not Google's public endpoint (Private Service
# Connect): `<base>/v1/projects/-/serviceAccounts/<email>:generateAccessToken`.
IAM_CREDENTIALS_ENV = "SWITCHYARD_IAM_CREDENTIALS_URL"


def _google_workload_identity(identity: WorkloadIdentity, now: float) -> Minted:
    # The operator's own Google identity: the metadata server of the node it runs on (GKE's,
    # for its Kubernetes ServiceAccount), which must hold roles/iam.serviceAccountTokenCreator
    # on the service account the gateway acts as.
    base = os.environ.get(IAM_CREDENTIALS_ENV)
    endpoint = (
        f"{base.rstrip('/')}/v1/projects/-/serviceAccounts/{identity.principal}:generateAccessToken"
        if base
        else None
    )
    credentials = impersonated_credentials.Credentials(
        source_credentials=compute_engine.Credentials(),  # type: ignore[no-untyped-call]
        target_principal=identity.principal,
        target_scopes=list(GOOGLE_SCOPES),
        lifetime=3600,
        iam_endpoint_override=endpoint,
    )
    return _google_token(
        credentials,
        now,
        lambda error: f"no access token for {identity.principal}: {_google_refusal(error)}",
        "the metadata server or IAM did not answer",
    )


def _google_refusal(error: google_exceptions.RefreshError) -> str:
    """Who refused, and the status it gave (PERMISSION_DENIED), never the answer whole."""
    text = str(error)
    status = re.search(r'"status":\s*"([A-Z_]+)"', text)
    if "metadata" in text.lower() and status is None:
        return (
            "the metadata server gave the operator no token (is it on GKE with workload identity?)"
        )
    return f"IAM refused ({status.group(1) if status else 'refused'})"


_WORKLOAD_MINTERS: dict[Exchange, Callable[[WorkloadIdentity, float], Minted]] = {
    Exchange.AWS_WORKLOAD_IDENTITY: _aws_workload_identity,
    Exchange.GOOGLE_WORKLOAD_IDENTITY: _google_workload_identity,
}


def is_workload_identity(exchange: Exchange | None) -> bool:
    return exchange in _WORKLOAD_MINTERS


_MINTERS: dict[Exchange, Callable[[bytes, float, Forbidden], Minted]] = {
    Exchange.GOOGLE_SERVICE_ACCOUNT: _google_service_account,
    Exchange.ENTRA_ID: _entra_id,
}

_Key = tuple[Exchange, str]


class TokenMinter:
    """Tokens by the key they are minted from, each minted once at a time, in a thread
    (google-auth blocks)."""

    def __init__(
        self, forbidden: Forbidden = lambda url: None, clock: Callable[[], float] = time.time
    ) -> None:
        self._forbidden = forbidden
        self._clock = clock
        self._minted: dict[_Key, Minted] = {}
        self._failed: dict[_Key, tuple[str, float]] = {}
        self._locks: dict[_Key, asyncio.Lock] = {}

    @staticmethod
    def key(exchange: Exchange, material: bytes) -> _Key:
        return exchange, hashlib.sha256(material).hexdigest()

    async def token(
        self, exchange: Exchange, material: bytes, identity: IdentitySource | None = None
    ) -> Minted:
        """A token for `material` with time left, minting one when it is due. Raises
        MintingFailed; a token that still works is kept while the endpoint refuses.
        For a workload identity, `material` names it and `identity` reads it."""
        key = self.key(exchange, material)
        async with self._locks.setdefault(key, asyncio.Lock()):
            now = self._clock()
            held = self._minted.get(key)
            if held is not None and now < held.refresh_at:
                return held
            failed = self._failed.get(key)
            if failed is None or now >= failed[1]:
                try:
                    minted = await self._mint(exchange, material, identity, now)
                except MintingFailed as error:
                    failed = (error.reason, now + RETRY_SECONDS)
                    self._failed[key] = failed
                else:
                    self._failed.pop(key, None)
                    self._minted[key] = minted
                    return minted
            if held is not None and now < held.expires_at:
                return held
            raise MintingFailed(failed[0])

    async def _mint(
        self, exchange: Exchange, material: bytes, identity: IdentitySource | None, now: float
    ) -> Minted:
        if exchange in _WORKLOAD_MINTERS:
            if identity is None:
                raise MintingFailed("no workload identity to exchange")
            return await asyncio.to_thread(_WORKLOAD_MINTERS[exchange], await identity(), now)
        return await asyncio.to_thread(_MINTERS[exchange], material, now, self._forbidden)

    def invalidate(self, exchange: Exchange, material: bytes) -> None:
        """The provider refused a token minted from `material`: mint anew next time."""
        key = self.key(exchange, material)
        self._minted.pop(key, None)
        self._failed.pop(key, None)
