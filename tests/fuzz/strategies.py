"""Hypothesis strategies for ModelEndpoint and ModelGateway specs across the whole API surface.

A spec is drawn valid but odd wherever the API allows it (those reach the operator), and one
spec in five then gets one change the CRD must refuse: drawing every field from a mix of
valid and invalid values would leave almost no spec whole, a spec having thirty fields.
Whether a spec is valid is the API server's call, never this module's: some odd values here
(a URL without a host, an IPv6 zone) are for it to judge.

Namespaces are written as role tokens (`@team-a`), which the fuzz world replaces with the
namespaces of its run, so that an example saved in Hypothesis' database replays in any run.
"""

from __future__ import annotations

import copy
import datetime
import functools
import hashlib
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import strategies as st

from switchyard.api.models import parse_duration, parse_quantity

T = TypeVar("T")
Spec = dict[str, Any]

# Namespace roles. GATEWAYS holds every fuzzed gateway; all four hold endpoints.
GATEWAYS = "@gateways"
TEAM_A = "@team-a"
TEAM_B = "@team-b"
PLAIN = "@plain"
MISSING_NAMESPACE = "@missing"  # never created: a gatewayRef may name it
ENDPOINT_NAMESPACES = (GATEWAYS, TEAM_A, TEAM_B, PLAIN)
# Labels of each namespace, besides kubernetes.io/metadata.name and the run's own label.
NAMESPACE_LABELS: dict[str, dict[str, str]] = {
    GATEWAYS: {"tier": "infra"},
    TEAM_A: {"team": "a", "tier": "app"},
    TEAM_B: {"team": "b", "tier": "app", "switchyard.dev/gateway-access": "granted"},
    PLAIN: {},
}

# What TEAM_B's labels change to from one round to the next (a gateway's Selector admits
# it or not), the first being the labels it starts with.
TEAM_B_LABELS: tuple[dict[str, str], ...] = (
    NAMESPACE_LABELS[TEAM_B],
    {"team": "b"},
    {"team": "a", "tier": "infra"},
)

# The Secrets of every endpoint namespace, and which of their keys resolve (hold a value that
# is not blank). Their values are fake keys made by the fuzz world, never printed.
SECRETS: dict[str, dict[str, bool]] = {
    "keys": {"api-key": True, "other": True, "empty": False, "blank": False, "padded": True},
}
# ...and one more in TEAM_A only, which comes and goes from one round to the next.
TEAM_A_SECRETS: dict[str, dict[str, bool]] = {"more-keys": {"api-key": True}}

# Gateway names, fixed so that gateways live on from one batch to the next (their updates
# are fuzzed too), with the edges of a DNS subdomain: dots, a leading digit, names at and past
# the 63 characters of a label, which derived Service names and label values must respect.
GATEWAY_NAMES = (
    "shared",
    "edge",
    "gw.v2",
    "1st",
    "x" * 52,
    "y" * 53,
    "a" * 62 + "-b",
    "long-" + "l" * 248,
)
ENDPOINT_SLOTS = tuple(f"e{index:02d}" for index in range(48))


def weighted(*options: tuple[int, st.SearchStrategy[T]]) -> st.SearchStrategy[T]:
    """One of `options`, each drawn with its weight; shrinks toward the first."""
    total = sum(weight for weight, _ in options)

    def pick(roll: int) -> st.SearchStrategy[T]:
        for weight, strategy in options:
            if roll < weight:
                return strategy
            roll -= weight
        raise AssertionError("unreachable")

    # Over a small range Hypothesis makes every choice about as often (it seeks choices it
    # has not made yet), whatever the weights: roll in a wide range instead.
    return st.integers(0, 2**32 - 1).map(lambda roll: roll % total).flatmap(pick)


def one_in(odds: int) -> st.SearchStrategy[bool]:
    """True once in `odds` draws; shrinks to False."""
    return weighted((odds - 1, st.just(False)), (1, st.just(True)))


def _values(*values: T) -> st.SearchStrategy[T]:
    return st.sampled_from(values)


# Text that JSON and the API server carry faithfully: no lone surrogates.
_ANY_CHARACTER = st.characters(codec="utf-8", exclude_categories=["Cs"])
_DNS_CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789"


# --- names


@functools.cache
def dns_labels(max_size: int = 63) -> st.SearchStrategy[str]:
    edge = st.sampled_from(_DNS_CHARACTERS)
    inner = st.text(_DNS_CHARACTERS + "-", max_size=max_size - 2)
    return weighted(
        (6, _values("a", "b", "openai", "azure-eastus", "claude", "llama", "x-1")),
        (2, edge),
        (6, st.tuples(edge, inner, edge).map("".join)),
        (1, st.just("z" * max_size)),
        (1, st.just("0" + "-" * (max_size - 2) + "9")),
        (1, st.just("xn--bcher-kva")),
    )


@functools.cache
def dns_subdomains() -> st.SearchStrategy[str]:
    labels = st.lists(dns_labels(20), min_size=1, max_size=4).map(".".join)
    return weighted((4, labels), (1, st.just("s" * 253)), (1, st.just("a." * 126 + "b")))


# --- model names: what clients send, and what providers are sent


@functools.cache
def model_names() -> st.SearchStrategy[str]:
    odd = _values(
        "gpt-4o",
        "chat",
        "claude-sonnet-4-5",
        "llama-3.1-8b-instruct",
        "meta-llama/Llama-3.1-8B-Instruct",
        "org/model:tag@sha256",
        'say "hi"',
        "back\\slash",
        "it's",
        "名前のモデル",
        "🦙🦙",
        " leading space",
        "trailing space ",
        "%2F..%2F",
        "../../etc/passwd",
        "{{template}}",
        "${ENV}",
        "line\nbreak",
        "tab\there",
        "carriage\rreturn",
        "nul\x00byte",
        "null",
        "true",
        "0",
        "[]",
        "<script>",
        "a" * 253,
        "é" * 253,
        "/",
        "*",
        "-",
    )
    return weighted(
        (5, odd),
        (4, st.text(_ANY_CHARACTER, min_size=1, max_size=30)),
        (1, st.text("ab/.:-_ ", min_size=200, max_size=253)),
    )


# --- URLs


@functools.cache
def hosts() -> st.SearchStrategy[str]:
    # Names that never resolve, loopback with nothing listening, documentation addresses:
    # the operator's probes fail fast and reach no one.
    resolvable_nowhere = st.tuples(
        st.lists(dns_labels(20), min_size=1, max_size=3).map(".".join),
        _values("invalid", "example", "svc", "svc.cluster.local", "test", "internal"),
    ).map(".".join)
    odd = _values(
        "localhost",
        "127.0.0.1",
        "127.1.2.3",
        "192.0.2.10",
        "[::1]",
        "[2001:db8::1]",
        "[::ffff:127.0.0.1]",
        "bücher.example",
        "xn--bcher-kva.example",
        "UPPER.Example",
        "trailing-dot.example.",
        "under_score.example",
        "a" * 63 + ".example",
        "0.0.0.0",
        "h",
        "1",
        "999.999.999.999",
        "[fe80::1%25eth0]",
        "",
    )
    return weighted((3, resolvable_nowhere), (2, odd))


@functools.cache
def _ports() -> st.SearchStrategy[str | None]:
    return weighted(
        (4, st.none()),
        (3, _values("1", "80", "443", "8000", "8443", "65535", "0080", "", "000000000443")),
        (2, st.integers(1, 65535).map(str)),
    )


@functools.cache
def _paths() -> st.SearchStrategy[str]:
    return weighted(
        (4, st.just("")),
        (
            3,
            _values(
                "/",
                "/v1",
                "/v1/",
                "/openai",
                "/a/b/c/",
                "//double",
                "/with space",
                "/%20encoded",
                "/ünïcode",
                "/semi;colon",
                "/..",
                "/a?q=1",
                "?only=query",
                "?",
                "/p?api-version=2024-10-21&x=%2F",
            ),
        ),
        (1, st.text("abc/-._~", max_size=40).map(lambda s: "/" + s)),
    )


@functools.cache
def urls() -> st.SearchStrategy[str]:
    scheme = weighted((10, _values("http", "https")), (1, _values("HTTP", "Https")))
    userinfo = weighted((12, st.just("")), (1, _values("user@", "user:p%40ss@", "@")))

    def assemble(parts: tuple[str, str, str, str | None, str]) -> str:
        scheme, userinfo, host, port, path = parts
        return f"{scheme}://{userinfo}{host}{'' if port is None else ':' + port}{path}"

    return st.tuples(scheme, userinfo, hosts(), _ports(), _paths()).map(assemble)


# --- backends

PROVIDERS_WITH_DEFAULT_URL = ("OpenAI", "Anthropic")
PROVIDERS_NEEDING_KEY = ("OpenAI", "AzureOpenAI", "Anthropic", "GCPVertexAI", "AWSBedrock")
SERVED_PROVIDERS = (
    "OpenAI", "AzureOpenAI", "Anthropic", "OpenAICompatible", "GCPVertexAI", "AWSBedrock",
)  # fmt: skip
REGIONAL = ("GCPVertexAI", "AWSBedrock")
# Bedrock serves Claude (InvokeModel, Converse) and every other model (Converse), named as
# Bedrock names them; other names are refused.
BEDROCK_MODELS = ("anthropic.claude-x-v1:0", "us.anthropic.claude-y-v1:0", "amazon.nova-pro-v1:0")
# Vertex AI's models are Claude as Vertex names them or publisher/model; the rest refused.
VERTEX_MODELS = ("claude-sonnet-4@20250514", "claude-x", "google/gemini-2.5-flash", "meta/l@1")


@functools.cache
def credentials_refs() -> st.SearchStrategy[Spec]:
    name = weighted(
        (12, st.just("keys")),
        (2, st.just("more-keys")),
        (2, st.just("missing-secret")),
        (1, st.just("s" * 253)),
    )
    key = weighted(
        (10, st.just("api-key")),
        (2, _values("other", "padded")),
        (2, _values("empty", "blank")),
        (2, _values("absent-key", "k" * 253, ".dotted", "UPPER_case-1")),
    )
    return st.fixed_dictionaries({"name": name, "key": key})


@st.composite
def backends(draw: st.DrawFn, name: str) -> Spec:
    """A backend with the fields its provider needs: its url (OpenAI and Anthropic have a
    default one), apiVersion on Azure only, a key where the provider needs one."""
    provider = draw(st.sampled_from(SERVED_PROVIDERS))
    backend: Spec = {"name": name, "provider": provider, "model": draw(model_names())}
    if provider == "GCPVertexAI":
        if not draw(one_in(10)):
            backend["model"] = draw(st.sampled_from(VERTEX_MODELS))
        backend["region"] = draw(_values("us-east5", "global", "europe-west1"))
        backend["project"] = draw(_values("proj-1", "acme-llm-prod"))
    if provider == "AWSBedrock":
        if not draw(one_in(10)):
            backend["model"] = draw(st.sampled_from(BEDROCK_MODELS))
        backend["region"] = draw(_values("us-east-1", "eu-west-3"))
        if draw(st.booleans()):
            backend["authentication"] = "SigV4"
    # Without a url, OpenAI and Anthropic backends are probed at the public APIs (with a
    # fake key), and Vertex AI's derived from its region: kept rare.
    if provider not in (*PROVIDERS_WITH_DEFAULT_URL, *REGIONAL) or not draw(one_in(25)):
        backend["url"] = draw(urls())
    if provider == "AzureOpenAI" and draw(st.booleans()):
        backend["apiVersion"] = draw(_values("2024-10-21", "2025-04-01-preview", "0000-00-00"))
    if provider in PROVIDERS_NEEDING_KEY or draw(st.booleans()):
        backend["credentialsRef"] = draw(credentials_refs())
    if not draw(one_in(4)):
        backend["weight"] = draw(weighted((8, st.integers(1, 1000)), (1, _values(0, 1, 999, 1000))))
    if draw(st.booleans()):
        backend["priority"] = draw(
            # Beyond 2**53 a JSON number loses digits on its way through kubectl.
            weighted((10, _values(0, 1, 2)), (1, _values(7, 2**31 - 1, 2**31, 2**53)))
        )
    return backend


@functools.cache
@st.composite
def backend_lists(draw: st.DrawFn) -> list[Spec]:
    count = draw(weighted((5, st.integers(1, 4)), (1, st.integers(5, 16))))
    names = draw(st.lists(dns_labels(), min_size=count, max_size=count, unique=True))
    listed = [draw(backends(name)) for name in names]
    if draw(one_in(12)):
        # Every weight of one tier at 0: admitted, and reported by the operator.
        tier = listed[0].get("priority", 0)
        for backend in listed:
            if backend.get("priority", 0) == tier:
                backend["weight"] = 0
    return listed


# --- durations, health checks, retries

ORDINARY_DURATIONS = ("1s", "5s", "15s", "30s", "1m", "500ms", "2m30s", "1.5s", "90s")
ODD_DURATIONS = (
    "1ms",
    "10ms",
    "1.5ms",
    "0.001s",
    "1h1m1s1ms",
    "24h",
    "23h59m59s",
    "1440m",
    "1.0s",
    "0001s",
    "1m0s",
    "1s1s",
)
# Refused at apply: malformed, or outside 1ms..24h (300h once rendered as 1.08e+06s; a
# number of over 6 digits could overflow CEL's duration).
INVALID_DURATIONS = (
    "0s",
    "0ms",
    "0.5ms",
    "0.00001ms",
    "-1s",
    "15",
    "15 seconds",
    "1d",
    "",
    "1.s",
    ".5s",
    "s",
    "24h1ms",
    "300h",
    "1000000s",
    "2562047h",
    "0.0000000001ms",
    "9999999999h",
)


@functools.cache
def durations() -> st.SearchStrategy[str]:
    return weighted((3, st.sampled_from(ORDINARY_DURATIONS)), (2, st.sampled_from(ODD_DURATIONS)))


@functools.cache
@st.composite
def health_checks(draw: st.DrawFn) -> Spec:
    check: Spec = {}
    interval, timeout = draw(durations()), draw(durations())
    if parse_duration(timeout) > parse_duration(interval):
        interval, timeout = timeout, interval
    if draw(st.booleans()):
        check["interval"] = interval
        # The default timeout (5s) must fit a shorter interval: mostly give one that does.
        if (parse_duration(interval) < 5 and not draw(one_in(8))) or draw(st.booleans()):
            check["timeout"] = timeout
    elif parse_duration(timeout) <= parse_duration("15s") and draw(st.booleans()):
        check["timeout"] = timeout  # within the default interval
    for threshold in ("unhealthyThreshold", "healthyThreshold"):
        if draw(st.booleans()):
            check[threshold] = draw(weighted((3, st.integers(1, 5)), (1, _values(1, 100))))
    return check


@functools.cache
@st.composite
def retries(draw: st.DrawFn) -> Spec:
    retry: Spec = {}
    if draw(st.booleans()):
        retry["attempts"] = draw(st.integers(0, 10))
    if draw(st.booleans()):
        retry["perTryTimeout"] = draw(durations())
    if draw(st.booleans()):
        conditions = ["ConnectFailure", "ServerError", "RateLimited", "Timeout"]
        retry["retryOn"] = draw(st.lists(st.sampled_from(conditions), unique=True, max_size=4))
    return retry


# --- endpoints


@functools.cache
def gateway_refs(batch_gateways: tuple[str, ...]) -> st.SearchStrategy[Spec]:
    """Mostly a gateway of the same batch (which may still be refused at apply), so that
    most endpoints reach a gateway's pass."""
    name = weighted(
        (24, st.sampled_from(batch_gateways)),
        (1, st.sampled_from(GATEWAY_NAMES)),
        (1, st.just("missing-gateway")),
        (1, dns_subdomains()),
    )
    namespace = weighted(
        (14, st.just(GATEWAYS)),
        (3, st.none()),  # the endpoint's own: a gateway only for endpoints in GATEWAYS
        (1, _values(TEAM_A, MISSING_NAMESPACE)),
    )

    def assemble(parts: tuple[str, str | None]) -> Spec:
        ref: Spec = {"name": parts[0]}
        if parts[1] is not None:
            ref["namespace"] = parts[1]
        return ref

    return st.tuples(name, namespace).map(assemble)


@functools.cache
@st.composite
def valid_endpoint_specs(draw: st.DrawFn, batch_gateways: tuple[str, ...]) -> Spec:
    spec: Spec = {
        "gatewayRef": draw(gateway_refs(batch_gateways)),
        "model": draw(model_names()),
        "backends": draw(backend_lists()),
    }
    if draw(one_in(3)):
        spec["healthCheck"] = draw(health_checks())
    if draw(one_in(3)):
        spec["retry"] = draw(retries())
    if draw(one_in(4)):
        spec["allowedClients"] = draw(allowed_endpoints())  # the same namespace policy
    return spec


# --- changes the CRD must refuse, one per broken spec

Breaker = Callable[[Spec], None]


def _set(path: tuple[str, ...], value: Any) -> Breaker:
    def change(target: Spec) -> None:
        for part in path[:-1]:
            target = target.setdefault(part, {})
        target[path[-1]] = value

    return change


@functools.cache
@st.composite
def _endpoint_breakers(draw: st.DrawFn) -> Breaker:
    """One change that makes an endpoint spec invalid (to the API server, which decides)."""
    bad_label = _values("-a", "a-", "A", "a_b", "a.b", "", "ü", "a" * 64, "a b")
    bad_port = _values("0", "65536", "99999", "-1", "http", "١٢٣")
    bad_url = weighted(
        (
            2,
            _values(
                "not a url",
                "ftp://models.example",
                "http://h#fragment",
                "//no-scheme",
                "https:///v1",
                "https://:",
                "http://user:pw@h",
            ),
        ),
        (1, bad_port.map(lambda port: f"http://models.example:{port}")),
    )
    on_backend: dict[str, st.SearchStrategy[Breaker]] = {
        "weight": _values(-1, 1001).map(lambda v: _set(("weight",), v)),
        "priority": st.just(_set(("priority",), -1)),
        "name": bad_label.map(lambda v: _set(("name",), v)),
        "provider": _values("Mistral", "openai", "", "AWSBedrock", "GCPVertexAI").map(
            lambda v: _set(("provider",), v)
        ),
        "model": _values("", "m" * 254).map(lambda v: _set(("model",), v)),
        "url": bad_url.map(lambda v: _set(("url",), v)),
        "url missing": st.just(_without("url", "provider", "OpenAICompatible")),
        "key missing": st.just(_without("credentialsRef", "provider", "Anthropic")),
        "apiVersion": st.just(_set(("apiVersion",), "2024-10-21")),
        "apiVersion on Azure": _values("v1", "2024-1-1", "latest").map(
            lambda v: _azure_with_version(v)
        ),
        "secret name": _values("Keys", "a_b", "").map(
            lambda v: _set(("credentialsRef", "name"), v)
        ),
        "secret key": _values("bad/key", "", "k" * 254).map(
            lambda v: _set(("credentialsRef", "key"), v)
        ),
    }
    spec_wide: dict[str, st.SearchStrategy[Breaker]] = {
        "no backends": st.just(_set(("backends",), [])),
        "17 backends": st.just(_seventeen_backends),
        "duplicate names": st.just(_duplicate_backend),
        "model": _values("", "m" * 254).map(lambda v: _set(("model",), v)),
        "gateway name": _values("Not_Valid", "", "-x").map(
            lambda v: _set(("gatewayRef", "name"), v)
        ),
        "gateway namespace": _values("Bad_NS", "n" * 64).map(
            lambda v: _set(("gatewayRef", "namespace"), v)
        ),
        "required": _values("gatewayRef", "model", "backends").map(_drop),
        "interval": st.sampled_from(INVALID_DURATIONS).map(
            lambda v: _set(("healthCheck", "interval"), v)
        ),
        "timeout": st.sampled_from(INVALID_DURATIONS).map(
            lambda v: _set(("healthCheck", "timeout"), v)
        ),
        "timeout over interval": st.just(
            _set(("healthCheck",), {"interval": "5s", "timeout": "6s"})
        ),
        "threshold": st.tuples(
            _values("unhealthyThreshold", "healthyThreshold"), _values(0, 101)
        ).map(lambda pair: _set(("healthCheck", pair[0]), pair[1])),
        "attempts": _values(-1, 11).map(lambda v: _set(("retry", "attempts"), v)),
        "perTryTimeout": st.sampled_from(INVALID_DURATIONS).map(
            lambda v: _set(("retry", "perTryTimeout"), v)
        ),
        "retryOn": _values(["ConnectFailure", "ConnectFailure"], ["Everything"], ["on"]).map(
            lambda v: _set(("retry", "retryOn"), v)
        ),
    }
    kind = draw(st.sampled_from(sorted(on_backend) + sorted(spec_wide)))
    if kind in spec_wide:
        return draw(spec_wide[kind])
    change = draw(on_backend[kind])
    index = draw(st.integers(0, 15))

    def on_one_backend(spec: Spec) -> None:
        listed = spec["backends"]
        change(listed[index % len(listed)])

    return on_one_backend


def _without(field: str, key: str, value: str) -> Breaker:
    def change(backend: Spec) -> None:
        backend.pop(field, None)
        backend[key] = value

    return change


def _azure_with_version(version: str) -> Breaker:
    def change(backend: Spec) -> None:
        backend.update(provider="AzureOpenAI", apiVersion=version)
        backend.setdefault("url", "https://contoso.openai.azure.example")
        backend.setdefault("credentialsRef", {"name": "keys", "key": "api-key"})

    return change


def _seventeen_backends(spec: Spec) -> None:
    template = spec["backends"][0]
    spec["backends"] = [{**template, "name": f"b{index}"} for index in range(17)]


def _duplicate_backend(spec: Spec) -> None:
    spec["backends"].append(copy.deepcopy(spec["backends"][0]))


def _drop(field: str) -> Breaker:
    def change(spec: Spec) -> None:
        spec.pop(field, None)

    return change


@functools.cache
@st.composite
def endpoint_specs(draw: st.DrawFn, batch_gateways: tuple[str, ...] = GATEWAY_NAMES[:2]) -> Spec:
    spec = draw(valid_endpoint_specs(batch_gateways))
    if draw(one_in(5)):
        draw(_endpoint_breakers())(spec)
    return spec


# --- gateways

# Quantities in increasing order, in the forms the API allows: requests are drawn no
# larger than limits.
CPU = ("1n", "0.001", "100m", ".5", "500m", "1", "1.", "1e0", 1, "1500m", "2", 2, "2000m", "64")
MEMORY = ("1", "1e6", "64Mi", "65536Ki", "128Mi", "134217728", "0.5Gi", "1Gi", "1024Mi", "2G")
MIN_MEMORY_LIMIT = 2  # MEMORY[2] is 64Mi, the least memory limit


@functools.cache
@st.composite
def resource_requirements(draw: st.DrawFn) -> Spec:
    resources: Spec = {}
    for name, scale, floor in (("cpu", CPU, 0), ("memory", MEMORY, MIN_MEMORY_LIMIT)):
        limit = draw(st.integers(floor, len(scale) - 1))
        request = draw(st.integers(0, limit))
        if draw(st.booleans()):
            resources.setdefault("limits", {})[name] = scale[limit]
        if draw(st.booleans()):
            resources.setdefault("requests", {})[name] = scale[request]
    for part in ("requests", "limits"):
        if part not in resources and draw(one_in(6)):
            resources[part] = {}
    return resources


@functools.cache
@st.composite
def data_planes(draw: st.DrawFn) -> Spec:
    plane: Spec = {}
    if draw(one_in(6)):
        plane["type"] = "Envoy"
    if draw(st.booleans()):
        # Few replicas: on the fuzz cluster they are Pods that never start, but are stored.
        plane["replicas"] = draw(weighted((30, st.integers(0, 3)), (1, st.just(100))))
    if draw(one_in(3)):
        plane["resources"] = draw(resource_requirements())
    return plane


@functools.cache
def listener_ports() -> st.SearchStrategy[int]:
    return weighted(
        (3, _values(8080, 80, 443, 1, 1023, 1024, 9901, 18000, 65535)),
        (2, st.integers(1, 65535)),
    )


LABEL_KEYS = (
    "team",
    "tier",
    "kubernetes.io/metadata.name",
    "switchyard.dev/gateway-access",
    "absent",
    "example.com/a/b",
    "UPPER",
    "",
)
LABEL_VALUES = ("a", "b", "app", "infra", "granted", "", "x" * 63, GATEWAYS, TEAM_A, TEAM_B)


@functools.cache
@st.composite
def label_selectors(draw: st.DrawFn) -> Spec:
    selector: Spec = {}
    if draw(st.booleans()):
        selector["matchLabels"] = draw(
            st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=2)
        )
    if draw(st.booleans()):
        requirement = st.fixed_dictionaries(
            {
                "key": st.sampled_from(LABEL_KEYS),
                "operator": st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]),
            },
            optional={"values": st.lists(st.sampled_from(LABEL_VALUES), max_size=3)},
        )
        selector["matchExpressions"] = draw(st.lists(requirement, max_size=3))
    return selector


@functools.cache
@st.composite
def allowed_endpoints(draw: st.DrawFn) -> Spec:
    source = draw(_values("All", "Selector", "Selector", "Same"))
    policy: Spec = {"from": source}
    if source == "Selector":
        policy["selector"] = draw(label_selectors())
    return {"namespaces": policy}


def _certificate_authority() -> str:
    """A CA certificate (PEM), made once per run, for backendTLS."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "switchyard-fuzz-ca")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


CA_PEM = _certificate_authority()


@functools.cache
@st.composite
def backend_tls(draw: st.DrawFn) -> Spec:
    # The CRD admits any text as a caBundle: the operator reads the certificates, and a
    # bundle without one makes the gateway's spec invalid (tests/integration covers that).
    bundle = draw(weighted((6, st.just(CA_PEM)), (1, st.just(CA_PEM + CA_PEM))))
    # Wildcards over the domains the URLs use, so that the bundle covers some backends.
    hostname = weighted(
        (4, _values("*.example", "*.svc", "*.svc.cluster.local", "*.invalid", "*.internal")),
        (2, hosts().map(lambda host: host.strip("[]"))),
        (1, _values("*", "*.", "**.x", "*.test")),
    )
    hostnames = draw(st.lists(hostname.filter(bool), min_size=1, max_size=4, unique=True))
    return {"caBundle": bundle, "hostnames": hostnames}


@functools.cache
@st.composite
def valid_gateway_specs(draw: st.DrawFn) -> Spec:
    spec: Spec = {}
    if draw(st.booleans()):
        spec["dataPlane"] = draw(data_planes())
    if draw(st.booleans()):
        spec["listener"] = {"port": draw(listener_ports())}
    if not draw(one_in(3)):
        spec["allowedEndpoints"] = draw(allowed_endpoints())
    if draw(one_in(4)):
        spec["backendTLS"] = draw(backend_tls())
    if draw(one_in(4)):
        spec["clientAuth"] = {"mode": draw(st.sampled_from(["Required", "Disabled"]))}
    return spec


@functools.cache
@st.composite
def _gateway_breakers(draw: st.DrawFn) -> Breaker:
    """One change that makes a gateway spec invalid."""
    resources = {
        "cpu above 64": {"limits": {"cpu": "65"}},
        "negative cpu": {"requests": {"cpu": "-1"}},
        "not a quantity": {"requests": {"memory": "1.2.3"}},
        "huge quantity": {"limits": {"memory": "1e100"}},
        "memory limit below 64Mi": {"limits": {"memory": "63Mi"}},
        "zero limit": {"limits": {"cpu": "0"}},
        "unknown resource": {"requests": {"gpu": "1"}},
        "requests above limits": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}},
        "integer out of range": {"limits": {"cpu": 1000}},
    }
    changes: dict[str, st.SearchStrategy[Breaker]] = {
        "type": _values("LiteLLM", "Nginx").map(lambda v: _set(("dataPlane", "type"), v)),
        "replicas": _values(-1, 101).map(lambda v: _set(("dataPlane", "replicas"), v)),
        "port": _values(0, 65536, -1).map(lambda v: _set(("listener", "port"), v)),
        "resources": st.sampled_from(sorted(resources)).map(
            lambda k: _set(("dataPlane", "resources"), resources[k])
        ),
        "selector missing": st.just(
            _set(("allowedEndpoints",), {"namespaces": {"from": "Selector"}})
        ),
        "selector with Same": st.just(
            _set(("allowedEndpoints",), {"namespaces": {"from": "Same", "selector": {}}})
        ),
        "from": _values("Some", "").map(
            lambda v: _set(("allowedEndpoints",), {"namespaces": {"from": v}})
        ),
        "operator": st.just(
            _set(
                ("allowedEndpoints",),
                {
                    "namespaces": {
                        "from": "Selector",
                        "selector": {"matchExpressions": [{"key": "team", "operator": "Equals"}]},
                    }
                },
            )
        ),
        "hostnames": _values(
            [], ["dup.example", "dup.example"], [f"h{i}.example" for i in range(65)], [""]
        ).map(lambda v: _set(("backendTLS",), {"caBundle": CA_PEM, "hostnames": v})),
        "caBundle": st.just(_set(("backendTLS",), {"caBundle": "", "hostnames": ["a.example"]})),
        "clientAuth": _values("Optional", "", "required").map(
            lambda v: _set(("clientAuth", "mode"), v)
        ),
    }
    return draw(draw(st.sampled_from(sorted(changes)).map(changes.__getitem__)))


@functools.cache
@st.composite
def gateway_specs(draw: st.DrawFn) -> Spec:
    spec = draw(valid_gateway_specs())
    if draw(one_in(6)):
        draw(_gateway_breakers())(spec)
    return spec


# --- batches


@dataclass(frozen=True)
class EndpointDraft:
    namespace: str  # a role token
    name: str
    spec: Spec


@dataclass(frozen=True)
class GatewayDraft:
    name: str  # in GATEWAYS
    spec: Spec


@dataclass(frozen=True)
class Batch:
    """The whole fuzzed world for one round: fuzzed objects not named here are deleted."""

    gateways: tuple[GatewayDraft, ...]
    endpoints: tuple[EndpointDraft, ...]
    team_b_labels: int = 0  # an index into TEAM_B_LABELS
    team_a_secrets: bool = True  # whether TEAM_A_SECRETS exist


@st.composite
def batches(draw: st.DrawFn, endpoints: int, gateways: int = 3) -> Batch:
    names = draw(
        st.lists(
            weighted(
                (4, st.sampled_from(GATEWAY_NAMES[:2])),
                (4, st.sampled_from(GATEWAY_NAMES[2:])),
                (1, dns_subdomains()),
            ),
            min_size=gateways,
            max_size=gateways,
            unique=True,
        )
    )
    drafted_gateways = tuple(GatewayDraft(name, draw(gateway_specs())) for name in names)
    slots = draw(
        st.lists(
            st.sampled_from(ENDPOINT_SLOTS), min_size=endpoints, max_size=endpoints, unique=True
        )
    )
    drafted_endpoints = tuple(
        EndpointDraft(
            draw(st.sampled_from(ENDPOINT_NAMESPACES)), slot, draw(endpoint_specs(tuple(names)))
        )
        for slot in slots
    )
    surroundings = draw(weighted((3, st.just(0)), (1, st.integers(1, len(TEAM_B_LABELS) - 1))))
    return Batch(drafted_gateways, drafted_endpoints, surroundings, not draw(one_in(4)))


def canary_name(gateway: str) -> str:
    """The known-good endpoint kept on each gateway, in the gateway's namespace, serving a
    model no strategy makes."""
    return "canary-" + hashlib.sha256(gateway.encode()).hexdigest()[:10]


def canary_model(gateway: str) -> str:
    return f"switchyard-fuzz-canary/{canary_name(gateway)}"


def _quantities_are_ordered() -> bool:
    """CPU and MEMORY must stay in increasing order for requests to stay within limits."""
    return all(
        parse_quantity(str(a)) <= parse_quantity(str(b))
        for scale in (CPU, MEMORY)
        for a, b in itertools.pairwise(scale)
    )


assert _quantities_are_ordered()
