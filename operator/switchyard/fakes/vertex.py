"""Fake Google Cloud: an OAuth token endpoint that issues access tokens to service accounts
(and a GKE metadata server that issues them to a workload), and Vertex AI serving Claude and
Gemini to the holders of those tokens.

FakeGoogleAuth takes the JWT-bearer grant a service-account key makes (google-auth's
`service_account.Credentials`): `POST /token`, form
`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`. The assertion must be
RS256, signed by the key of a service account the fake knows (its `kid`, when present, that
key's `private_key_id`), with `iss` the account's email, `aud` `https://oauth2.googleapis.com/token`
(google-auth always sends that audience, wherever `token_uri` points) or the fake's own token
URI, `iat` and `exp` at most an hour apart and not expired, and `scope` including
`https://www.googleapis.com/auth/cloud-platform`. The answer is Google's:
`{"access_token": "ya29.…", "expires_in": <lifetime>, "token_type": "Bearer"}`; refusals are
400 `{"error": "invalid_grant", "error_description": "Invalid JWT Signature."}` (and
`invalid_scope`, `unsupported_grant_type`, `invalid_request`, 401 `unauthorized_client` for a
`sub` other than the account). `GET /computeMetadata/v1/instance/service-accounts/default/token`
(`Metadata-Flavor: Google` required, `X-Forwarded-For` refused, as on GKE) issues a token to
the workload's account. IAM's `POST /v1/projects/-/serviceAccounts/{email}:generateAccessToken`
(`{"scope": [...], "lifetime": "3600s"}`, a bearer token this issued) gives a token of
`email` to a caller allowed to (roles/iam.serviceAccountTokenCreator: `token_creators`), as
`{"accessToken", "expireTime"}`; else 401 UNAUTHENTICATED, or 403 PERMISSION_DENIED
"Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist)."
in Google's error format. Tokens expire after `token_lifetime` seconds; the control port
expires or revokes them at once.

FakeVertex accepts only unexpired tokens its FakeGoogleAuth issued, else 401 in Google's error
format (`{"error": {"code": 401, "message": ..., "status": "UNAUTHENTICATED"}}`). It serves:

- Claude: `POST /v1/projects/{project}/locations/{location}/publishers/anthropic/models/
  {model}:rawPredict` and `:streamRawPredict`, the Messages API body without `model` and with
  `anthropic_version` (`vertex-2023-10-16`, or `2026-10-21`, which the anthropic SDK 2.x sends),
  `stream` true exactly for streamRawPredict; checked and answered as the Anthropic fake does,
  its reply `Hello from GCPVertexAI <model> on port <port>.`, refusals in Anthropic's format
  (as Vertex passes them on). Vertex refuses the Messages fields it does not serve
  (`VERTEX_REFUSED_FIELDS`). `…/models/count-tokens:rawPredict` counts tokens (with `model`).
- Gemini through the OpenAI-compatible API: `POST /v1/projects/{project}/locations/{location}/
  endpoints/openapi/chat/completions`, model `google/<model>`, checked and answered as the
  OpenAI fake does (reply `Hello from GCPVertexAI google/<model> on port <port>.`).
- A probe that costs no tokens: `GET /v1beta1/publishers/{publisher}/models/{model}` (publisher
  `anthropic` with a Claude id as in the URL, `google` with a Gemini id without `google/`),
  `{"name": "publishers/<publisher>/models/<model>", "versionId": "001", "launchStage": "GA"}`
  for a model it serves, else 404; the token is checked as for the predict routes.

`vertex-2023-10-16` behaves as API version 2023-06-01 (sampling parameters allowed),
`2026-10-21` as that version. Everything but Claude's own refusals is answered in Google's
format: faults, 404 for a wrong project or location or a model it does not serve, and 400
`INVALID_ARGUMENT` with the OpenAI fake's message for a Gemini request it refuses.

FakeVertex's control port is FakeProvider's plus its FakeGoogleAuth's token controls
(/tokens, /tokens/expire, /tokens/revoke, /token-lifetime), so that one port steers both when
they run as `switchyard fake-provider --provider GCPVertexAI` (see serve_vertex_forever).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import secrets
import ssl
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from switchyard.fakes.provider import (
    ANTHROPIC_FIELDS,
    ANTHROPIC_STOP,
    ANTHROPIC_VERSION,
    LATEST_ANTHROPIC_VERSION,
    FakeProvider,
    ProviderError,
    _bad,
    _json_body,
    _tool_use_id,
    decide,
    read_messages_request,
    running,
)

GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# A JWT-bearer assertion may live at most this long.
MAX_ASSERTION_SECONDS = 3600
# How far the clocks of the fake and its clients may disagree.
CLOCK_SKEW_SECONDS = 300
# The anthropic_version values Vertex takes, and the API version each behaves as.
VERTEX_ANTHROPIC_VERSION = "vertex-2023-10-16"
VERTEX_ANTHROPIC_VERSIONS = {
    VERTEX_ANTHROPIC_VERSION: ANTHROPIC_VERSION,
    LATEST_ANTHROPIC_VERSION: LATEST_ANTHROPIC_VERSION,
}
# Messages API fields Vertex refuses ("Extra inputs are not permitted").
VERTEX_REFUSED_FIELDS = frozenset(
    {"output_config", "context_management", "mcp_servers", "container", "service_tier"}
)
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"  # RFC 3339, as Google writes times
GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "UNIMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
    "timeframe. Check your iat and exp values in the JWT claim."
)


# --- JSON Web Tokens


@dataclass(frozen=True)
class Jwt:
    """A compact JWS as read, not yet trusted."""

    header: dict[str, Any]
    claims: dict[str, Any]
    signed: bytes  # the header and payload as sent, which the signature covers
    signature: bytes

    @classmethod
    def read(cls, token: str) -> Jwt:
        """Raises ValueError unless `token` is three base64url parts, two of them objects."""
        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("a JWT has three parts")
        header, claims = (json.loads(unbase64url(part)) for part in parts[:2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("a JWT's header and claims are JSON objects")
        signed = f"{parts[0]}.{parts[1]}".encode()
        return cls(header, claims, signed, unbase64url(parts[2]))

    def signed_by(self, key: rsa.RSAPublicKey) -> bool:
        """Whether this is RS256, signed by `key`'s private key."""
        if self.header.get("alg") != "RS256":
            return False
        try:
            key.verify(self.signature, self.signed, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return False
        return True

    def audiences(self) -> list[str]:
        aud = self.claims.get("aud")
        return [aud] if isinstance(aud, str) else [a for a in aud or [] if isinstance(a, str)]

    def timely(self, now: float, longest: float | None = None) -> bool:
        """Whether `exp` (required), `iat` and `nbf` (optional) are numbers that put `now`
        inside the token's life, give or take the clock skew; and, with `longest`, whether
        it lives at most that long."""
        exp, iat, nbf = (self.claims.get(k) for k in ("exp", "iat", "nbf"))
        for value in (exp, iat, nbf):
            if value is not None and (
                not isinstance(value, int | float) or isinstance(value, bool)
            ):
                return False
        if exp is None or exp <= now - CLOCK_SKEW_SECONDS:
            return False
        if iat is not None and iat > now + CLOCK_SKEW_SECONDS:
            return False
        if nbf is not None and nbf > now + CLOCK_SKEW_SECONDS:
            return False
        return longest is None or (iat is not None and exp - iat <= longest)


def unbase64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as error:
        raise ValueError("not base64url") from error


def rsa_public_key(key_json: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The public key of a service-account key JSON's `private_key`."""
    private = serialization.load_pem_private_key(str(key_json["private_key"]).encode(), None)
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError("a service account's key is RSA")
    return private.public_key()


# --- issued tokens


@dataclass
class IssuedToken:
    subject: str  # whom it was issued to
    scopes: tuple[str, ...]
    expires: float  # time.time() when it stops working


class TokenStore:
    """Access tokens an issuer gave out: each valid until it expires or is revoked."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.tokens: dict[str, IssuedToken] = {}

    def issue(
        self, subject: str, scopes: Iterable[str], lifetime: float, prefix: str | None = None
    ) -> str:
        """A new token for `subject`: `prefix` (else the store's) and random characters."""
        now = time.time()
        for token in [t for t, issued in self.tokens.items() if issued.expires < now - 3600]:
            del self.tokens[token]  # long dead: forget
        token = f"{self.prefix if prefix is None else prefix}{secrets.token_urlsafe(48)}"
        self.tokens[token] = IssuedToken(subject, tuple(scopes), now + lifetime)
        return token

    def valid(self, token: str, scope: str | None = None) -> bool:
        issued = self.tokens.get(token)
        if issued is None or issued.expires <= time.time():
            return False
        return scope is None or scope in issued.scopes

    def expire(self, token: str | None = None) -> int:
        """Expire `token`, or every token: they are still known, but no longer work."""
        now = time.time()
        chosen = [token] if token is not None else list(self.tokens)
        for name in chosen:
            if name in self.tokens:
                self.tokens[name].expires = min(self.tokens[name].expires, now)
        return sum(1 for name in chosen if name in self.tokens)

    def revoke(self, token: str | None = None) -> int:
        """Forget `token`, or every token."""
        chosen = [token] if token is not None else list(self.tokens)
        return sum(1 for name in chosen if self.tokens.pop(name, None) is not None)

    def control_routes(self, app: web.Application, set_lifetime: Callable[[int], None]) -> None:
        """GET /tokens, POST /tokens/expire and /tokens/revoke (JSON `{"token": ...}` for one,
        no body for all), PUT /token-lifetime `{"seconds": n}` (for tokens issued next)."""

        async def listing(request: web.Request) -> web.Response:
            now = time.time()
            return web.json_response(
                [
                    {
                        "token": token,
                        "subject": issued.subject,
                        "scopes": list(issued.scopes),
                        "expiresIn": round(issued.expires - now, 3),
                    }
                    for token, issued in self.tokens.items()
                ]
            )

        async def which(request: web.Request) -> str | None:
            if not request.can_read_body:
                return None
            token = (await request.json()).get("token")
            return str(token) if token is not None else None

        async def expire(request: web.Request) -> web.Response:
            return web.json_response({"expired": self.expire(await which(request))})

        async def revoke(request: web.Request) -> web.Response:
            return web.json_response({"revoked": self.revoke(await which(request))})

        async def lifetime(request: web.Request) -> web.Response:
            set_lifetime(int((await request.json())["seconds"]))
            return web.Response(status=204)

        app.router.add_get("/tokens", listing)
        app.router.add_post("/tokens/expire", expire)
        app.router.add_post("/tokens/revoke", revoke)
        app.router.add_put("/token-lifetime", lifetime)


# --- the token endpoint and the metadata server


def _google_error(status: int, kind: str, message: str) -> web.Response:
    """An error as Google's APIs write it."""
    payload = {"error": {"code": status, "message": message, "status": kind}}
    return web.json_response(payload, status=status)


@dataclass(frozen=True)
class ServiceAccount:
    email: str
    key_id: str
    public_key: rsa.RSAPublicKey

    @classmethod
    def from_key(cls, key_json: Mapping[str, Any]) -> ServiceAccount:
        """From a service-account key JSON (its private key is only read for the public)."""
        return cls(
            str(key_json["client_email"]), str(key_json["private_key_id"]), rsa_public_key(key_json)
        )


class FakeGoogleAuth(FakeProvider):
    """Google's OAuth token endpoint for service accounts, and a GKE metadata server.

    service_accounts: key JSONs (as `gcloud iam service-accounts keys create` writes them) of
    the accounts it knows. metadata_account: the email of the account the metadata server
    serves as `default` (workload identity); None, no metadata tokens. token_creators: service
    account email -> the accounts that may get its tokens from IAM. token_lifetime: seconds
    an issued token lives. Faults, records and the control port are FakeProvider's; the
    control port also has /tokens, /tokens/expire, /tokens/revoke, /token-lifetime."""

    def __init__(
        self,
        service_accounts: Iterable[Mapping[str, Any]] = (),
        *,
        metadata_account: str | None = None,
        token_creators: Mapping[str, Iterable[str]] | None = None,
        token_lifetime: int = 3599,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
        keep_requests: int | None = None,
    ) -> None:
        super().__init__(
            "OpenAI",
            api_key="",
            host=host,
            port=port,
            ssl_context=ssl_context,
            keep_requests=keep_requests,
        )
        self.provider = "GoogleOAuth"
        self.accounts: dict[str, ServiceAccount] = {}
        for key_json in service_accounts:
            self.add_service_account(key_json)
        self.metadata_account = metadata_account
        self.token_creators = {k: set(v) for k, v in (token_creators or {}).items()}
        self.token_lifetime = token_lifetime
        self.store = TokenStore("ya29.")

    def add_service_account(self, key_json: Mapping[str, Any]) -> ServiceAccount:
        account = ServiceAccount.from_key(key_json)
        self.accounts[account.email] = account
        return account

    @property
    def token_uri(self) -> str:
        """What a key JSON's `token_uri` should be to get its tokens here."""
        return f"{self.url}/token"

    @property
    def metadata_host(self) -> str:
        """What GCE_METADATA_HOST should be to get workload tokens here."""
        return f"{self.host}:{self.port}"

    def valid(self, token: str, scope: str = CLOUD_PLATFORM) -> bool:
        """Whether `token` is one this issued, unexpired and unrevoked, for `scope`."""
        return self.store.valid(token, scope)

    def issue(self, email: str, scopes: Iterable[str] = (CLOUD_PLATFORM,)) -> str:
        """A token for `email`, as the endpoint would issue it."""
        return self.store.issue(email, scopes, self.token_lifetime)

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_fault])
        app.router.add_post("/token", self._token)
        app.router.add_post("/revoke", self._revoke)
        accounts = "/computeMetadata/v1/instance/service-accounts/{account}"
        app.router.add_get(f"{accounts}/token", self._metadata_token)
        app.router.add_get(f"{accounts}/", self._metadata_info)
        app.router.add_post(
            "/v1/projects/-/serviceAccounts/{target}:generateAccessToken", self._generate
        )
        return app

    async def _generate(self, request: web.Request) -> web.Response:
        """IAM Credentials' generateAccessToken, for a caller allowed to."""
        target = request.match_info["target"]
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        issued = self.store.tokens.get(token)
        # IAM takes a token scoped for it or for the whole platform (google-auth asks the
        # metadata server for the former when it impersonates).
        scoped = issued is not None and bool({CLOUD_PLATFORM, IAM_SCOPE} & set(issued.scopes))
        if (
            issued is None
            or not authorization.startswith("Bearer ")
            or not scoped
            or not self.store.valid(token)
        ):
            return _google_error(
                401, "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token,"
                " login cookie or other valid authentication credential.",
            )  # fmt: skip
        if issued.subject not in self.token_creators.get(target, set()):
            return _google_error(
                403, "PERMISSION_DENIED",
                "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may"
                " not exist).",
            )  # fmt: skip
        body = await request.json()
        scopes = body.get("scope") if isinstance(body, dict) else None
        if not isinstance(scopes, list) or not scopes:
            return _google_error(400, "INVALID_ARGUMENT", "Scope required.")
        issued_token = self.issue(target, [str(s) for s in scopes])
        expires = time.gmtime(time.time() + self.token_lifetime)
        return web.json_response(
            {
                "accessToken": issued_token,
                "expireTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", expires),
            }
        )

    def _authenticate(self, request: web.Request) -> None:
        """The grant authenticates itself."""

    def _error(self, error: ProviderError) -> web.Response:
        kind = error.kind
        if kind.endswith("_error"):  # a fault's kind, not OAuth's
            kind = "server_error" if error.status >= 500 else "invalid_request"
        payload = {"error": kind, "error_description": error.message}
        return web.json_response(payload, status=error.status)

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        grant = form.get("grant_type")
        if grant != JWT_BEARER:
            raise ProviderError(400, "unsupported_grant_type", f"Invalid grant_type: {grant}")
        assertion = form.get("assertion")
        if not assertion:
            raise ProviderError(400, "invalid_request", "Missing required parameter: assertion")
        try:
            jwt = Jwt.read(assertion)
        except ValueError as error:
            raise ProviderError(400, "invalid_grant", "Invalid JWT: malformed") from error
        account = self.accounts.get(str(jwt.claims.get("iss")))
        if account is None:
            raise ProviderError(400, "invalid_grant", "Invalid grant: account not found")
        kid = jwt.header.get("kid")
        if (kid is not None and kid != account.key_id) or not jwt.signed_by(account.public_key):
            raise ProviderError(400, "invalid_grant", "Invalid JWT Signature.")
        audiences = {GOOGLE_TOKEN_AUDIENCE, self.token_uri, f"{request.url.origin()}/token"}
        if not audiences.intersection(jwt.audiences()):
            raise ProviderError(
                400,
                "invalid_grant",
                f"Invalid JWT: Failed audience check. The right audience is "
                f"{GOOGLE_TOKEN_AUDIENCE}",
            )
        if not jwt.timely(time.time(), MAX_ASSERTION_SECONDS):
            raise ProviderError(400, "invalid_grant", SHORT_LIVED)
        subject = jwt.claims.get("sub")
        if subject is not None and subject != account.email:
            raise ProviderError(
                401,
                "unauthorized_client",
                "Client is unauthorized to retrieve access tokens using this method, or client "
                "not authorized for any of the scopes requested.",
            )
        scope = jwt.claims.get("scope")
        scopes = scope.split() if isinstance(scope, str) else []
        if CLOUD_PLATFORM not in scopes:
            raise ProviderError(
                400, "invalid_scope", "Invalid OAuth scope or ID token audience provided."
            )
        return self._grant(account.email, scopes)

    def _grant(self, email: str, scopes: Sequence[str]) -> web.Response:
        token = self.issue(email, scopes)
        return web.json_response(
            {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        )

    async def _revoke(self, request: web.Request) -> web.Response:
        """Google's revocation endpoint: `token` in the query or the form."""
        token = request.query.get("token") or (await request.post()).get("token")
        if not isinstance(token, str) or not self.store.revoke(token):
            raise ProviderError(400, "invalid_token", "Token expired or revoked")
        return web.json_response({})

    def _metadata_refusal(self, request: web.Request) -> web.Response | None:
        if request.headers.get("Metadata-Flavor") != "Google":
            return web.Response(
                status=403, text='Missing required header "Metadata-Flavor": "Google"\n'
            )
        if "X-Forwarded-For" in request.headers:
            return web.Response(status=403, text="Request denied: X-Forwarded-For is present\n")
        account = request.match_info["account"]
        if self.metadata_account is None or account not in ("default", self.metadata_account):
            return web.Response(status=404, text="Not Found\n")
        return None

    async def _metadata_token(self, request: web.Request) -> web.Response:
        refusal = self._metadata_refusal(request)
        if refusal is not None:
            return refusal
        assert self.metadata_account is not None
        scopes = request.query.get("scopes", CLOUD_PLATFORM).split(",")
        response = self._grant(self.metadata_account, scopes)
        response.headers["Metadata-Flavor"] = "Google"
        return response

    async def _metadata_info(self, request: web.Request) -> web.Response:
        refusal = self._metadata_refusal(request)
        if refusal is not None:
            return refusal
        info = {"aliases": ["default"], "email": self.metadata_account, "scopes": [CLOUD_PLATFORM]}
        return web.json_response(info, headers={"Metadata-Flavor": "Google"})

    def _set_lifetime(self, seconds: int) -> None:
        self.token_lifetime = seconds

    def token_control_routes(self, app: web.Application) -> None:
        """Add the token controls (TokenStore.control_routes) to a control app: this one's,
        or a FakeVertex's that serves for both."""
        self.store.control_routes(app, self._set_lifetime)

    def _control_app(self) -> web.Application:
        app = super()._control_app()
        self.token_control_routes(app)
        return app


# --- Vertex AI


class FakeVertex(FakeProvider):
    """Vertex AI in one project, for the tokens `auth` issues: Claude (rawPredict) and Gemini
    (the OpenAI-compatible API).

    claude_models: publisher model ids, as in the URL (`claude-sonnet-4@20250514`).
    gemini_models: model ids without the `google/` the requests carry. Faults, records and the
    control port are FakeProvider's (its /api-key does nothing here: tokens are `auth`'s); the
    control port also serves `auth`'s token controls."""

    def __init__(
        self,
        auth: FakeGoogleAuth,
        project: str,
        locations: Sequence[str] = ("us-east5",),
        claude_models: Sequence[str] = ("claude-x@20250101",),
        gemini_models: Sequence[str] = ("gemini-x",),
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        stream_chunk_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        keep_requests: int | None = None,
    ) -> None:
        super().__init__(
            "Anthropic",
            api_key="",
            models=[*claude_models, *(f"google/{model}" for model in gemini_models)],
            host=host,
            port=port,
            stream_chunk_delay=stream_chunk_delay,
            ssl_context=ssl_context,
            keep_requests=keep_requests,
        )
        self.provider = "GCPVertexAI"
        self.auth = auth
        self.project = project
        self.locations = list(locations)
        self.claude_models = list(claude_models)
        self.gemini_models = list(gemini_models)

    @property
    def base_url(self) -> str:
        """AnthropicVertex's base_url (the `/v1` of `https://{region}-aiplatform.…/v1`)."""
        return f"{self.url}/v1"

    def openai_base_url(self, location: str) -> str:
        """The openai SDK's base_url for Gemini in `location`."""
        return f"{self.base_url}/projects/{self.project}/locations/{location}/endpoints/openapi"

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_fault], client_max_size=64 * 2**20)
        location = "/v1/projects/{project}/locations/{location}"
        app.router.add_post(f"{location}/publishers/anthropic/models/{{target}}", self._claude)
        app.router.add_post(f"{location}/endpoints/openapi/chat/completions", self._gemini)
        app.router.add_get("/v1beta1/publishers/{publisher}/models/{model}", self._publisher_model)
        return app

    def _control_app(self) -> web.Application:
        app = super()._control_app()
        # One control port for the pair: a subprocess running both need not expose two.
        self.auth.token_control_routes(app)
        return app

    def _authenticate(self, request: web.Request) -> None:
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or not self.auth.valid(token):
            raise ProviderError(401, "UNAUTHENTICATED", UNAUTHENTICATED)

    def _error(self, error: ProviderError) -> web.Response:
        status = error.kind if error.kind.isupper() else GOOGLE_STATUS.get(error.status, "UNKNOWN")
        payload = {"error": {"code": error.status, "message": error.message, "status": status}}
        headers = {}
        if error.status == 401:
            headers["WWW-Authenticate"] = (
                'Bearer realm="https://accounts.google.com/", error="invalid_token"'
            )
        return web.json_response(payload, status=error.status, headers=headers)

    def _resource(self, request: web.Request) -> str:
        """`projects/{project}/locations/{location}`, if this fake serves them; else 404."""
        project, location = request.match_info["project"], request.match_info["location"]
        if project != self.project or location not in self.locations:
            raise ProviderError(
                404, "NOT_FOUND", f"Project `{project}` has no location `{location}` here."
            )
        return f"projects/{project}/locations/{location}"

    async def _publisher_model(self, request: web.Request) -> web.Response:
        """The publisher model's description: what an operator's probe reads, as it costs no
        tokens and takes the same bearer token as a prediction (the middleware checked it)."""
        publisher, model = request.match_info["publisher"], request.match_info["model"]
        served = {"anthropic": self.claude_models, "google": self.gemini_models}.get(publisher, [])
        name = f"publishers/{publisher}/models/{model}"
        if model not in served:
            raise ProviderError(404, "NOT_FOUND", f"Publisher Model `{name}` not found.")
        return web.json_response({"name": name, "versionId": "001", "launchStage": "GA"})

    # --- Claude

    async def _claude(self, request: web.Request) -> web.StreamResponse:
        resource = self._resource(request)
        model, _, method = request.match_info["target"].rpartition(":")
        if method not in ("rawPredict", "streamRawPredict"):
            raise ProviderError(404, "NOT_FOUND", f"Method `{method}` not found.")
        if model != "count-tokens" and model not in self.claude_models:
            raise ProviderError(
                404,
                "NOT_FOUND",
                f"Publisher Model `{resource}/publishers/anthropic/models/{model}` not found.",
            )
        try:
            body = await _json_body(request)
            if model == "count-tokens" and method == "rawPredict":
                return self._count(body)
            if model == "count-tokens":
                raise ProviderError(404, "not_found_error", "count-tokens has no stream")
            return await self._predict(request, body, model, method == "streamRawPredict")
        except ProviderError as error:
            return _anthropic_error(error)

    async def _predict(
        self, request: web.Request, body: dict[str, Any], model: str, streaming: bool
    ) -> web.StreamResponse:
        if "model" in body:
            raise _bad("model", "Extra inputs are not permitted")
        body, version = _vertex_body(body)
        if body.get("stream") is not True and streaming:
            raise _bad("stream", "streamRawPredict takes only streamed requests: set stream")
        if body.get("stream") is True and not streaming:
            raise _bad("stream", "a streamed request goes to streamRawPredict")
        ask = read_messages_request({**body, "model": model}, version)
        answer = decide(ask, self.reply_text(model))
        read, marked = self._prefixes.match(f"messages\0{model}", ask.pieces, ask.breakpoints)
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": _tool_use_id(), "name": name, "input": arguments}
            for name, arguments in answer.calls
        ]
        if answer.text and not answer.calls:
            content.append({"type": "text", "text": answer.text})
        message: dict[str, Any] = {
            "id": f"msg_vrtx_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            # Vertex names the model as Anthropic does: `claude-x-20250101`.
            "model": model.replace("@", "-"),
            "content": content,
            "stop_reason": ANTHROPIC_STOP[answer.finish],
            "stop_sequence": answer.stop_sequence,
            "usage": {
                "input_tokens": ask.words - marked,
                "cache_creation_input_tokens": marked - read,
                "cache_read_input_tokens": read,
                "output_tokens": answer.output_tokens,
            },
        }
        if streaming:
            return await self._stream_messages(request, message)
        return web.json_response(message)

    def _count(self, body: dict[str, Any]) -> web.Response:
        body, version = _vertex_body(body)
        model = body.get("model")
        ask = read_messages_request(body, version, counting=True)
        if model not in self.claude_models:
            raise ProviderError(404, "not_found_error", f"model: {model}")
        return web.json_response({"input_tokens": ask.words})

    # --- Gemini

    async def _gemini(self, request: web.Request) -> web.StreamResponse:
        resource = self._resource(request)
        body = await _json_body(request)
        model = body.get("model")
        if (
            not isinstance(model, str)
            or model not in self.models
            or not model.startswith("google/")
        ):
            raise ProviderError(
                404,
                "NOT_FOUND",
                f"Publisher Model `{resource}/publishers/google/models/"
                f"{str(model).removeprefix('google/')}` not found.",
            )
        return await self._complete(request, "chat/completions", None)


async def serve_vertex_forever(
    auth: FakeGoogleAuth,
    vertex: FakeVertex,
    control_port: int | None,
    auth_control_port: int | None = None,
) -> None:
    """Serve `auth` and `vertex` (which uses it) in this loop until cancelled; `control_port`
    steers Vertex and the tokens, `auth_control_port` (optional) the token endpoint's own
    faults and records. The auth starts first: Vertex's control port answering means both
    are up."""
    async with running(auth, auth_control_port), running(vertex, control_port):
        print(f"{vertex.provider} fake provider on {vertex.url}", flush=True)
        print(f"Google OAuth token endpoint on {auth.token_uri}", flush=True)
        if control_port is not None:
            print(f"control API on http://{vertex.host}:{control_port}", flush=True)
        if auth_control_port is not None:
            print(
                f"token endpoint control API on http://{auth.host}:{auth_control_port}", flush=True
            )
        await asyncio.Event().wait()


def _vertex_body(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The Messages API body in a Vertex request, without anthropic_version, and the API
    version it asks for."""
    if "anthropic_version" not in body:
        raise _bad("anthropic_version", "Field required")
    version = body["anthropic_version"]
    if version not in VERTEX_ANTHROPIC_VERSIONS:
        listed = " or ".join(f"'{name}'" for name in VERTEX_ANTHROPIC_VERSIONS)
        raise _bad("anthropic_version", f"Input should be {listed}")
    for key in body:
        if key in VERTEX_REFUSED_FIELDS or (
            key not in ANTHROPIC_FIELDS and key != "anthropic_version"
        ):
            raise _bad(key, "Extra inputs are not permitted")
    rest = {key: value for key, value in body.items() if key != "anthropic_version"}
    return rest, VERTEX_ANTHROPIC_VERSIONS[version]


def _anthropic_error(error: ProviderError) -> web.Response:
    """Claude's own refusal, passed on by Vertex as Anthropic wrote it."""
    ident = f"req_vrtx_{uuid.uuid4().hex[:24]}"
    payload = {
        "type": "error",
        "error": {"type": error.kind, "message": error.message},
        "request_id": ident,
    }
    return web.json_response(payload, status=error.status, headers={"request-id": ident})
