"""Active probes: each provider's cheapest honest check, over HTTP, bounded by a timeout."""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from switchyard.plan.backoff import retry_after_seconds
from switchyard.providers import Placement, provider
from switchyard.providers.base import ProbeRequest


class Outcome(StrEnum):
    HEALTHY = "Healthy"
    FAILED = "Failed"  # timeout, connection error, 5xx, garbage: counts toward unhealthy
    CREDENTIALS_INVALID = "CredentialsInvalid"  # 401/403: the key, not the provider
    RATE_LIMITED = "RateLimited"  # 429: back off for Retry-After


@dataclass(frozen=True)
class Target:
    """What a probe needs to know about one backend. `ca_bundle`: the PEM CAs its https
    certificate is verified against, when the gateway's backendTLS covers its host (the
    data plane trusts exactly that); None for the system trust store."""

    provider: str
    url: str
    model: str
    api_version: str | None
    timeout: float
    ca_bundle: str | None = None
    project: str | None = None
    region: str | None = None
    authentication: str = "APIKey"


@functools.lru_cache(maxsize=64)
def _trusting(ca_bundle: str) -> ssl.SSLContext:
    """Verification against these CAs only, as Envoy does for the hosts they cover."""
    return ssl.create_default_context(cadata=ca_bundle)


@dataclass(frozen=True)
class ProbeResult:
    outcome: Outcome
    latency_ms: int
    reason: str  # readable, names no key
    retry_after: float = 0.0


def request_for(target: Target, key: str | None) -> ProbeRequest:
    """The cheap, token-free request the backend's provider serves, authenticated."""
    placement = Placement(
        urlsplit(target.url).path.rstrip("/"),
        target.model,
        target.api_version,
        target.project,
        target.region,
    )
    terms = provider(target.provider, target.model, target.authentication)
    return terms.probe(target.url, placement, key)


async def probe(session: aiohttp.ClientSession, target: Target, key: str | None) -> ProbeResult:
    started = time.monotonic()

    def result(outcome: Outcome, reason: str, retry_after: float = 0.0) -> ProbeResult:
        latency = int((time.monotonic() - started) * 1000)
        return ProbeResult(outcome, latency, reason, retry_after)

    try:
        trust: ssl.SSLContext | bool = _trusting(target.ca_bundle) if target.ca_bundle else True
    except ssl.SSLError:
        return result(Outcome.FAILED, "the gateway's backendTLS caBundle is not valid PEM")
    try:
        request = request_for(target, key)
    except ValueError as error:  # a key that cannot sign: its message quotes no key
        return result(Outcome.CREDENTIALS_INVALID, str(error))
    try:
        async with asyncio.timeout(target.timeout):
            async with session.request(
                request.method,
                # As written: a signed path's escapes (`%3A`) are what the signature covers.
                URL(request.url, encoded=True),
                headers=request.headers,
                data=request.body,
                allow_redirects=False,
                ssl=trust,
            ) as reply:
                body = await reply.read()
                status = reply.status
                retry_after = reply.headers.get("Retry-After", "")
    except TimeoutError:
        return result(Outcome.FAILED, f"no answer within {target.timeout:g}s")
    except aiohttp.ClientError as error:
        return result(Outcome.FAILED, f"connection failed: {type(error).__name__}")
    if status in (401, 403):
        return result(Outcome.CREDENTIALS_INVALID, f"HTTP {status}: the key was refused")
    if status == 429:
        return result(Outcome.RATE_LIMITED, "HTTP 429", retry_after_seconds(retry_after))
    if status >= 300:
        return result(Outcome.FAILED, f"HTTP {status}")
    if not body.lstrip().startswith(b"{"):
        return result(Outcome.FAILED, f"HTTP {status} but not JSON (an error page?)")
    return result(Outcome.HEALTHY, f"HTTP {status}")
