"""The interface every provider module fills in."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum

from switchyard.providers import aws_signature


class ClientApi(StrEnum):
    """The two chat APIs clients speak, by the name the data plane uses for them."""

    OPENAI = "openai"  # POST /v1/chat/completions
    ANTHROPIC = "anthropic"  # POST /v1/messages


# The Messages API's version, sent with every request to a provider that speaks it.
ANTHROPIC_VERSION = "2023-06-01"
# Headers every request in an API carries, whoever serves it (unless the provider says
# otherwise: `Provider.headers`).
API_HEADERS: dict[ClientApi, dict[str, str]] = {
    ClientApi.OPENAI: {},
    ClientApi.ANTHROPIC: {"anthropic-version": ANTHROPIC_VERSION},
}
# Each client API's chat call, after the `/v1` a provider's path base replaces.
API_PATHS = {ClientApi.OPENAI: "/chat/completions", ClientApi.ANTHROPIC: "/messages"}


class Exchange(StrEnum):
    """How a backend's Secret value becomes what it sends, when it is not sent as it is."""

    # A service-account key JSON, exchanged for a short-lived OAuth access token (JWT
    # bearer grant at the key's token_uri); only the token reaches the data plane.
    GOOGLE_SERVICE_ACCOUNT = "GoogleServiceAccount"
    # An Entra ID app's credentials (tenant, client, secret or the operator's federated
    # token), exchanged for an Azure OpenAI access token (client credentials grant).
    ENTRA_ID = "EntraID"
    # No Secret: the gateway's data-plane ServiceAccount, whose token the operator requests
    # (audience sts.amazonaws.com) and exchanges with STS AssumeRoleWithWebIdentity for the
    # temporary credentials of the IAM role annotated on it, as IRSA does.
    AWS_WORKLOAD_IDENTITY = "AWSWorkloadIdentity"
    # No Secret: the Google service account annotated on the gateway's data-plane
    # ServiceAccount (iam.gke.io/gcp-service-account), whose access tokens the operator asks
    # IAM for (generateAccessToken) as its own workload identity (the GKE metadata server).
    GOOGLE_WORKLOAD_IDENTITY = "GoogleWorkloadIdentity"


@dataclass(frozen=True)
class Auth:
    """How a provider takes an API key: `header: prefix + key`."""

    header: str
    prefix: str = ""

    def headers(self, key: str | None) -> dict[str, str]:
        return {self.header: self.prefix + key} if key else {}


BEARER = Auth("authorization", "Bearer ")


@dataclass(frozen=True)
class Placement:
    """Where one backend's model lives, as its spec says: what a provider names its paths by.

    url_path: the backend URL's path, without a trailing slash."""

    url_path: str
    model: str
    api_version: str | None = None
    project: str | None = None
    region: str | None = None


@dataclass(frozen=True)
class ChatCall:
    """A chat call whose path names the model and whether it streams (`path_base` + one of
    these), its body naming no model."""

    whole: str
    streamed: str


@dataclass(frozen=True)
class Provider:
    """One provider's terms.

    api: the chat API it serves natively; None: neither (it is reached through `converse`).
    auth: how it takes the key.
    path_base: what replaces a client path's leading `/v1`.
    probe_path: the cheap, token-free read a probe makes, under the backend URL.
    query: the query string every request carries.
    other_apis: whether it serves OpenAI's other endpoints (embeddings, completions, ...).
    headers: what every request to it carries besides the key; None: its API's headers.
    chat_call: when the chat call's path names the model instead of the body.
    body_fields: top-level fields every chat request body to it carries (None: never).
    exchange: how the Secret's value becomes the key it takes; None: sent as it is.
    signing: the AWS service whose SigV4 signature each request carries, its key an AWS
      shared-credentials file; None: the key goes in `auth`'s header.
    probe_body: the probe's JSON body (a POST), when a read needs one; None: a GET.
    converse: Bedrock's Converse calls (path_base + one of these), through which a client
      whose API it does not serve natively is served; None: translated to `api`.
    cloud_errors: it answers errors in its cloud's format ({"message": ...}), not its API's,
      so the data plane rewrites them into the client's.
    workload_identity: how a backend with no Secret authenticates, as its gateway's workload
      identity; None: it needs a Secret.
    """

    name: str
    api: ClientApi | None
    auth: Auth
    path_base: Callable[[Placement], str]
    probe_path: Callable[[Placement], str]
    query: Callable[[Placement], str] = field(default=lambda placement: "")
    other_apis: bool = True
    headers: Mapping[str, str] | None = None
    chat_call: ChatCall | None = None
    body_fields: Mapping[str, str | None] = field(default_factory=dict)
    exchange: Exchange | None = None
    signing: str | None = None
    probe_body: bytes | None = None
    converse: ChatCall | None = None
    cloud_errors: bool = False
    workload_identity: Exchange | None = None

    @property
    def request_headers(self) -> Mapping[str, str]:
        if self.headers is not None:
            return self.headers
        return API_HEADERS[self.api] if self.api is not None else {}

    def probe(self, url: str, placement: Placement, key: str | None) -> ProbeRequest:
        """The cheap, token-free request that proves the provider answers and takes the key,
        authenticated as the data plane authenticates."""
        headers = dict(self.request_headers)
        method = "GET" if self.probe_body is None else "POST"
        if self.probe_body is not None:
            headers["content-type"] = "application/json"
        request = ProbeRequest(method, url + self.probe_path(placement), headers, self.probe_body)
        if self.signing is None:
            return replace(request, headers={**headers, **self.auth.headers(key)})
        if key is None:
            return request
        signature = aws_signature.sign(request, key, placement.region or "", self.signing)
        return replace(request, headers={**headers, **signature})


@dataclass(frozen=True)
class ProbeRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class Family:
    """A provider name whose terms depend on the backend: on the model it names (Vertex AI:
    Claude on Anthropic's Messages API, the rest on OpenAI's) or on its `authentication`
    (Azure OpenAI: a key, or Entra ID tokens)."""

    name: str
    variant: Callable[[str, str], Provider]  # (model, authentication) -> terms
