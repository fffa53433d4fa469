"""Fake Microsoft Entra ID: the token endpoint an app gets Azure OpenAI tokens from with the
client credentials grant, as msal (and so azure-identity) calls it.

It serves https only (azure-identity refuses an http authority), for one tenant and one app:

- `GET /{tenant}/v2.0/.well-known/openid-configuration`, the metadata msal reads first (its
  endpoints on the host the client asked; with `disable_instance_discovery=True` msal asks for
  nothing else);
- `POST /{tenant}/oauth2/v2.0/token`, form `grant_type=client_credentials`, `client_id`,
  `scope=https://cognitiveservices.azure.com/.default`, and either `client_secret`, or
  `client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer` with
  `client_assertion`: a federated token (a Kubernetes service account token, as workload
  identity mounts it), an RS256 JWT signed by a key of the federation's JWKS, with its issuer,
  subject and audience (`api://AzureADTokenExchange`), unexpired. The answer is
  `{"token_type": "Bearer", "expires_in", "ext_expires_in", "access_token"}`.

Refusals are Entra's: `{"error", "error_description": "AADSTS<code>: ...", "error_codes": [code],
"timestamp", "trace_id", "correlation_id", "error_uri"}`. A wrong secret is 401 `invalid_client`
AADSTS7000215 ("Invalid client secret provided..."); a federated token that does not match is
401 `invalid_client` (AADSTS50013 signature, AADSTS700211 issuer, AADSTS700212 audience,
AADSTS700213 subject, AADSTS700024 time); an unknown app 400 `unauthorized_client`
AADSTS700016; another scope 400 `invalid_scope` AADSTS1002012 (not `/.default`) or
`invalid_resource` AADSTS500011; an unknown tenant 400 `invalid_request` AADSTS90002.

Tokens expire after `token_lifetime` seconds; `valid(token)` says whether one works, for an
Azure OpenAI fake to take it as a bearer token (FakeProvider("AzureOpenAI", entra=...)). The
control port (FakeProvider's, whose PUT /api-key `{"apiKey": ...}` rotates the client secret)
also has the token controls (TokenStore.control_routes) and PUT /client-secret
`{"clientSecret": ...}`; an Azure OpenAI fake that takes the tokens serves them on its own
control port too, so that `switchyard fake-provider --provider AzureOpenAI --entra-...` runs
the pair with one (see serve_azure_entra_forever).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import re
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from switchyard.fakes.provider import FakeProvider, ProviderError, running
from switchyard.fakes.vertex import Jwt, TokenStore, unbase64url

CLIENT_CREDENTIALS = "client_credentials"
JWT_ASSERTION = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
COGNITIVE_SERVICES = "https://cognitiveservices.azure.com"
COGNITIVE_SCOPE = f"{COGNITIVE_SERVICES}/.default"
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


@dataclass(frozen=True)
class Federation:
    """A federated identity credential of the app: the tokens it takes as client assertions.

    jwks: the issuer's keys, `{"keys": [{"kty": "RSA", "kid", "n", "e"}, ...]}` (see rsa_jwk)."""

    issuer: str
    subject: str
    jwks: Mapping[str, Any]
    audience: str = TOKEN_EXCHANGE_AUDIENCE

    def key(self, kid: Any) -> rsa.RSAPublicKey | None:
        """The RSA key `kid` names; the only key when there is one and no kid."""
        keys = [k for k in self.jwks.get("keys", []) if k.get("kty") == "RSA"]
        if kid is not None:
            keys = [k for k in keys if k.get("kid") == kid]
        if len(keys) != 1:
            return None
        n, e = (int.from_bytes(unbase64url(keys[0][name]), "big") for name in ("n", "e"))
        return rsa.RSAPublicNumbers(e, n).public_key()


def rsa_jwk(key: rsa.RSAPublicKey, kid: str) -> dict[str, str]:
    """`key` as a JWK, as an issuer's JWKS lists it."""
    numbers = key.public_numbers()

    def encode(value: int) -> str:
        raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return {
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "kid": kid,
        "n": encode(numbers.n),
        "e": encode(numbers.e),
    }


def _base64url_json(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


class FakeEntra(FakeProvider):
    """Entra ID's token endpoint for one tenant and one app (client_id).

    client_secret: the app's secret (None: it has none). federation: its federated identity
    credential (None: none). ssl_context: required; clients must trust its certificate and
    reach it by a name the certificate carries."""

    def __init__(
        self,
        tenant: str,
        client_id: str,
        client_secret: str | None = None,
        federation: Federation | None = None,
        *,
        ssl_context: ssl.SSLContext,
        token_lifetime: int = 3599,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_requests: int | None = None,
    ) -> None:
        super().__init__(
            "OpenAI",
            api_key=client_secret or "",
            host=host,
            port=port,
            ssl_context=ssl_context,
            keep_requests=keep_requests,
        )
        self.provider = "Entra"
        self.tenant = tenant
        self.client_id = client_id
        self.federation = federation
        self.token_lifetime = token_lifetime
        self.store = TokenStore("")

    def authority(self, hostname: str = "localhost") -> str:
        """azure-identity's `authority`: the fake by a name its certificate carries."""
        return f"https://{hostname}:{self.port}"

    def valid(self, token: str) -> bool:
        """Whether `token` is an Azure OpenAI token this issued, unexpired and unrevoked."""
        return self.store.valid(token, COGNITIVE_SCOPE)

    def issue(self) -> str:
        """A token for the app, as the endpoint would issue it."""
        now = int(time.time())
        claims = {
            "aud": COGNITIVE_SERVICES,
            "iss": f"https://sts.windows.net/{self.tenant}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime,
            "appid": self.client_id,
            "tid": self.tenant,
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.client_id)),
            "jti": uuid.uuid4().hex,
        }
        header = {"typ": "JWT", "alg": "RS256", "kid": "fake-entra"}
        # Shaped as Entra's tokens are; its signature is random: only this fake checks it.
        prefix = f"{_base64url_json(header)}.{_base64url_json(claims)}."
        return self.store.issue(self.client_id, [COGNITIVE_SCOPE], self.token_lifetime, prefix)

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_fault])
        app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        app.router.add_post("/{tenant}/oauth2/v2.0/token", self._token)
        return app

    def _authenticate(self, request: web.Request) -> None:
        tenant = request.match_info.get("tenant")
        if tenant is not None and tenant != self.tenant:
            raise ProviderError(
                400,
                "invalid_request",
                f"AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the "
                "correct tenant ID and are signing into the correct cloud.",
            )

    def _error(self, error: ProviderError) -> web.Response:
        kind = error.kind
        if kind.endswith("_error"):  # a fault's kind, not OAuth's
            kind = "temporarily_unavailable" if error.status >= 500 else "invalid_request"
        code = re.match(r"AADSTS(\d+)", error.message)
        codes = [int(code.group(1))] if code else []
        trace, correlation = uuid.uuid4(), uuid.uuid4()
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        payload = {
            "error": kind,
            "error_description": f"{error.message}\r\nTrace ID: {trace}\r\n"
            f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
            "error_codes": codes,
            "timestamp": stamp,
            "trace_id": str(trace),
            "correlation_id": str(correlation),
            "error_uri": f"https://login.microsoftonline.com/error?code={codes[0] if codes else 0}",
        }
        return web.json_response(payload, status=error.status)

    async def _metadata(self, request: web.Request) -> web.Response:
        base = f"https://{request.host}/{self.tenant}"
        return web.json_response(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"https://{request.host}/{self.tenant}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "tenant_region_scope": "NA",
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def _token(self, request: web.Request) -> web.Response:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if "client_id" not in form:
            raise ProviderError(
                400,
                "invalid_request",
                "AADSTS900144: The request body must contain the following parameter: 'client_id'.",
            )
        grant = form.get("grant_type")
        if grant != CLIENT_CREDENTIALS:
            raise ProviderError(
                400,
                "unsupported_grant_type",
                f"AADSTS70003: The app requested an unsupported grant type '{grant}'.",
            )
        if form["client_id"] != self.client_id:
            raise ProviderError(
                400,
                "unauthorized_client",
                f"AADSTS700016: Application with identifier '{form['client_id']}' was not "
                f"found in the directory '{self.tenant}'. This can happen if the application "
                "has not been installed by the administrator of the tenant or consented to by "
                "any user in the tenant. You may have sent your authentication request to the "
                "wrong tenant.",
            )
        self._check_scope(form.get("scope", ""))
        if "client_secret" in form and "client_assertion" in form:
            raise ProviderError(
                400,
                "invalid_request",
                "AADSTS90027: Only one of client_secret and client_assertion may be sent.",
            )
        if "client_assertion" in form:
            self._check_assertion(form)
        elif "client_secret" in form:
            if not self.api_key or form["client_secret"] != self.api_key:
                raise ProviderError(
                    401,
                    "invalid_client",
                    "AADSTS7000215: Invalid client secret provided. Ensure the secret being "
                    "sent in the request is the client secret value, not the client secret ID, "
                    f"for a secret added to app '{self.client_id}'.",
                )
        else:
            raise ProviderError(
                401,
                "invalid_client",
                "AADSTS7000218: The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.",
            )
        return web.json_response(
            {
                "token_type": "Bearer",
                "expires_in": self.token_lifetime,
                "ext_expires_in": self.token_lifetime,
                "access_token": self.issue(),
            }
        )

    def _check_scope(self, scope: str) -> None:
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise ProviderError(
                400,
                "invalid_scope",
                f"AADSTS1002012: The provided value for scope {scope} is not valid. Client "
                "credential flows must have a scope value with /.default suffixed to the "
                "resource identifier (application ID URI).",
            )
        if scopes[0] != COGNITIVE_SCOPE:
            resource = scopes[0].removesuffix("/.default")
            raise ProviderError(
                400,
                "invalid_resource",
                f"AADSTS500011: The resource principal named {resource} was not found in the "
                f"tenant named {self.tenant}.",
            )

    def _check_assertion(self, form: dict[str, str]) -> None:
        def refuse(message: str) -> ProviderError:
            return ProviderError(401, "invalid_client", message)

        if form.get("client_assertion_type") != JWT_ASSERTION:
            raise ProviderError(
                400,
                "invalid_request",
                "AADSTS50027: client_assertion_type must be "
                f"'{JWT_ASSERTION}' with a client_assertion.",
            )
        try:
            jwt = Jwt.read(form["client_assertion"])
        except ValueError as error:
            raise refuse("AADSTS50027: JWT token is invalid or malformed.") from error
        federation = self.federation
        if federation is None:
            raise refuse(
                f"AADSTS70021: No matching federated identity record found for presented "
                f"assertion. Assertion Issuer: '{jwt.claims.get('iss')}'."
            )
        key = federation.key(jwt.header.get("kid"))
        if key is None or not jwt.signed_by(key):
            raise refuse(
                "AADSTS50013: Assertion failed signature validation. [Reason - The key was not "
                "found or the signature does not match.]"
            )
        if jwt.claims.get("iss") != federation.issuer:
            raise refuse(
                "AADSTS700211: No matching federated identity record found for presented "
                f"assertion issuer '{jwt.claims.get('iss')}'."
            )
        if federation.audience not in jwt.audiences():
            raise refuse(
                "AADSTS700212: No matching federated identity record found for presented "
                f"assertion audience '{jwt.claims.get('aud')}'."
            )
        if jwt.claims.get("sub") != federation.subject:
            raise refuse(
                "AADSTS700213: No matching federated identity record found for presented "
                f"assertion subject '{jwt.claims.get('sub')}'."
            )
        if not jwt.timely(time.time()):
            raise refuse(
                "AADSTS700024: Client assertion is not within its valid time range. Current "
                f"time: {datetime.datetime.now(datetime.UTC).isoformat()}, expiry time of "
                f"assertion: {jwt.claims.get('exp')}."
            )

    def _set_lifetime(self, seconds: int) -> None:
        self.token_lifetime = seconds

    async def _put_client_secret(self, request: web.Request) -> web.Response:
        """Rotate the app's secret, as the Azure portal does: the old one is refused."""
        self.api_key = str((await request.json())["clientSecret"])
        return web.Response(status=204)

    def token_control_routes(self, app: web.Application) -> None:
        """Add the token controls (TokenStore.control_routes) and PUT /client-secret to a
        control app: this one's, or that of an Azure OpenAI fake taking these tokens."""
        self.store.control_routes(app, self._set_lifetime)
        app.router.add_put("/client-secret", self._put_client_secret)

    def _control_app(self) -> web.Application:
        app = super()._control_app()
        self.token_control_routes(app)
        return app


async def serve_azure_entra_forever(
    entra: FakeEntra,
    azure: FakeProvider,
    control_port: int | None,
    entra_control_port: int | None = None,
) -> None:
    """Serve `entra` and `azure` (which takes its tokens) in this loop until cancelled;
    `control_port` steers Azure OpenAI and the tokens, `entra_control_port` (optional) the
    token endpoint's own faults and records. Entra starts first: Azure's control port
    answering means both are up."""
    async with running(entra, entra_control_port), running(azure, control_port):
        print(f"{azure.provider} fake provider on {azure.url}", flush=True)
        print(
            f"Entra ID token endpoint on {entra.url}/{entra.tenant}/oauth2/v2.0/token", flush=True
        )
        if control_port is not None:
            print(f"control API on http://{azure.host}:{control_port}", flush=True)
        if entra_control_port is not None:
            print(
                f"token endpoint control API on http://{entra.host}:{entra_control_port}",
                flush=True,
            )
        await asyncio.Event().wait()
