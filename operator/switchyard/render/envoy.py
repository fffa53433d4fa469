"""A gateway's routing plan as Envoy xDS resources: one listener, one route configuration
(RDS), one cluster per model. The listener does not depend on the endpoints, so an endpoint
change touches only the route configuration and that endpoint's clusters; Envoy never
replaces (and drains) its listener for one.

How a request flows:

1. Downstream, json_to_metadata parses the JSON body's top-level `model` into dynamic
   metadata, which the routes match to select the model's cluster. A small Lua filter keeps
   the client's path there too, for retries.
2. Each model's cluster holds every backend of its endpoint as a locality of its own, with
   the backend's effective weight as locality weight and its tier as priority. The cluster
   is picked once, the backend per attempt: a retry (previous_hosts, previous_priorities)
   lands on another backend or the next tier, so one dead provider costs no request.
3. After host selection, the router's upstream filters shape the attempt for the chosen
   backend: header_mutation copies the endpoint's metadata into scratch headers, then a Lua
   filter rewrites `:path`, the body's top-level `model` and the auth header, reading the API
   key from a file of the mounted credentials Secret. Keys never travel over xDS. When the
   backend speaks the other chat API than the client (OpenAI's Chat Completions, Anthropic's
   Messages), the same filter translates the request, and the answer on its way back, event
   by event when streamed: per attempt, so a retry on another provider is translated anew.
   Every backend-specific header is removed first, so a retry never carries the previous
   backend's key to another provider. The chain is the router's, not each cluster's: Envoy
   builds a Lua VM per worker for each Lua filter config, so one per cluster would cost
   about 0.3 MB of memory per cluster; on the router, all clusters share one.

The Lua lives in render/lua/*.lua (package data), one file per filter; the renderer puts
the values it decides (header names, the credentials variable, the Anthropic version) in
front of each as a `config` table.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from switchyard import pki
from switchyard.api.models import BackendTLS
from switchyard.plan.clients import LIMIT_KINDS, ClientsPlan, TokenIssuer
from switchyard.plan.gateway import GatewayPlan
from switchyard.plan.routing import BackendRoute, EndpointPlan
from switchyard.providers import API_PATHS, PROVIDERS, ChatCall, ClientApi, Provider
from switchyard.providers.usage import ALL_FIELDS as ALL_USAGE_FIELDS
from switchyard.providers.usage import (
    ANSWER_LOG,
    FIRST_EVENT_KEY,
    LIMIT_HIT_KEY,
    LIMITS_NAMESPACE,
    USAGE_NAMESPACE,
)
from switchyard.render import rate_limits
from switchyard.render.rate_limits import RateLimitService

TYPE = "type.googleapis.com/"
CLUSTER_TYPE = TYPE + "envoy.config.cluster.v3.Cluster"
LISTENER_TYPE = TYPE + "envoy.config.listener.v3.Listener"
ROUTE_TYPE = TYPE + "envoy.config.route.v3.RouteConfiguration"
# Filter configs served on their own (ECDS): the client table changes without the listener.
EXTENSION_TYPE = TYPE + "envoy.config.core.v3.TypedExtensionConfig"
LUA_TYPE = TYPE + "envoy.extensions.filters.http.lua.v3.Lua"
JWT_TYPE = TYPE + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication"
# The two filters that identify clients, by the names their ECDS resources carry.
CLIENT_TOKENS_FILTER = "switchyard.client-tokens"
CLIENTS_FILTER = "switchyard.clients"
# ServiceAccount tokens that identify clients are made for this audience, and no other.
TOKEN_AUDIENCE = "switchyard"
# Where jwt_authn leaves a verified token's claims for the clients filter.
TOKEN_METADATA_NAMESPACE = "envoy.filters.http.jwt_authn"
TOKEN_METADATA_KEY = "token"
# The listener's routes, served over ADS as a resource of their own.
ROUTE_CONFIG_NAME = "switchyard"
METADATA_NAMESPACE = "switchyard"
# Requests up to 10 MB (long prompts, images) must pass, retries included.
MAX_REQUEST_BYTES = 16 * 2**20
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
# The bootstrap's cluster for the operator: xDS, and the failed-attempt reports back to it.
XDS_CLUSTER = "switchyard-xds"
DATA_PLANE_LOG = "switchyard-failed-attempts"
# The directory where Envoy finds the gateway's credentials Secret, one file per key.
CREDENTIALS_DIR_ENV = "SWITCHYARD_CREDENTIALS_DIR"
# Scratch headers: set from endpoint metadata, consumed and removed by the upstream Lua filter.
SCRATCH = {
    "api": "x-sy-api",
    "auth": "x-sy-auth",
    "credentials": "x-sy-credentials",
    "path_base": "x-sy-path-base",
    "query": "x-sy-query",
    "model": "x-sy-model",
    "headers": "x-sy-headers",
    "chat_call": "x-sy-chat-call",
    "body": "x-sy-body",
    "signing": "x-sy-signing",
    "host": "x-sy-host",
    "converse": "x-sy-converse",
    "errors": "x-sy-errors",
}
# Set on a provider's 401 or 403 by the backend shaper, so the listener's filter can turn it
# into a gateway error once retries are done; never reaches the client.
REFUSAL_MARKER = "x-sy-provider-refused"
# Every header that carries a provider's key or an API's version: cleared before each attempt.
# SigV4's headers: a client's own would otherwise reach the provider beside the signature.
SIGNATURE_HEADERS = ("x-amz-content-sha256", "x-amz-date", "x-amz-security-token")
AUTH_HEADERS = tuple(
    sorted(
        {p.auth.header for p in PROVIDERS}
        | {h for p in PROVIDERS for h in p.request_headers}
        | set(SIGNATURE_HEADERS)
    )
)
# What an OpenAI request that sets no max_tokens gets when Anthropic serves it (Anthropic
# requires one): every Claude model can write this many.
DEFAULT_MAX_TOKENS = 4096
# OpenAI's error `type` says who must act. OpenAI's API answers its own failures (500,
# 503 overloaded) with "server_error" (`{"message": "The server had an error while
# processing your request...", "type": "server_error", "param": null, "code": null}`), and
# requests the client must fix (400, 404 model_not_found, 413) with "invalid_request_error".
CLIENT_ERROR = "invalid_request_error"
SERVER_ERROR = "server_error"

# The Lua programs Envoy runs, one file each in render/lua/ (package data), given their
# settings in a `config` table the renderer puts in front.
LUA_FILES = resources.files("switchyard.render") / "lua"
LuaValue = str | int | Mapping[str, "LuaValue"]


def lua_program(file: str, config: Mapping[str, LuaValue]) -> str:
    """The Lua file `render/lua/<file>` with `local config = {...}` in front, on the file's
    first line, so that line numbers in Lua's error messages still match the file."""
    return f"local config = {lua_literal(config)}; {_lua_file(file)}"


@functools.cache
def _lua_file(name: str) -> str:
    """A file of render/lua/, read once: the clients' program is rendered on every change."""
    return (LUA_FILES / name).read_text(encoding="utf-8")


def lua_literal(value: LuaValue) -> str:
    """A string or a table of them as a Lua constructor: the same text for the same value."""
    if isinstance(value, str):
        # Printable ASCII as it is; quotes, backslashes and every other byte as `\ddd`.
        return '"' + "".join(_lua_byte(b) for b in value.encode()) + '"'
    if isinstance(value, int):
        return str(value)
    # `["name"] = value`: any string is a valid key written this way, keywords too.
    items = (f"[{lua_literal(name)}] = {lua_literal(item)}" for name, item in value.items())
    return "{" + ", ".join(items) + "}"


def _lua_byte(byte: int) -> str:
    if 0x20 <= byte < 0x7F and byte not in b'"\\':
        return chr(byte)
    return f"\\{byte:03d}"


@functools.cache
def _original_path_lua() -> str:
    return lua_program("original_path.lua", {"metadata_namespace": METADATA_NAMESPACE})


@functools.cache
def _backend_shaper_lua() -> str:
    program = lua_program(
        "backend_shaper.lua",
        {
            "metadata_namespace": METADATA_NAMESPACE,
            "credentials_env": CREDENTIALS_DIR_ENV,
            "api_paths": {str(api): path for api, path in API_PATHS.items()},
            "default_max_tokens": DEFAULT_MAX_TOKENS,
            "scratch": SCRATCH,
            "refusal_marker": REFUSAL_MARKER,
        },
    )
    # The libraries after the program, so that line numbers in errors match its file.
    libraries = (
        "json.lua", "translate.lua", "converse.lua", "sha256.lua", "sigv4.lua", "event_stream.lua"
    )  # fmt: skip
    return "\n".join((program, *(_lua_file(name) for name in libraries)))


def _clients_lua(clients: ClientsPlan, served: list[str]) -> str:
    unauthenticated = (
        "A valid API key or ServiceAccount token is required: this gateway serves"
        " only its ModelClients."
    )
    forbidden = "This client may not call this model."
    config: dict[str, LuaValue] = {
        "keys": {g.key_digest: g.identity for g in clients.grants if g.key_digest},
        "subjects": {s: g.identity for g in clients.grants for s in g.subjects},
        "grants": {g.identity: dict.fromkeys(g.models, "1") for g in clients.grants},
        "served": dict.fromkeys(sorted(served), "1"),
        # `GET /v1/models` as each client may use them, in each API's format.
        "listings": {
            g.identity: {
                str(api): model_listing([m for m in served if m in g.models], api)
                for api in ClientApi
            }
            for g in clients.grants
        },
        # Only limited clients: the others send the rate limit service nothing.
        "limits": {g.identity: dict(g.limits) for g in clients.grants if g.limits},
        "limits_namespace": LIMITS_NAMESPACE,
        "metadata_namespace": METADATA_NAMESPACE,
        "token_namespace": TOKEN_METADATA_NAMESPACE,
        "token_key": TOKEN_METADATA_KEY,
        "unauthenticated": {
            "openai": json.dumps(openai_error(CLIENT_ERROR, unauthenticated, "invalid_api_key")),
            "anthropic": anthropic_error("authentication_error", unauthenticated),
        },
        "forbidden": {
            "openai": json.dumps(openai_error(CLIENT_ERROR, forbidden, "model_not_allowed")),
            "anthropic": anthropic_error("permission_error", forbidden),
        },
    }
    # sha256.lua after the program, so that line numbers in errors match client_auth.lua.
    return lua_program("client_auth.lua", config) + "\n" + _lua_file("sha256.lua")


def anthropic_error(kind: str, message: str) -> str:
    return json.dumps({"type": "error", "error": {"type": kind, "message": message}})


@functools.cache
def _answer_lua() -> str:
    message = "Every provider of this model refused the gateway's credentials."
    # string.format's: the client, its limit, the limit's kind, seconds to wait.
    limited = "ModelClient %s has used its %d %s per minute. Retry in %d s."
    return lua_program(
        "answer.lua",
        {
            "metadata_namespace": METADATA_NAMESPACE,
            "marker": REFUSAL_MARKER,
            "openai_body": json.dumps(
                openai_error(SERVER_ERROR, message, "provider_refused_credentials")
            ),
            "anthropic_body": anthropic_error("api_error", message),
            "usage_namespace": USAGE_NAMESPACE,
            "first_event_key": FIRST_EVENT_KEY,
            "openai_path": "/v1" + API_PATHS[ClientApi.OPENAI],
            "limits_namespace": LIMITS_NAMESPACE,
            "limit_hit_key": LIMIT_HIT_KEY,
            "limited_marker": rate_limits.LIMITED_MARKER,
            "limited": {
                kind: {
                    "openai": json.dumps(openai_error(kind, limited, "rate_limit_exceeded")),
                    "anthropic": anthropic_error("rate_limit_error", limited),
                }
                for kind in LIMIT_KINDS
            },
        },
    )


def duration(seconds: float) -> str:
    """Seconds as a protobuf JSON Duration: at most nine decimals, never an exponent
    (`f"{x:g}"` wrote 1e+06s for 300h, which Envoy's config refuses)."""
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def cluster_name(model: str, subset: str = "") -> str:
    """The cluster of every backend of a model, or (with `subset`) of those that serve an
    API only some providers have."""
    return f"switchyard-{subset}/{model}" if subset else f"switchyard/{model}"


def model_of_cluster(name: str) -> str:
    """The model a cluster of `cluster_name` serves."""
    return name.partition("/")[2]


def openai_error(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


Resources = list[dict[str, Any]]


@dataclass
class RenderCache:
    """What each endpoint plan rendered to last time (its clusters and routes), kept by the
    caller between renders of one gateway: a change to one endpoint of thousands renders
    that endpoint only, and the unchanged resources stay the same objects, which lets the
    xDS server skip packing them again. The rendered dicts must not be mutated."""

    entries: dict[tuple[EndpointPlan, str], tuple[Resources, Resources]] = field(
        default_factory=dict
    )


def render(
    plan: GatewayPlan,
    port: int,
    backend_tls: BackendTLS | None = None,
    cache: RenderCache | None = None,
    clients: ClientsPlan | None = None,
    issuer: TokenIssuer | None = None,
    limits: RateLimitService | None = None,
) -> dict[str, Resources]:
    """xDS resources by type URL for the gateway's Envoys. With `clients` that the gateway
    requires, only those clients are served; `issuer` verifies their ServiceAccount tokens;
    with `limits`, their limits are held by that rate limit service."""
    tls = backend_tls.model_dump_json() if backend_tls is not None else ""
    previous = cache.entries if cache is not None else {}
    used: dict[tuple[EndpointPlan, str], tuple[Resources, Resources]] = {}
    clusters: Resources = []
    routes: Resources = []
    for endpoint in plan.attached:
        key = (endpoint, tls)
        rendered = used.get(key) or previous.get(key) or _endpoint(endpoint, backend_tls)
        used[key] = rendered
        clusters += rendered[0]
        routes += rendered[1]
    if cache is not None:
        cache.entries = used
    checked = clients is not None and clients.required
    # Limits are a client's: a gateway that checks no client has none to hold.
    limiter = limits if checked else None
    if limiter is not None:
        clusters = [*clusters, rate_limits.rate_limit_cluster(limiter)]
    resources = {
        CLUSTER_TYPE: clusters,
        LISTENER_TYPE: [_listener(port, checked, limiter is not None)],
        ROUTE_TYPE: [_route_configuration(plan, routes)],
    }
    if clients is not None and clients.required:
        # Only then: an Envoy subscribes to (and ACKs) what its listener asks for.
        served = [e.model for e in plan.attached]
        resources[EXTENSION_TYPE] = [
            _extension(CLIENT_TOKENS_FILTER, _client_tokens(issuer)),
            _extension(CLIENTS_FILTER, _lua_config(_clients_lua(clients, served))),
        ]
    return resources


def _extension(name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "typed_config": config}


def _discovered(name: str, type_url: str) -> dict[str, Any]:
    """An HTTP filter whose config comes over ADS as an ECDS resource of its own. Until it
    has come, the listener is not ready: no request passes unchecked."""
    return {
        "name": name,
        "config_discovery": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "type_urls": [type_url],
        },
    }


def _client_tokens(issuer: TokenIssuer | None) -> dict[str, Any]:
    """jwt_authn, verifying ServiceAccount tokens made for the gateway against the cluster
    issuer's public keys. A request without a valid token passes on to the clients filter,
    which looks for an API key instead (the same header may carry either)."""
    if issuer is None:
        # Issuer keys not known (yet): no token verifies, API keys still do.
        return {"@type": JWT_TYPE}
    provider = "kubernetes"
    return {
        "@type": JWT_TYPE,
        "providers": {
            provider: {
                "issuer": issuer.issuer,
                "audiences": [TOKEN_AUDIENCE],
                "local_jwks": {"inline_string": issuer.jwks},
                "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
                "payload_in_metadata": TOKEN_METADATA_KEY,
                "forward": True,  # the clients filter removes every credential header
            }
        },
        "rules": [
            {
                # Only what looks like a JWT (its base64url header starts "ey"): an API key
                # in the same header costs no parse.
                "match": {
                    "prefix": "/",
                    "headers": [
                        {
                            "name": "authorization",
                            "string_match": {"prefix": "Bearer ey", "ignore_case": True},
                        }
                    ],
                },
                "requires": {
                    "requires_any": {
                        "requirements": [
                            {"provider_name": provider},
                            {"allow_missing_or_failed": {}},
                        ]
                    }
                },
            }
        ],
    }


def _endpoint(
    endpoint: EndpointPlan, backend_tls: BackendTLS | None
) -> tuple[Resources, Resources]:
    """One endpoint's clusters and routes. Both chat APIs reach every backend, translated
    where the backend speaks the other one; the rest of each API only the backends that
    serve it (Anthropic's `/v1/messages/count_tokens`, OpenAI's embeddings and the like)."""
    everyone = cluster_name(endpoint.model)
    clusters = [_cluster(endpoint.backends, everyone, backend_tls)]
    routes = [_route(endpoint, {"path": f"/v1{path}"}, everyone) for path in API_PATHS.values()]
    subsets: list[tuple[str, str, Callable[[Provider], bool]]] = [
        # Messages API paths as Anthropic lays them out, not a chat call of its own.
        ("anthropic", "/v1/messages/", lambda p: p.api == ClientApi.ANTHROPIC and not p.chat_call),
        ("openai", "/v1/", lambda p: p.other_apis),
    ]
    for subset, prefix, serves in subsets:
        backends = tuple(b for b in endpoint.backends if serves(b.terms))
        if not backends:
            routes.append(_unserved(endpoint, prefix))
            continue
        name = everyone if backends == endpoint.backends else cluster_name(endpoint.model, subset)
        if name != everyone:
            clusters.append(_cluster(backends, name, backend_tls))
        routes.append(_route(endpoint, {"prefix": prefix}, name))
    return clusters, routes


def _unserved(endpoint: EndpointPlan, prefix: str) -> dict[str, Any]:
    message = f"No backend of the model '{endpoint.model}' serves this path."
    return {
        "name": endpoint.model,
        "match": {"prefix": prefix, "dynamic_metadata": [_model_is(endpoint.model)]},
        "direct_response": {"status": 400, "body": {"inline_string": message}},
    }


def _route_configuration(plan: GatewayPlan, endpoint_routes: Resources) -> dict[str, Any]:
    served = [e.model for e in plan.attached]
    listings = {api: model_listing(served, api) for api in ClientApi}
    routes: list[dict[str, Any]] = [
        _models_route(listings[ClientApi.ANTHROPIC], [_speaks_anthropic()]),
        _models_route(listings[ClientApi.OPENAI], []),
    ]
    routes += endpoint_routes
    routes += [
        {
            "name": "unknown-model",
            "match": {
                "prefix": "/v1/",
                "dynamic_metadata": [_model_matcher({"present_match": True})],
            },
            "direct_response": {"status": 404, "body": {"inline_string": "model_not_found"}},
        },
        {
            "name": "no-model",
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 400,
                "body": {"inline_string": "The request body must be JSON with a 'model' field."},
            },
        },
    ]
    return {
        "name": ROUTE_CONFIG_NAME,
        # Envoy refuses a direct response over 4 KB by default: the model list of a gateway
        # with ~50 endpoints is already more.
        "max_direct_response_body_size_bytes": max(
            4096, *(len(listing.encode()) for listing in listings.values())
        ),
        "virtual_hosts": [
            {
                "name": "models",
                "domains": ["*"],
                "request_body_buffer_limit": MAX_REQUEST_BYTES,
                "routes": routes,
            }
        ],
    }


@functools.cache
def _listener(port: int, clients_checked: bool, limited: bool = False) -> dict[str, Any]:
    """The same for every plan (one object per port, client check and rate limit service):
    its routes come over RDS, the client table (and the clients' limits) over ECDS."""
    checks = (
        [_discovered(CLIENT_TOKENS_FILTER, JWT_TYPE), _discovered(CLIENTS_FILTER, LUA_TYPE)]
        if clients_checked
        else []
    )
    manager = {
        "stat_prefix": "switchyard",
        "stream_idle_timeout": "300s",
        "request_timeout": "0s",
        "http_filters": [
            _model_to_metadata(),
            # The clients filter keeps the original path itself.
            *(checks or [_lua("original_path", _original_path_lua())]),
            _lua("answer", _answer_lua()),
            # Answers pass the filters in reverse: the stream's usage is read before the
            # answer filter takes away what the client did not ask for.
            _usage_from_streams(),
            # Its own 429s pass the answer filter, which words them in the client's API.
            *([rate_limits.rate_limit_filter()] if limited else []),
            _router(),
        ],
        "rds": {
            "config_source": {"ads": {}, "resource_api_version": "V3"},
            "route_config_name": ROUTE_CONFIG_NAME,
        },
        "local_reply_config": _local_replies(),
        "access_log": [_access_record(), _client_counters(), _usage_record()],
    }
    listener = _http_listener(f"switchyard-{port}", port, manager)
    return {**listener, "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES}


def _http_listener(name: str, port: int, manager: dict[str, Any]) -> dict[str, Any]:
    """A listener on every address at `port` whose one filter chain is an HTTP connection
    manager with the settings `manager`."""
    return {
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": TYPE + "envoy.extensions.filters.network."
                            "http_connection_manager.v3.HttpConnectionManager",
                            **manager,
                        },
                    }
                ]
            }
        ],
    }


def _local_replies() -> dict[str, Any]:
    """Envoy's own answers (unknown model, no model, too large, no backend, a request the
    shaper could not shape or translate) in the error format of the API the client spoke,
    so that its SDK shows a readable message and raises the fitting exception. The first
    mapper whose filter matches wins."""

    def status_is(op: str, status: int) -> dict[str, Any]:
        value = {"default_value": status, "runtime_key": "switchyard"}
        return {"status_code_filter": {"comparison": {"op": op, "value": value}}}

    # Which API the client spoke, by the path it sent (kept in dynamic metadata before any
    # attempt rewrote it).
    spoke_anthropic = {
        "metadata_filter": {
            "matcher": {
                "filter": METADATA_NAMESPACE,
                "path": [{"key": "path"}],
                "value": {"string_match": {"prefix": "/v1/messages"}},
            },
            # A reply before the path was kept (a body too large to read) is OpenAI's.
            "match_if_key_not_found": False,
        }
    }
    # (op, status, OpenAI's error type, Anthropic's, message, OpenAI's error code)
    replies = [
        (
            "EQ",
            404,
            CLIENT_ERROR,
            "not_found_error",
            "The model '%DYNAMIC_METADATA(switchyard:model)%' does not exist on this gateway.",
            "model_not_found",
        ),
        ("EQ", 413, CLIENT_ERROR, "request_too_large", "The request body is too large.", None),
        # Anything else Envoy answers keeps its text: the gateway's own failures (no healthy
        # backend, timeouts, 502 from the shaper) first, then the 4xx (a request the other
        # API cannot carry, a body without a model).
        ("GE", 500, SERVER_ERROR, "api_error", "%LOCAL_REPLY_BODY%", "%RESPONSE_CODE%"),
        ("GE", 400, CLIENT_ERROR, "invalid_request_error", "%LOCAL_REPLY_BODY%", None),
    ]
    mappers = [
        # The clients filter answers 401 and 403 in the client's format itself.
        *({"filter": status_is("EQ", status)} for status in (401, 403)),
    ]
    for op, status, openai_kind, anthropic_kind, message, code in replies:
        anthropic_body = {"type": "error", "error": {"type": anthropic_kind, "message": message}}
        mappers += [
            {
                "filter": {"and_filter": {"filters": [status_is(op, status), spoke_anthropic]}},
                "body_format_override": {"json_format": anthropic_body},
            },
            {
                "filter": status_is(op, status),
                "body_format_override": {"json_format": openai_error(openai_kind, message, code)},
            },
        ]
    return {"mappers": mappers}


def _router() -> dict[str, Any]:
    """The router, reporting every failed attempt to the operator (gRPC access log over the
    xDS connection's cluster): a 429 holds that backend back for its Retry-After; a 5xx or
    a connection failure makes the operator probe the backend at once."""

    def status(op: str, code: int) -> dict[str, Any]:
        value = {"default_value": code, "runtime_key": "switchyard.reported_status"}
        return {"status_code_filter": {"comparison": {"op": op, "value": value}}}

    # 429s, 5xx, and attempts that never got an answer (connect failure, timeout, reset).
    worth_reporting = {
        "or_filter": {
            "filters": [
                status("EQ", 429),
                status("GE", 500),
                {"response_flag_filter": {"flags": ["UF", "UT", "UC", "URX"]}},
            ]
        }
    }
    report = _report_to_operator(DATA_PLANE_LOG, flush_seconds=0.05, buffer_bytes=1)
    report["filter"] = worth_reporting
    report["typed_config"]["additional_response_headers_to_log"] = ["retry-after"]
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.router.v3.Router",
            "upstream_http_filters": _upstream_filters(),
            "upstream_log": [report],
        },
    }


def _report_to_operator(log_name: str, flush_seconds: float, buffer_bytes: int) -> dict[str, Any]:
    """A gRPC access log to the operator over the xDS connection's cluster, each entry
    tagged with the backend (the chosen host's metadata); sent once `buffer_bytes` gather,
    or every `flush_seconds`."""
    backend_tag = {
        "tag": "backend",
        "metadata": {
            "kind": {"host": {}},
            "metadata_key": {"key": METADATA_NAMESPACE, "path": [{"key": "backend"}]},
        },
    }
    return {
        "name": "envoy.access_loggers.http_grpc",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": log_name,
                "grpc_service": {"envoy_grpc": {"cluster_name": XDS_CLUSTER}},
                "transport_api_version": "V3",
                "buffer_flush_interval": duration(flush_seconds),
                "buffer_size_bytes": buffer_bytes,
                "custom_tags": [backend_tag],
            },
        },
    }


def _usage_record() -> dict[str, Any]:
    """Every answer a backend gave, to the operator's accounting: its dynamic metadata
    carries the client and the usage, its timings the latency. Batched: at most a second
    late, or 64 KB at a time."""
    return _report_to_operator(ANSWER_LOG, flush_seconds=1.0, buffer_bytes=65536)


def _model_to_metadata() -> dict[str, Any]:
    """The body's top-level `model`, parsed as JSON, into dynamic metadata the routes match."""
    return {
        "name": "envoy.filters.http.json_to_metadata",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
            "request_rules": {
                "rules": [
                    {
                        "selectors": [{"key": "model"}],
                        "on_present": {
                            "metadata_namespace": METADATA_NAMESPACE,
                            "key": "model",
                            "type": "STRING",
                        },
                    },
                    # Whether the client streams: a provider whose path says so needs it.
                    {
                        "selectors": [{"key": "stream"}],
                        "on_present": {"metadata_namespace": METADATA_NAMESPACE, "key": "stream"},
                    },
                    # Whether an OpenAI client asked for its stream's usage (else the gateway
                    # asks, and takes the answer's usage event away: answer.lua).
                    {
                        "selectors": [{"key": "stream_options"}, {"key": "include_usage"}],
                        "on_present": {
                            "metadata_namespace": METADATA_NAMESPACE,
                            "key": "usage_asked",
                        },
                    },
                ],
                # curl -d sends a form content type; read JSON whatever the label says.
                "allow_content_types": [
                    "application/json",
                    "application/x-www-form-urlencoded",
                    "text/plain",
                ],
                "allow_empty_content_type": True,
            },
            # A whole answer's usage, in the client's API (any translation is done by now).
            "response_rules": {
                "rules": [rule for rule, _ in _usage_rules()],
                # With parameters too: the filter compares the whole header otherwise.
                "allow_content_types_regex": {"regex": "application/json(;.*)?"},
            },
        },
    }


def _usage_rules() -> list[tuple[dict[str, Any], int]]:
    """json_to_metadata rules for every usage field's every path, each with how many
    events of a stream it is read from (0: all, the last one winning)."""
    rules = []
    for usage_field in ALL_USAGE_FIELDS:
        for path in usage_field.paths:
            action: dict[str, Any] = {
                "metadata_namespace": USAGE_NAMESPACE,
                "key": usage_field.key,
                "type": "NUMBER" if usage_field.number else "STRING",
            }
            rule = {"selectors": [{"key": key} for key in path], "on_present": action}
            rules.append((rule, 0 if usage_field.number else 1))
    return rules


def _usage_from_streams() -> dict[str, Any]:
    """A streamed answer's usage, event by event as it passes: nothing is held back."""
    return {
        "name": "envoy.filters.http.sse_to_metadata",
        "typed_config": newer_than_protos(
            "envoy.extensions.filters.http.sse_to_metadata.v3.SseToMetadata",
            response_rules={
                "content_parser": {
                    "name": "envoy.content_parsers.json",
                    "typed_config": {
                        "@type": TYPE
                        + "envoy.extensions.content_parsers.json.v3.JsonContentParser",
                        "rules": [
                            {"rule": rule, "stop_processing_after_matches": matches}
                            for rule, matches in _usage_rules()
                        ],
                    },
                },
                # An event this big is not parsed (a long tool call's arguments, say); it
                # still reaches the client. Usage events are a few hundred bytes.
                "max_event_size": 65536,
            },
        ),
    }


def newer_than_protos(type_name: str, **fields: Any) -> dict[str, Any]:
    """An extension's config the operator's protobuf descriptors predate (Envoy has it, the
    xds-protos package not yet): as a TypedStruct, which Envoy converts into `type_name`
    and validates on load. Fields as protobuf JSON; nested `@type`s are Envoy's to resolve."""
    return {
        "@type": "type.googleapis.com/xds.type.v3.TypedStruct",
        "type_url": TYPE + type_name,
        "value": fields,
    }


def _model_matcher(value: dict[str, Any]) -> dict[str, Any]:
    return {"filter": METADATA_NAMESPACE, "path": [{"key": "model"}], "value": value}


def _json_content_type() -> dict[str, Any]:
    return {
        "header": {"key": "content-type", "value": "application/json"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


def _models_route(listing: str, headers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": "models",
        "match": {
            "path": "/v1/models",
            "headers": [{"name": ":method", "string_match": {"exact": "GET"}}, *headers],
        },
        "direct_response": {"status": 200, "body": {"inline_string": listing}},
        "response_headers_to_add": [_json_content_type()],
    }


def _speaks_anthropic() -> dict[str, Any]:
    """Anthropic's SDKs send `anthropic-version` on every request; OpenAI's never do."""
    return {"name": "anthropic-version", "present_match": True}


def model_listing(models: list[str], api: ClientApi) -> str:
    """`GET /v1/models` as each API answers it."""
    if api == ClientApi.ANTHROPIC:
        data: list[dict[str, Any]] = [
            {"type": "model", "id": m, "display_name": m, "created_at": "1970-01-01T00:00:00Z"}
            for m in models
        ]
        first, last = (models[0], models[-1]) if models else (None, None)
        listing = {"data": data, "has_more": False, "first_id": first, "last_id": last}
    else:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "switchyard"} for m in models
        ]
        listing = {"object": "list", "data": data}
    return json.dumps(listing)


def _model_is(model: str) -> dict[str, Any]:
    return _model_matcher({"string_match": {"exact": model}})


def _route(endpoint: EndpointPlan, path: dict[str, str], cluster: str) -> dict[str, Any]:
    return {
        "name": endpoint.model,  # the model in stats and access records, as the gateway names it
        "match": {**path, "dynamic_metadata": [_model_is(endpoint.model)]},
        "route": {
            "cluster": cluster,
            "auto_host_rewrite": True,
            "timeout": "0s",  # streams may run long; each attempt has its own timeout
            "retry_policy": _retry_policy(endpoint),
        },
    }


def _retry_policy(endpoint: EndpointPlan) -> dict[str, Any]:
    conditions = {
        "ConnectFailure": ["connect-failure", "reset", "refused-stream"],
        "ServerError": ["5xx"],
        "Timeout": ["gateway-error"],
        "RateLimited": [],
    }
    retry_on = sorted({c for name in endpoint.retry_on for c in conditions[name]})
    retry_on.append("retriable-status-codes")
    policy: dict[str, Any] = {
        "retry_on": ",".join(retry_on) or "connect-failure",
        "num_retries": endpoint.retry_attempts,
        "per_try_timeout": duration(endpoint.per_try_timeout_seconds),
        **_retry_constants(),
    }
    # A key the provider refuses is that backend's problem: another backend may serve.
    codes = [401, 403]
    if "RateLimited" in endpoint.retry_on:
        codes.append(429)
    policy["retriable_status_codes"] = codes
    return policy


@functools.cache
def _retry_constants() -> dict[str, Any]:
    """The retry policy's parts every route shares (one object for all of them)."""
    return {
        "retry_back_off": {"base_interval": "0.01s", "max_interval": "0.25s"},
        # A retry goes to another backend, and to the next tier once a tier is exhausted.
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {
                    "@type": TYPE
                    + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
                },
            }
        ],
        "host_selection_retry_max_attempts": 5,
        "retry_priority": {
            "name": "envoy.retry_priorities.previous_priorities",
            "typed_config": {
                "@type": TYPE
                + "envoy.extensions.retry.priority.previous_priorities.v3.PreviousPrioritiesConfig",
                "update_frequency": 1,
            },
        },
    }


def _lua(name: str, source: str) -> dict[str, Any]:
    return {"name": "envoy.filters.http.lua", "typed_config": _lua_config(source, name)}


def _lua_config(source: str, stat_prefix: str = "clients") -> dict[str, Any]:
    return {
        "@type": LUA_TYPE,
        "stat_prefix": stat_prefix,
        "default_source_code": {"inline_string": source},
    }


# Envoy's counter of requests per client, model and status, in its stats as
# `switchyard_client_requests{client, model, code}` (`envoy_switchyard_client_requests` on
# /stats/prometheus). Every tag is bounded: clients and models are the gateway's own (the
# model is the route's name, never what a client wrote), codes are HTTP's.
CLIENT_REQUESTS_STAT = "client_requests"


def _client_counters() -> dict[str, Any]:
    tags = {
        "client": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:client)%",
        "model": "%ROUTE_NAME%",
        "code": "%RESPONSE_CODE%",
    }
    return {
        "name": "envoy.access_loggers.stats",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.access_loggers.stats.v3.Config",
            "stat_prefix": METADATA_NAMESPACE,
            "counters": [
                {
                    "stat": {
                        "name": CLIENT_REQUESTS_STAT,
                        "tags": [{"name": k, "value_format": v} for k, v in tags.items()],
                    },
                    "value_fixed": 1,
                }
            ],
        },
    }


def _access_record() -> dict[str, Any]:
    """One JSON line per request on Envoy's stdout: who called (the ModelClient, as
    namespace/name), which model, and how it went. Never a header: they carry keys."""
    fields = {
        "time": "%START_TIME%",
        "client": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:client)%",
        "model": f"%DYNAMIC_METADATA({METADATA_NAMESPACE}:model)%",
        "method": "%REQ(:METHOD)%",
        "path": "%PATH(WQ:ORIG)%",  # without the query: never a credential
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "upstream": "%UPSTREAM_HOST%",
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "duration_ms": "%DURATION%",
    }
    return {
        "name": "envoy.access_loggers.stdout",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
            "log_format": {"json_format": fields},
        },
    }


def _cluster(
    backends: tuple[BackendRoute, ...], name: str, backend_tls: BackendTLS | None
) -> dict[str, Any]:
    carrying = [b for b in backends if b.effective_weight > 0]
    localities = [
        {
            "locality": {"sub_zone": b.name},
            "load_balancing_weight": b.effective_weight,
            # Envoy needs priorities 0..N without gaps; tiers keep their order.
            "priority": sorted({c.priority for c in carrying}).index(b.priority),
            "lb_endpoints": [_lb_endpoint(b)],
        }
        for b in carrying
    ]
    return {
        "name": name,
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "lb_policy": "ROUND_ROBIN",
        "per_connection_buffer_limit_bytes": MAX_REQUEST_BYTES,
        **_cluster_constants(),
        # One TLS context per https backend, with its own SNI and name check: auto_sni would
        # use the client's Host, which the route rewrites only after the handshake is chosen.
        "transport_socket_matches": [
            *(_tls_match(b, backend_tls) for b in carrying if urlsplit(b.url).scheme == "https"),
            _plaintext(),
        ],
        "load_assignment": {
            "cluster_name": name,
            "endpoints": localities,
            # A lower tier takes traffic only when the tier above has no healthy backend.
            "policy": {"overprovisioning_factor": 100000},
        },
    }


@functools.cache
def _cluster_constants() -> dict[str, Any]:
    """What every cluster holds alike: built once and shared by all of them (rendered
    resources are never mutated), so thousands of clusters do not hold thousands of copies."""
    return {
        "common_lb_config": {
            "locality_weighted_lb_config": {},
            # Never route to an ejected backend while a healthy one exists.
            "healthy_panic_threshold": {"value": 0},
        },
        # Envoy's default allows 3 concurrent retries per cluster: a dead backend under load
        # would turn the 4th into a client error. Retries are what keep clients whole here.
        "circuit_breakers": {
            "thresholds": [
                {
                    "priority": "DEFAULT",
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 100000,
                }
            ]
        },
        "outlier_detection": {
            "consecutive_5xx": 2,
            "consecutive_gateway_failure": 2,
            "consecutive_local_origin_failure": 2,
            "split_external_local_origin_errors": True,
            "interval": "1s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 100,
            "enforcing_consecutive_5xx": 100,
            "enforcing_consecutive_gateway_failure": 100,
            "enforcing_consecutive_local_origin_failure": 100,
        },
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": TYPE + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
            }
        },
    }


def _upstream_filters() -> list[dict[str, Any]]:
    """Every attempt's chain, after host selection: shape the request for the backend."""
    return [
        _header_mutation(),
        _lua("backend_shaper", _backend_shaper_lua()),
        {
            "name": "envoy.filters.http.upstream_codec",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"
            },
        },
    ]


@functools.cache
def _plaintext() -> dict[str, Any]:
    return {
        "name": "plaintext",
        "match": {},
        "transport_socket": {
            "name": "envoy.transport_sockets.raw_buffer",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.transport_sockets.raw_buffer.v3.RawBuffer"
            },
        },
    }


def _tls_match(backend: BackendRoute, backend_tls: BackendTLS | None) -> dict[str, Any]:
    host = urlsplit(backend.url).hostname or ""
    # CA certificates are public: they may travel over xDS, unlike keys.
    roots = (
        {"inline_string": backend_tls.ca_bundle}
        if backend_tls is not None and backend_tls.covers(host)
        else {"filename": SYSTEM_CA_BUNDLE}
    )
    return {
        "name": f"tls-{backend.name}",
        "match": {"backend": backend.name},
        "transport_socket": {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": roots,
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": host}}
                        ],
                    }
                },
            },
        },
    }


def _lb_endpoint(backend: BackendRoute) -> dict[str, Any]:
    url = urlsplit(backend.url)
    terms, placement = backend.terms, backend.placement
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    hostname = url.hostname if url.port is None else f"{url.hostname}:{port}"
    return {
        "endpoint": {
            "address": {"socket_address": {"address": url.hostname, "port_value": port}},
            "hostname": hostname,
        },
        "metadata": {
            "filter_metadata": {
                "envoy.transport_socket_match": {"backend": backend.name},
                METADATA_NAMESPACE: {
                    "backend": backend.name,
                    "api": str(terms.api or ""),
                    "auth": f"{terms.auth.header}:{terms.auth.prefix}",
                    "credentials": backend.credentials_key or "",
                    "path_base": terms.path_base(placement),
                    "query": terms.query(placement),
                    "model": backend.upstream_model,
                    "headers": ",".join(f"{k}:{v}" for k, v in terms.request_headers.items()),
                    "chat_call": _calls(terms.chat_call),
                    "body": json.dumps(terms.body_fields) if terms.body_fields else "",
                    "signing": f"{terms.signing}:{backend.region}" if terms.signing else "",
                    # What the host header becomes (auto_host_rewrite), which the signature
                    # covers: the rewrite itself comes only after the upstream filters.
                    "host": hostname if terms.signing else "",
                    "converse": _calls(terms.converse),
                    "errors": "cloud" if terms.cloud_errors else "",
                },
            }
        },
    }


def _calls(call: ChatCall | None) -> str:
    return f"{call.whole}|{call.streamed}" if call else ""


def _header_mutation() -> dict[str, Any]:
    removals = [{"remove": h} for h in (*AUTH_HEADERS, *SCRATCH.values())]
    additions = [
        {
            "append": {
                "header": {
                    "key": header,
                    "value": f"%UPSTREAM_METADATA({METADATA_NAMESPACE}:{field})%",
                },
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        }
        for field, header in SCRATCH.items()
    ]
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": removals + additions},
        },
    }


# The control channel's TLS: Envoy's certificate and the CAs it trusts come over SDS from
# files (see `xds_sds_files`), so that a renewed certificate or CA needs no restart.
XDS_CERTIFICATE_SECRET = "switchyard-xds-certificate"
XDS_TRUST_SECRET = "switchyard-xds-trust"
XDS_CERTIFICATE_SDS = "xds-certificate.json"
XDS_TRUST_SDS = "xds-trust.json"
SECRET_TYPE = TYPE + "envoy.extensions.transport_sockets.tls.v3.Secret"


@dataclass(frozen=True)
class XdsTls:
    """Where an Envoy finds its control-channel credentials: `certificates` holds the
    gateway's control-channel Secret (tls.crt, tls.key, ca.crt) as the kubelet mounts it;
    `sds` holds the two files of `xds_sds_files`."""

    certificates: str
    sds: str


def xds_sds_files(certificates: str) -> dict[str, dict[str, Any]]:
    """The SDS files (by file name) that hand Envoy its control-channel certificate and the
    operator's CAs, read from the files in `certificates`. Each secret watches that
    directory: the kubelet's atomic swap of a mounted Secret (`..data`) makes Envoy read
    the files again, and new connections to the operator use them; established ones keep
    what they negotiated."""
    watched = {"path": certificates}
    certificate = {
        "@type": SECRET_TYPE,
        "name": XDS_CERTIFICATE_SECRET,
        "tls_certificate": {
            "certificate_chain": {"filename": f"{certificates}/{pki.TLS_CERT}"},
            "private_key": {"filename": f"{certificates}/{pki.TLS_KEY}"},
            "watched_directory": watched,
        },
    }
    trust = {
        "@type": SECRET_TYPE,
        "name": XDS_TRUST_SECRET,
        "validation_context": {
            "trusted_ca": {"filename": f"{certificates}/{pki.TLS_CA}"},
            "watched_directory": watched,
            # The operator, not merely anything the CA signed (a gateway's certificate).
            "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": pki.OPERATOR_ID}}
            ],
        },
    }
    return {
        XDS_CERTIFICATE_SDS: {"resources": [certificate]},
        XDS_TRUST_SDS: {"resources": [trust]},
    }


def _xds_transport_socket(tls: XdsTls) -> dict[str, Any]:
    def from_file(name: str, file: str) -> dict[str, Any]:
        source = {"path_config_source": {"path": f"{tls.sds}/{file}",
                                         "watched_directory": {"path": tls.sds}},
                  "resource_api_version": "V3"}  # fmt: skip
        return {"name": name, "sds_config": source}

    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": TYPE + "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {
                "tls_certificate_sds_secret_configs": [
                    from_file(XDS_CERTIFICATE_SECRET, XDS_CERTIFICATE_SDS)
                ],
                "validation_context_sds_secret_config": from_file(XDS_TRUST_SECRET, XDS_TRUST_SDS),
            },
        },
    }


def bootstrap(
    node: str,
    xds_host: str,
    xds_port: int,
    admin_port: int = 9901,
    node_metadata: dict[str, Any] | None = None,
    tls: XdsTls | None = None,
    stats_port: int | None = None,
) -> dict[str, Any]:
    """Envoy's static bootstrap: who it is, where the operator's ADS server is, and (with
    `stats_port`) where Prometheus reads its stats; nothing else. Everything it serves
    arrives over ADS; if the operator goes away, Envoy keeps serving the last config it
    accepted.

    The ADS connection is kept honest from Envoy's side: HTTP/2 pings every 15 s (and TCP
    keepalive under them) close a connection whose peer vanished without a FIN within about
    half a minute, and a lost stream is retried within 2 s, so a restarted operator reaches
    every gateway within seconds. (Envoy's defaults: no keepalive at all, and a retry
    back-off of 0.5 s doubling to 30 s.) The server's side is in `switchyard.xds.server`.

    With `tls` (every gateway Envoy; the operator serves nothing in plain text), the xDS
    cluster, which carries the failed-attempt reports too, speaks mutual TLS: Envoy shows
    the gateway's certificate and accepts only the operator's."""
    config: dict[str, Any] = {
        "node": {"id": node, "cluster": "switchyard", "metadata": node_metadata or {}},
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            # How soon a lost ADS stream is opened again: jittered, doubling
                            # from base_interval, never longer than max_interval.
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.25s", "max_interval": "2s"}
                            },
                        }
                    }
                ],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {
            "clusters": [
                {
                    "name": XDS_CLUSTER,
                    "type": "STRICT_DNS",
                    "connect_timeout": "2s",
                    # Under the HTTP/2 pings below, the kernel's own check: after 30 s idle,
                    # 3 probes 10 s apart.
                    "upstream_connection_options": {
                        "tcp_keepalive": {
                            "keepalive_time": 30,
                            "keepalive_interval": 10,
                            "keepalive_probes": 3,
                        }
                    },
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                            "@type": TYPE
                            + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                            "explicit_http_config": {
                                "http2_protocol_options": {
                                    # A ping every 15 s; no answer within 10 s closes the
                                    # connection, and the stream is opened anew.
                                    "connection_keepalive": {"interval": "15s", "timeout": "10s"}
                                }
                            },
                        }
                    },
                    "load_assignment": {
                        "cluster_name": XDS_CLUSTER,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": xds_host,
                                                    "port_value": xds_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
            ]
        },
    }
    if tls is not None:
        config["static_resources"]["clusters"][0]["transport_socket"] = _xds_transport_socket(tls)
    if stats_port is not None:
        config["static_resources"]["clusters"].append(_admin_cluster(admin_port))
        config["static_resources"]["listeners"] = [_stats_listener(stats_port)]
    return config


ADMIN_CLUSTER = "switchyard-admin"
STATS_PATH = "/stats/prometheus"
# Where a gateway Pod's Envoy serves its stats (the port named "metrics").
STATS_PORT = 9902


def _admin_cluster(admin_port: int) -> dict[str, Any]:
    address = {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
    return {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": address}}]}],
        },
    }


def _stats_listener(port: int) -> dict[str, Any]:
    """Envoy's stats in Prometheus's format on `port`, and nothing else of its admin API
    (which could drain or stop it): the per-client counters among them."""
    routes = [
        {"match": {"path": STATS_PATH}, "route": {"cluster": ADMIN_CLUSTER}},
        {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
    ]
    manager = {
        "stat_prefix": "switchyard_stats",
        "route_config": {"virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": routes}]},
        "http_filters": [_router_only()],
    }
    return _http_listener("switchyard-stats", port, manager)


def _router_only() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": TYPE + "envoy.extensions.filters.http.router.v3.Router"},
    }
