"""AWS Signature Version 4, for the probes of a backend whose requests the data plane signs
(render/lua/sigv4.lua signs those): the same canonical request, from an AWS
shared-credentials file's `[default]` profile."""

from __future__ import annotations

import configparser
import datetime
import hashlib
import hmac
from typing import Protocol
from urllib.parse import quote, urlsplit


class Signable(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...
    @property
    def body(self) -> bytes | None: ...


def credentials(text: str) -> tuple[str, str, str | None]:
    """(access key id, secret access key, session token) of the file's `[default]` profile."""
    parser = configparser.ConfigParser()
    try:
        parser.read_string(text)
        profile = parser["default"]
        return (
            profile["aws_access_key_id"].strip(),
            profile["aws_secret_access_key"].strip(),
            (profile.get("aws_session_token") or "").strip() or None,
        )
    except (configparser.Error, KeyError):
        raise ValueError(
            "not an AWS shared-credentials file with a [default] profile "
            "(aws_access_key_id, aws_secret_access_key)"
        ) from None


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def sign(
    request: Signable,
    credentials_text: str,
    region: str,
    service: str,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """The headers that sign `request`: x-amz-date, x-amz-content-sha256, the session token
    if any, and authorization. The URL's path is as it goes on the wire; its segments are
    encoded once more in the canonical request, as for every service but S3."""
    key_id, secret, token = credentials(credentials_text)
    moment = (now or datetime.datetime.now(datetime.UTC)).strftime("%Y%m%dT%H%M%SZ")
    day = moment[:8]
    parts = urlsplit(request.url)
    payload = hashlib.sha256(request.body or b"").hexdigest()
    headers = {k.lower(): v.strip() for k, v in request.headers.items()}
    headers |= {"host": parts.netloc, "x-amz-date": moment, "x-amz-content-sha256": payload}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    path = "/".join(quote(segment, safe="-_.~") for segment in (parts.path or "/").split("/"))
    query = "&".join(sorted(parts.query.split("&"))) if parts.query else ""
    canonical = "\n".join(
        [
            request.method,
            path,
            query,
            "".join(f"{name}:{headers[name]}\n" for name in names),
            ";".join(names),
            payload,
        ]
    )
    scope = f"{day}/{region}/{service}/aws4_request"
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"AWS4-HMAC-SHA256\n{moment}\n{scope}\n{digest}"
    key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret}".encode(), day), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    signed = {name: headers[name] for name in ("x-amz-date", "x-amz-content-sha256")}
    if token:
        signed["x-amz-security-token"] = token
    signed["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, SignedHeaders={';'.join(names)}, "
        f"Signature={signature}"
    )
    return signed
