"""A fake AWS STS that serves AssumeRoleWithWebIdentity as IRSA and EKS Pod Identity use it:
an unsigned form POST (Action, Version, RoleArn, RoleSessionName, WebIdentityToken,
DurationSeconds) answered in STS's XML.

The web identity token must be an RS256 JWT signed by a key of the JWKS the fake is given, from
the issuer it is given (an OIDC provider registered in the account), for the audience
`sts.amazonaws.com` (the `aud` claim a string or a list holding it), with `exp` in the future
and `nbf` not after now. Refusals are STS's, as XML `<ErrorResponse><Error><Type>Sender</Type>
<Code>...</Code><Message>...</Message></Error><RequestId>...</RequestId></ErrorResponse>`:
- a token that is not a JWT, or whose signature does not verify: 400 InvalidIdentityToken;
- another issuer: 400 InvalidIdentityToken "No OpenIDConnect provider found in your account
  for <iss>"; another audience: 400 InvalidIdentityToken "Incorrect token audience";
- expired: 400 ExpiredTokenException "Token expired: current date/time <now> must be before
  the expiration date/time <exp>";
- a role it does not know, or whose trust allows another subject: 403 AccessDenied "Not
  authorized to perform sts:AssumeRoleWithWebIdentity";
- a malformed RoleArn: 400 ValidationError "Request ARN is invalid"; a missing parameter, a bad
  RoleSessionName or DurationSeconds outside 900..43200: 400 ValidationError in AWS's
  `1 validation error detected: ...` words; over the role's maximum session (3600 s by
  default): 400 ValidationError; another Action or Version: 400 InvalidAction.

It is also an EKS Pod Identity agent: `GET /v1/credentials` with the ServiceAccount token
(audience `pods.eks.amazonaws.com`, from the same issuer) as the whole `Authorization` header,
answered for the role of that ServiceAccount's Pod Identity association (`associations`) as
the agent answers a Pod: `{"AccessKeyId", "SecretAccessKey", "Token", "AccountId",
"Expiration"}`, credentials that live 6 hours. A token that does not verify: 400; a
ServiceAccount with no association: 400 with EKS Auth's ResourceNotFoundException message.

The credentials it issues (`ASIA...` key id, a secret and a session token, expiring after
DurationSeconds, 3600 by default) are registered with each FakeBedrock it was given, so that
requests signed with them verify there, session token required.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import string
import time
import uuid
from collections.abc import Iterable
from typing import Any, Protocol
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from switchyard.fakes.bedrock import AwsCredentials, FakeBedrock

AUDIENCE = "sts.amazonaws.com"
POD_IDENTITY_AUDIENCE = "pods.eks.amazonaws.com"
POD_IDENTITY_SECONDS = 6 * 3600
VERSION = "2011-06-15"
NAMESPACE = f"https://sts.amazonaws.com/doc/{VERSION}/"
ROLE_ARN = re.compile(r"arn:aws:iam::(\d{12}):role/((?:[\w+=,.@-]+/)*)([\w+=,.@-]{1,64})")
SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
MIN_DURATION, MAX_DURATION = 900, 43200


class StsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class TakesCredentials(Protocol):
    """A Bedrock fake, in this process or behind its control port."""

    def add_credentials(self, credentials: AwsCredentials) -> None: ...


class FakeSTS:
    """AssumeRoleWithWebIdentity on one port.

    jwks: the issuer's public keys (a JWKS, as JSON or parsed).
    roles: role ARN -> the token subject its trust policy allows (None: any subject).
    bedrocks: the fakes that are to accept the credentials issued.
    associations: (namespace, ServiceAccount) -> the role EKS Pod Identity gives it.
    """

    def __init__(
        self,
        jwks: str | dict[str, Any],
        issuer: str,
        roles: dict[str, str | None],
        bedrocks: Iterable[FakeBedrock | TakesCredentials] = (),
        max_session: int = 3600,
        host: str = "127.0.0.1",
        port: int = 0,
        associations: dict[tuple[str, str], str] | None = None,
    ) -> None:
        self.associations = dict(associations or {})
        self.keys = _public_keys(json.loads(jwks) if isinstance(jwks, str) else jwks)
        self.issuer = issuer
        self.roles = roles
        self.bedrocks = list(bedrocks)
        self.max_session = max_session
        self.host, self.port = host, port
        self.issued: list[AwsCredentials] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self._handle)
        app.router.add_get("/v1/credentials", self._pod_identity)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        if self.port == 0:
            self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> FakeSTS:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        ident = str(uuid.uuid4())
        form = dict(parse_qsl((await request.read()).decode(errors="replace")))
        try:
            body = self._assume(form, ident)
            status = 200
        except StsError as error:
            status = error.status
            body = (
                f'<ErrorResponse xmlns="{NAMESPACE}">\n  <Error>\n    <Type>Sender</Type>\n'
                f"    <Code>{error.code}</Code>\n    <Message>{escape(error.message)}</Message>\n"
                f"  </Error>\n  <RequestId>{ident}</RequestId>\n</ErrorResponse>\n"
            )
        return web.Response(
            text=body,
            status=status,
            content_type="text/xml",
            headers={"x-amzn-RequestId": ident},
        )

    async def _pod_identity(self, request: web.Request) -> web.Response:
        try:
            claims = self._verify(request.headers.get("Authorization", ""), POD_IDENTITY_AUDIENCE)
        except StsError as error:
            return web.json_response({"message": error.message}, status=400)
        subject = str(claims.get("sub", ""))
        namespace, _, account = subject.removeprefix("system:serviceaccount:").partition(":")
        role = self.associations.get((namespace, account))
        if role is None:
            message = (
                "ResourceNotFoundException: No Pod Identity Association found for "
                f"namespace {namespace} and service account {account}"
            )
            return web.json_response({"message": message}, status=400)
        credentials = self._issue(POD_IDENTITY_SECONDS)
        return web.json_response(
            {
                "AccessKeyId": credentials.access_key_id,
                "SecretAccessKey": credentials.secret_access_key,
                "Token": credentials.session_token,
                "AccountId": role.split(":")[4],
                "Expiration": time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime(credentials.expires or 0)
                ),
            }
        )

    def _issue(self, duration: int) -> AwsCredentials:
        """New temporary credentials, accepted by the Bedrock fakes from now on."""
        credentials = AwsCredentials(
            access_key_id="ASIA" + _random(string.ascii_uppercase + string.digits, 16),
            secret_access_key=_random(string.ascii_letters + string.digits + "+/", 40),
            session_token=base64.b64encode(secrets.token_bytes(96)).decode(),
            expires=time.time() + duration,
        )
        self.issued.append(credentials)
        for bedrock in self.bedrocks:
            bedrock.add_credentials(credentials)
        return credentials

    def _assume(self, form: dict[str, str], ident: str) -> str:
        action = form.get("Action")
        if action != "AssumeRoleWithWebIdentity" or form.get("Version") != VERSION:
            raise StsError(
                400,
                "InvalidAction",
                f"Could not find operation {action} for version {form.get('Version')}",
            )
        for name in ("RoleArn", "RoleSessionName", "WebIdentityToken"):
            if not form.get(name):
                raise _validation(name, "Member must not be null", None)
        role_arn, session = form["RoleArn"], form["RoleSessionName"]
        if not SESSION_NAME.fullmatch(session):
            raise _validation(
                "RoleSessionName",
                r"Member must satisfy regular expression pattern: [\w+=,.@-]*",
                session,
            )
        duration = 3600
        if "DurationSeconds" in form:
            try:
                duration = int(form["DurationSeconds"])
            except ValueError as error:
                raise _validation(
                    "DurationSeconds", "Member must be an integer", form["DurationSeconds"]
                ) from error
            if duration < MIN_DURATION:
                raise _validation(
                    "DurationSeconds",
                    f"Member must have value greater than or equal to {MIN_DURATION}",
                    duration,
                )
            if duration > MAX_DURATION:
                raise _validation(
                    "DurationSeconds",
                    f"Member must have value less than or equal to {MAX_DURATION}",
                    duration,
                )
        arn = ROLE_ARN.fullmatch(role_arn)
        if arn is None:
            raise StsError(400, "ValidationError", "Request ARN is invalid")
        claims = self._verify(form["WebIdentityToken"])
        subject = str(claims.get("sub", ""))
        if role_arn not in self.roles or self.roles[role_arn] not in (None, subject):
            raise StsError(
                403, "AccessDenied", "Not authorized to perform sts:AssumeRoleWithWebIdentity"
            )
        if duration > self.max_session:
            raise StsError(
                400,
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            )
        now = time.time()
        credentials = self._issue(duration)
        account, role = arn.group(1), arn.group(3)
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + duration))
        role_id = "AROA" + _random(string.ascii_uppercase + string.digits, 17)
        return (
            f'<AssumeRoleWithWebIdentityResponse xmlns="{NAMESPACE}">\n'
            "  <AssumeRoleWithWebIdentityResult>\n"
            f"    <Audience>{AUDIENCE}</Audience>\n"
            f"    <SubjectFromWebIdentityToken>{escape(subject)}</SubjectFromWebIdentityToken>\n"
            "    <AssumedRoleUser>\n"
            f"      <Arn>arn:aws:sts::{account}:assumed-role/{role}/{session}</Arn>\n"
            f"      <AssumedRoleId>{role_id}:{session}</AssumedRoleId>\n"
            "    </AssumedRoleUser>\n"
            "    <Credentials>\n"
            f"      <SessionToken>{credentials.session_token}</SessionToken>\n"
            f"      <SecretAccessKey>{credentials.secret_access_key}</SecretAccessKey>\n"
            f"      <Expiration>{expiration}</Expiration>\n"
            f"      <AccessKeyId>{credentials.access_key_id}</AccessKeyId>\n"
            "    </Credentials>\n"
            f"    <Provider>{escape(self.issuer.removeprefix('https://'))}</Provider>\n"
            "  </AssumeRoleWithWebIdentityResult>\n"
            f"  <ResponseMetadata>\n    <RequestId>{ident}</RequestId>\n  </ResponseMetadata>\n"
            "</AssumeRoleWithWebIdentityResponse>\n"
        )

    def _verify(self, token: str, audience_wanted: str = AUDIENCE) -> dict[str, Any]:
        """The token's claims, once its signature, issuer, audience and times check."""
        invalid = StsError(
            400,
            "InvalidIdentityToken",
            "The web identity token that was passed could not be validated by AWS. Get a new "
            "identity token from the identity provider and then retry the request.",
        )
        parts = token.split(".")
        if len(parts) != 3:
            raise invalid
        try:
            header = json.loads(_unb64(parts[0]))
            claims = json.loads(_unb64(parts[1]))
            signature = _unb64(parts[2])
        except (ValueError, binascii.Error) as error:
            raise invalid from error
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise invalid
        if header.get("alg") != "RS256":
            raise invalid
        keys = [key for kid, key in self.keys if header.get("kid") in (None, kid)]
        signed = f"{parts[0]}.{parts[1]}".encode()
        for key in keys:
            try:
                key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
                break
            except InvalidSignature:
                continue
        else:
            raise invalid
        if claims.get("iss") != self.issuer:
            raise StsError(
                400,
                "InvalidIdentityToken",
                f"No OpenIDConnect provider found in your account for {claims.get('iss')}",
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if audience_wanted not in audiences:
            raise StsError(400, "InvalidIdentityToken", "Incorrect token audience")
        now = int(time.time())
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= now:
            raise StsError(
                400,
                "ExpiredTokenException",
                f"Token expired: current date/time {now} must be before the expiration "
                f"date/time {expires}",
            )
        not_before = claims.get("nbf")
        if isinstance(not_before, int) and not_before > now:
            raise invalid
        return claims


def _validation(name: str, constraint: str, value: Any) -> StsError:
    shown = "null" if value is None else f"'{value}'"
    member = name[0].lower() + name[1:]
    return StsError(
        400,
        "ValidationError",
        f"1 validation error detected: Value {shown} at '{member}' failed to satisfy "
        f"constraint: {constraint}",
    )


def _public_keys(jwks: dict[str, Any]) -> list[tuple[str | None, rsa.RSAPublicKey]]:
    keys = []
    for key in jwks.get("keys", []):
        if key.get("kty") != "RSA":
            continue
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(_unb64(key["e"]), "big"), int.from_bytes(_unb64(key["n"]), "big")
        )
        keys.append((key.get("kid"), numbers.public_key()))
    return keys


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def _random(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))
