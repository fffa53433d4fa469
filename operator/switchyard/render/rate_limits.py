"""Per-client limits in the data plane: Envoy's global rate limit filter, asking a rate limit
service (envoyproxy/ratelimit, backed by Redis) that every Envoy of every gateway shares.
A client spreading its load over N Envoys therefore gets its limit, not N times it.

The service's own config names only the domain: each descriptor carries its limit, which
the clients filter (client_auth.lua) puts in dynamic metadata for a client that has one, so
a limit change reaches the data plane over ECDS, like the client table, and the service
needs no reload. A client without limits sends the service nothing.

- Requests: one descriptor per request, `(client, limit=requests)`, counting 1.
- Tokens: a request is checked against `(client, limit=tokens)` counting 0, and refused if
  the minute's tokens are spent. When the answer is done (streamed or not), its usage, as
  json_to_metadata and sse_to_metadata read it, is added to the same count, one descriptor
  per usage key (the service adds each; a key the answer did not report adds nothing). An
  admitted answer is never cut: what is in flight when the limit is reached goes through.

When the service cannot be reached, requests pass (`failure_mode_deny` false): a limit is a
budget, not an access control, and the service's outage should not become the gateway's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from switchyard.providers.usage import LIMITS_NAMESPACE, TOTAL_KEYS, USAGE_NAMESPACE

_TYPE = "type.googleapis.com/"
CLUSTER = "switchyard-ratelimit"
DOMAIN = "switchyard"
# In LIMITS_NAMESPACE, the clients filter writes for a limited client `<kind>_client` (its name,
# only when it has that limit) and `<kind>` (the limit, as the filter's override).
# Set on the filter's own 429s only, so that the answer filter tells them from a provider's.
LIMITED_MARKER = "x-sy-limited"
# The filter's answer timeout: past it, the request passes.
TIMEOUT_SECONDS = 0.2


@dataclass(frozen=True)
class RateLimitService:
    """Where the gateways' Envoys reach the rate limit service's gRPC port."""

    host: str
    port: int


def _descriptor(kind: str) -> dict[str, Any]:
    client = {
        "metadata": {
            "descriptor_key": "client",
            "metadata_key": {"key": LIMITS_NAMESPACE, "path": [{"key": f"{kind}_client"}]},
        }
    }
    limit = {"generic_key": {"descriptor_key": "limit", "descriptor_value": kind}}
    override = {"metadata_key": {"key": LIMITS_NAMESPACE, "path": [{"key": kind}]}}
    return {"actions": [client, limit], "limit": {"dynamic_metadata": override}}


@functools.cache
def rate_limit_filter() -> dict[str, Any]:
    """The listener's rate limit filter, after the clients filter (which names the client
    and its limits) and before the router."""
    spent_tokens = [
        {
            **_descriptor("tokens"),
            "hits_addend": {"format": f"%DYNAMIC_METADATA({USAGE_NAMESPACE}:{key})%"},
            "apply_on_stream_done": True,
        }
        for key in TOTAL_KEYS
    ]
    return {
        "name": "envoy.filters.http.ratelimit",
        "typed_config": {
            "@type": _TYPE + "envoy.extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": DOMAIN,
            "timeout": f"{TIMEOUT_SECONDS}s",
            "failure_mode_deny": False,
            # The draft headers carry the limit hit and when its window ends; the answer
            # filter turns them into the client API's own headers and Retry-After.
            "enable_x_ratelimit_headers": "DRAFT_VERSION_03",
            "disable_x_envoy_ratelimited_header": True,
            "response_headers_to_add": [
                {
                    "header": {"key": LIMITED_MARKER, "value": "1"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "rate_limits": [
                _descriptor("requests"),
                {**_descriptor("tokens"), "hits_addend": {"number": 0}},
                *spent_tokens,
            ],
            "rate_limit_service": {
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": CLUSTER}},
            },
        },
    }


def rate_limit_cluster(service: RateLimitService) -> dict[str, Any]:
    address = {"socket_address": {"address": service.host, "port_value": service.port}}
    return {
        "name": CLUSTER,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def count_key(client: str, kind: str, minute_start: int) -> str:
    """The Redis key under which the service counts `client`'s `kind` in the minute that
    began at `minute_start` (seconds since the epoch): its domain, then each descriptor
    entry's key and value, then the window."""
    return f"{DOMAIN}_client_{client}_limit_{kind}_{minute_start}"
