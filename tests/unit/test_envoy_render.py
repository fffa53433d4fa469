"""The Envoy config rendered from a plan, and the xDS snapshots built from it."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3.discovery_pb2 import DiscoveryRequest, DiscoveryResponse

from gatewaylab import envoy_refusal
from switchyard.api.models import BackendTLS
from switchyard.plan.clients import ClientsPlan, TokenIssuer, key_digest, plan_clients
from switchyard.plan.gateway import GatewayPlan, plan_gateway
from switchyard.providers.usage import TOTAL_KEYS
from switchyard.render.envoy import (
    CLIENTS_FILTER,
    CLUSTER_TYPE,
    CREDENTIALS_DIR_ENV,
    EXTENSION_TYPE,
    LISTENER_TYPE,
    LUA_FILES,
    METADATA_NAMESPACE,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    SCRATCH,
    RenderCache,
    bootstrap,
    duration,
    lua_literal,
    render,
)
from switchyard.render.rate_limits import RateLimitService, rate_limit_filter
from switchyard.xds.server import Packer, XdsServer, pack, version_of
from tests_support.plans import (
    ALL_KEYS,
    GATEWAY_KEY,
    client,
    endpoint,
    gateway,
    sample_clients,
    sample_plan,
)
from tests_support.tls import make_ca_and_server
from tests_support.tokens import Issuer


def local(name: str, weight: int = 1, priority: int = 0, url: str | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "OpenAICompatible",
        "model": f"{name}-model",
        "url": url or f"http://{name}.svc:8000",
        "weight": weight,
        "priority": priority,
    }


def rendered(*endpoints: Any, tls: BackendTLS | None = None) -> dict[str, list[dict[str, Any]]]:
    plan = plan_gateway(GATEWAY_KEY, gateway(), list(endpoints), {}, ALL_KEYS)
    return render(plan, 8080, tls)


def test_every_rendered_resource_is_valid_envoy_config() -> None:
    plan = plan_gateway(
        GATEWAY_KEY, gateway(), [endpoint("chat"), endpoint("other", backends=[local("a")])], {},
        ALL_KEYS,
    )  # fmt: skip
    issuer = Issuer()
    resources = render(
        plan, 8080, clients=sample_clients(plan), issuer=TokenIssuer(issuer.issuer, issuer.jwks())
    )
    for type_url, items in resources.items():
        assert pack(type_url, items).resources  # parses every typed_config it names
    names = [c["name"] for c in resources[CLUSTER_TYPE]]
    # Both chat APIs reach every backend; the rest of each API only those that serve it.
    assert names == [
        "switchyard/chat",
        "switchyard-anthropic/chat",
        "switchyard-openai/chat",
        "switchyard/other",
    ]


def test_durations_are_written_as_protobuf_reads_them() -> None:
    """`f"{x:g}"` wrote 300h as 1.08e+06s: packing failed, and with it every pass over the
    gateway. (Durations are now bounded at 24h as well.)"""
    assert [duration(s) for s in (86400, 1_080_000, 0.5, 0.001, 1e-8)] == [
        "86400s", "1080000s", "0.5s", "0.001s", "0.00000001s"]  # fmt: skip


def test_backends_become_weighted_localities_in_compact_priorities() -> None:
    backends = [local("a", 3), local("b", 1), local("idle", 0), local("c", 2, priority=5)]
    [cluster] = rendered(endpoint("m", backends=backends))[CLUSTER_TYPE]
    localities = {
        e["locality"]["sub_zone"]: (e["load_balancing_weight"], e["priority"])
        for e in cluster["load_assignment"]["endpoints"]
    }
    assert localities == {"a": (3, 0), "b": (1, 0), "c": (2, 1)}


def test_each_backend_carries_its_shape_in_metadata() -> None:
    everyone = rendered(endpoint("chat"))[CLUSTER_TYPE][0]
    shapes = {
        e["locality"]["sub_zone"]: e["lb_endpoints"][0]["metadata"]["filter_metadata"]["switchyard"]
        for e in everyone["load_assignment"]["endpoints"]
    }
    assert shapes["oai"]["path_base"] == "/v1"
    assert shapes["oai"]["credentials"] == "team-a_keys_openai"
    assert (shapes["oai"]["api"], shapes["oai"]["auth"]) == ("openai", "authorization:Bearer ")
    # The provider's terms, never its name: the Lua knows APIs, not providers.
    assert (shapes["claude"]["api"], shapes["claude"]["auth"]) == ("anthropic", "x-api-key:")
    assert "provider" not in shapes["claude"]
    assert shapes["claude"]["model"] == "claude"
    azure = {
        **local("az"),
        "provider": "AzureOpenAI",
        "url": "https://x.openai.azure.com",
        "apiVersion": "2024-10-21",
        "credentialsRef": {"name": "keys", "key": "openai"},
    }
    [cluster] = rendered(endpoint("m", backends=[azure]))[CLUSTER_TYPE]
    [locality] = cluster["load_assignment"]["endpoints"]
    shape = locality["lb_endpoints"][0]["metadata"]["filter_metadata"]["switchyard"]
    assert shape["path_base"] == "/openai/deployments/az-model"
    assert shape["query"] == "api-version=2024-10-21"
    assert shape["auth"] == "api-key:"
    # With Entra ID: the token minted from the app's credentials, as a bearer token.
    [cluster] = rendered(endpoint("m", backends=[azure | {"authentication": "EntraID"}]))[
        CLUSTER_TYPE
    ]
    [locality] = cluster["load_assignment"]["endpoints"]
    shape = locality["lb_endpoints"][0]["metadata"]["filter_metadata"]["switchyard"]
    assert shape["auth"] == "authorization:Bearer "
    assert shape["credentials"] == "team-a_keys_openai_EntraID"
    assert shape["path_base"] == "/openai/deployments/az-model"
    # Vertex AI: Claude by its path, with anthropic_version in the body and no header.
    vertex = {
        **local("vx"),
        "provider": "GCPVertexAI",
        "url": None,
        "region": "us-east5",
        "project": "proj-1",
        "model": "claude-x@20250101",
        "credentialsRef": {"name": "keys", "key": "openai"},
    }
    [cluster, *_] = rendered(endpoint("m", backends=[vertex]))[CLUSTER_TYPE]
    [locality] = cluster["load_assignment"]["endpoints"]
    endpoint_address = locality["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert endpoint_address == {"address": "us-east5-aiplatform.googleapis.com", "port_value": 443}
    shape = locality["lb_endpoints"][0]["metadata"]["filter_metadata"]["switchyard"]
    assert shape["path_base"] == (
        "/v1/projects/proj-1/locations/us-east5/publishers/anthropic/models/claude-x@20250101"
    )
    assert shape["chat_call"] == ":rawPredict|:streamRawPredict"
    assert json.loads(shape["body"]) == {"anthropic_version": "vertex-2023-10-16"}
    assert (shape["api"], shape["auth"], shape["headers"]) == (
        "anthropic",
        "authorization:Bearer ",
        "",
    )
    assert shape["credentials"] == "team-a_keys_openai_GoogleServiceAccount"
    # Bedrock: Claude by its path, no stream field, each attempt signed for its host.
    bedrock = {
        **local("br"),
        "provider": "AWSBedrock",
        "url": None,
        "region": "eu-west-3",
        "model": "eu.anthropic.claude-x-v1:0",
        "authentication": "SigV4",
        "credentialsRef": {"name": "keys", "key": "openai"},
    }
    [cluster, *_] = rendered(endpoint("m", backends=[bedrock]))[CLUSTER_TYPE]
    [locality] = cluster["load_assignment"]["endpoints"]
    shape = locality["lb_endpoints"][0]["metadata"]["filter_metadata"]["switchyard"]
    assert shape["path_base"] == "/model/eu.anthropic.claude-x-v1%3A0"
    assert shape["chat_call"] == "/invoke|/invoke-with-response-stream"
    assert json.loads(shape["body"]) == {"anthropic_version": "bedrock-2023-05-31", "stream": None}
    assert (shape["signing"], shape["host"]) == (
        "bedrock:eu-west-3",
        "bedrock-runtime.eu-west-3.amazonaws.com",
    )
    assert shape["headers"] == ""
    # A Bedrock API key instead: a bearer token, nothing signed.
    [cluster, *_] = rendered(endpoint("m", backends=[bedrock | {"authentication": "APIKey"}]))[
        CLUSTER_TYPE
    ]
    shape = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["metadata"][
        "filter_metadata"
    ]["switchyard"]
    assert (shape["auth"], shape["signing"], shape["host"]) == ("authorization:Bearer ", "", "")
    # Claude on Azure AI Foundry: Anthropic's API under the resource's /anthropic.
    foundry = {
        **local("foundry"),
        "provider": "Anthropic",
        "url": "https://team.services.ai.azure.com/anthropic",
        "credentialsRef": {"name": "keys", "key": "anthropic"},
    }
    [cluster, *_] = rendered(endpoint("m", backends=[foundry]))[CLUSTER_TYPE]
    [locality] = cluster["load_assignment"]["endpoints"]
    shape = locality["lb_endpoints"][0]["metadata"]["filter_metadata"]["switchyard"]
    assert (shape["path_base"], shape["auth"]) == ("/anthropic/v1", "x-api-key:")


def test_https_backends_get_their_own_sni_and_trust(tmp_path: Path) -> None:
    ca = make_ca_and_server(tmp_path, "vllm.models.svc")[0].read_text()
    backends = [
        local("pub", url="https://api.example.com"),
        local("priv", url="https://vllm.models.svc:8443"),
        local("plain"),
    ]
    tls = BackendTLS(ca_bundle=ca, hostnames=["*.models.svc"])
    [cluster] = rendered(endpoint("m", backends=backends), tls=tls)[CLUSTER_TYPE]
    matches = {m["name"]: m for m in cluster["transport_socket_matches"]}
    assert set(matches) == {"tls-pub", "tls-priv", "plaintext"}
    public = matches["tls-pub"]["transport_socket"]["typed_config"]
    private = matches["tls-priv"]["transport_socket"]["typed_config"]
    assert public["sni"] == "api.example.com"
    assert public["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "filename": "/etc/ssl/certs/ca-certificates.crt"
    }
    assert private["sni"] == "vllm.models.svc"
    assert private["common_tls_context"]["validation_context"]["trusted_ca"] == {
        "inline_string": ca
    }


def test_retries_go_to_other_backends_and_tiers() -> None:
    [route_config] = rendered(endpoint("chat"))[ROUTE_TYPE]
    routes = route_config["virtual_hosts"][0]["routes"]
    chat = next(r for r in routes if r.get("route", {}).get("cluster") == "switchyard/chat")
    policy = chat["route"]["retry_policy"]
    assert policy["num_retries"] == 2
    assert policy["retriable_status_codes"] == [401, 403, 429]
    assert "connect-failure" in policy["retry_on"]
    assert policy["retry_host_predicate"][0]["name"].endswith("previous_hosts")


def test_snapshots_change_only_when_the_config_does() -> None:
    server = XdsServer()
    assert server.set_snapshot("ns/gw", rendered(endpoint("chat", backends=[local("a", 1)])))
    versions = server.versions("ns/gw")
    assert not server.set_snapshot("ns/gw", rendered(endpoint("chat", backends=[local("a", 1)])))
    # A new weight changes the clusters only: listeners are not pushed again.
    assert server.set_snapshot("ns/gw", rendered(endpoint("chat", backends=[local("a", 2)])))
    assert server.versions("ns/gw")[LISTENER_TYPE] == versions[LISTENER_TYPE]
    assert server.versions("ns/gw")[CLUSTER_TYPE] != versions[CLUSTER_TYPE]
    status = server.status("ns/gw")
    assert (status.streams, status.programmed, status.rejection) == (0, False, None)


def test_the_listener_takes_its_routes_from_rds() -> None:
    resources = rendered(endpoint("chat"))
    [listener] = resources[LISTENER_TYPE]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    assert "route_config" not in manager
    assert manager["rds"] == {
        "config_source": {"ads": {}, "resource_api_version": "V3"},
        "route_config_name": ROUTE_CONFIG_NAME,
    }
    assert [r["name"] for r in resources[ROUTE_TYPE]] == [ROUTE_CONFIG_NAME]


def test_the_backend_shaper_is_configured_once_for_all_clusters() -> None:
    """One Lua filter config on the router, not one per cluster: Envoy runs a Lua VM per
    worker for each config, which at thousands of clusters costs gigabytes."""
    resources = many(3)
    for cluster in resources[CLUSTER_TYPE]:
        options = cluster["typed_extension_protocol_options"]
        assert (
            "http_filters" not in options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        )
    [listener] = resources[LISTENER_TYPE]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    router = manager["http_filters"][-1]["typed_config"]
    names = [f["name"] for f in router["upstream_http_filters"]]
    assert names == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.lua",
        "envoy.filters.http.upstream_codec",
    ]


def test_an_endpoint_change_leaves_the_listener_alone() -> None:
    """Adding, changing and removing endpoints pushes clusters and routes, never the listener:
    Envoy would otherwise replace its listener (and drain the old one) on every change."""
    server = XdsServer()
    cache = RenderCache()
    states = [
        [endpoint("chat", backends=[local("a")])],
        [endpoint("chat", backends=[local("a")]), endpoint("other", backends=[local("b")])],
        [endpoint("chat", backends=[local("a", 3)]), endpoint("other", backends=[local("b")])],
        [endpoint("other", backends=[local("b")])],
    ]
    seen: list[dict[str, str]] = []
    packed = []
    for endpoints in states:
        plan = plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS)
        resources = render(plan, 8080, None, cache)
        assert server.set_snapshot("ns/gw", resources)
        seen.append(server.versions("ns/gw"))
        packed.append(server._snapshots["ns/gw"][LISTENER_TYPE])
    assert len({v[LISTENER_TYPE] for v in seen}) == 1
    assert all(p is packed[0] for p in packed)  # not even packed again
    assert len({v[CLUSTER_TYPE] for v in seen}) == len(states)
    # A new weight is the cluster's business alone; a new or removed model changes routes.
    routes = [v[ROUTE_TYPE] for v in seen]
    assert routes[2] == routes[1]
    assert len({routes[0], routes[1], routes[3]}) == 3
    # Only a change of the listener itself (its port) makes a new listener.
    plan = plan_gateway(GATEWAY_KEY, gateway(), states[-1], {}, ALL_KEYS)
    assert server.set_snapshot("ns/gw", render(plan, 9090, None, cache))
    assert server.versions("ns/gw")[LISTENER_TYPE] != seen[-1][LISTENER_TYPE]


def manager_of(resources: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    [listener] = resources[LISTENER_TYPE]
    manager: dict[str, Any] = listener["filter_chains"][0]["filters"][0]["typed_config"]
    return manager


def local_reply(
    resources: dict[str, list[dict[str, Any]]], status: int, path: str = "/v1/chat/completions"
) -> dict[str, Any]:
    """The error body Envoy makes of a local reply with `status` to a client that sent
    `path`: the first mapper whose filter matches, as Envoy picks it."""
    compare = {"EQ": int.__eq__, "GE": int.__ge__, "LE": int.__le__}

    def matches(rule: dict[str, Any]) -> bool:
        if "and_filter" in rule:
            return all(matches(r) for r in rule["and_filter"]["filters"])
        if "metadata_filter" in rule:
            if not path:
                return bool(rule["metadata_filter"]["match_if_key_not_found"])
            return path.startswith(
                rule["metadata_filter"]["matcher"]["value"]["string_match"]["prefix"]
            )
        comparison = rule["status_code_filter"]["comparison"]
        return bool(compare[comparison["op"]](status, comparison["value"]["default_value"]))

    for mapper in manager_of(resources)["local_reply_config"]["mappers"]:
        if matches(mapper["filter"]):
            error: dict[str, Any] = mapper["body_format_override"]["json_format"]["error"]
            return error
    raise AssertionError(f"no local reply mapper for {status}")


def test_local_replies_tell_server_errors_from_client_errors() -> None:
    """OpenAI's types: a 5xx is the server's fault ("server_error"), a 4xx the request's."""
    resources = rendered(endpoint("chat"))
    for status in (500, 502, 503, 504):
        assert local_reply(resources, status)["type"] == "server_error", status
    for status in (400, 404, 408, 413, 431):
        assert local_reply(resources, status)["type"] == "invalid_request_error", status
    assert local_reply(resources, 404)["code"] == "model_not_found"
    assert local_reply(resources, 503)["message"] == "%LOCAL_REPLY_BODY%"


def test_local_replies_speak_anthropics_format_to_its_clients() -> None:
    resources = rendered(endpoint("chat"))
    expected = {400: "invalid_request_error", 404: "not_found_error", 413: "request_too_large",
                503: "api_error"}  # fmt: skip
    for status, kind in expected.items():
        assert local_reply(resources, status, "/v1/messages")["type"] == kind, status
    # Before the path is known (a body too large to read), OpenAI's.
    assert local_reply(resources, 413, "")["type"] == "invalid_request_error"


def lua_sources(resources: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The inline source of every Lua filter, by its stat prefix."""
    manager = manager_of(resources)
    router = manager["http_filters"][-1]["typed_config"]
    filters = [*manager["http_filters"], *router["upstream_http_filters"]]
    return {
        f["typed_config"]["stat_prefix"]: f["typed_config"]["default_source_code"]["inline_string"]
        for f in filters
        if f["name"] == "envoy.filters.http.lua"
    }


def test_lua_comes_from_the_packages_files_with_its_config_in_front() -> None:
    sources = lua_sources(rendered(endpoint("chat")))
    assert set(sources) == {"original_path", "answer", "backend_shaper"}
    for name, source in sources.items():
        config, _, program = source.partition("; ")
        # The file unchanged, on the same lines: Lua's error messages point into it.
        file = (LUA_FILES / f"{name}.lua").read_text(encoding="utf-8")
        # The libraries it uses after it.
        assert program.startswith(file)
        assert config.startswith("local config = {")
        assert "\n" not in config
    assert sources["original_path"].startswith(
        f'local config = {{["metadata_namespace"] = "{METADATA_NAMESPACE}"}}; '
    )
    shaper_config = sources["backend_shaper"].partition("; ")[0]
    for value in (CREDENTIALS_DIR_ENV, METADATA_NAMESPACE, *SCRATCH.values()):
        assert f'"{value}"' in shaper_config
    for field in SCRATCH:
        assert f'["{field}"] = ' in shaper_config


def test_lua_literals_are_valid_lua_for_any_text() -> None:
    assert lua_literal("x-sy-model") == '"x-sy-model"'
    assert lua_literal('a "b" \\ c\n\u00e9') == '"a \\034b\\034 \\092 c\\010\\195\\169"'
    assert lua_literal({"end": "1", "a b": {"c": ""}}) == '{["end"] = "1", ["a b"] = {["c"] = ""}}'


def test_every_lua_file_is_package_data() -> None:
    """`pip install .` and the image carry the Lua the renderer reads."""
    pyproject = tomllib.loads(Path(__file__).parents[2].joinpath("pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["switchyard"]
    files = [f.name for f in LUA_FILES.iterdir() if f.name.endswith(".lua")]
    assert len(files) >= 5
    for name in files:
        assert any(fnmatch.fnmatch(f"render/lua/{name}", p) for p in patterns), name


RENDER_VERSIONS = """
import json
from switchyard.render.envoy import render
from switchyard.xds.server import version_of
from tests_support.plans import sample_plan
print(json.dumps({kind: version_of(items) for kind, items in render(sample_plan(), 8080).items()}))
"""


def test_rendering_is_byte_for_byte_stable_across_processes() -> None:
    """xDS resources are content-addressed: an operator that restarts must render the very
    same bytes, or every Envoy would get every resource again."""
    tests = str(Path(__file__).parents[1])
    runs = [
        subprocess.run(
            [sys.executable, "-c", RENDER_VERSIONS],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONPATH": tests, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1]
    here = {kind: version_of(items) for kind, items in render(sample_plan(), 8080).items()}
    assert json.loads(runs[0]) == here


def test_the_bootstrap_names_the_node_and_the_xds_server_only() -> None:
    config = bootstrap("ns/gw", "switchyard.system.svc", 18000)
    assert config["node"]["id"] == "ns/gw"
    [cluster] = config["static_resources"]["clusters"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "switchyard.system.svc", "port_value": 18000}
    assert "listeners" not in config["static_resources"]


def duration_seconds(text: str) -> float:
    assert text.endswith("s"), text
    return float(text[:-1])


def test_the_bootstrap_drops_a_dead_ads_connection_and_retries_soon(tmp_path: Path) -> None:
    """A stream whose peer vanished without a FIN goes within a minute, and a lost stream is
    retried within 2 s; the server allows Envoy's pings; the real Envoy takes the config."""
    from switchyard.xds import server

    config = bootstrap("ns/gw", "switchyard.system.svc", 18000)
    [service] = config["dynamic_resources"]["ads_config"]["grpc_services"]
    back_off = service["envoy_grpc"]["retry_policy"]["retry_back_off"]
    assert duration_seconds(back_off["max_interval"]) <= 2
    assert duration_seconds(back_off["base_interval"]) <= duration_seconds(back_off["max_interval"])

    [cluster] = config["static_resources"]["clusters"]
    [options] = cluster["typed_extension_protocol_options"].values()
    pings = options["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    interval, timeout = duration_seconds(pings["interval"]), duration_seconds(pings["timeout"])
    assert interval * 1.15 + timeout <= 30  # Envoy's default jitter adds up to 15 %
    tcp = cluster["upstream_connection_options"]["tcp_keepalive"]
    assert tcp["keepalive_time"] + tcp["keepalive_interval"] * tcp["keepalive_probes"] <= 60

    # The server's side: it pings too, and takes Envoy's pings for keepalive, not abuse.
    options_set = dict(server.SERVER_OPTIONS)
    assert (
        options_set["grpc.keepalive_time_ms"] + options_set["grpc.keepalive_timeout_ms"] <= 30_000
    )
    assert options_set["grpc.http2.ping_timeout_ms"] <= options_set["grpc.keepalive_timeout_ms"]
    assert options_set["grpc.keepalive_permit_without_calls"] == 1
    assert options_set["grpc.http2.max_pings_without_data"] == 0
    assert options_set["grpc.http2.min_ping_interval_without_data_ms"] < interval * 1000

    refusal = envoy_refusal(config, tmp_path / "bootstrap.json")
    assert refusal is None, refusal


def many(count: int) -> dict[str, list[dict[str, Any]]]:
    return rendered(*(endpoint(f"m{i}", backends=[local("a")]) for i in range(count)))


def test_the_model_list_fits_envoys_direct_response_limit() -> None:
    [route_config] = many(200)[ROUTE_TYPE]
    body = route_config["virtual_hosts"][0]["routes"][0]["direct_response"]["body"]
    assert len(body["inline_string"]) > 4096
    assert route_config["max_direct_response_body_size_bytes"] >= len(body["inline_string"])


def test_a_render_cache_renders_only_what_changed() -> None:
    cache = RenderCache()
    endpoints = [endpoint(f"m{i}", backends=[local("a")]) for i in range(3)]
    first = render(plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS), 8080, None, cache)
    endpoints[1] = endpoint("m1", backends=[local("a"), local("b")])
    plan = plan_gateway(GATEWAY_KEY, gateway(), endpoints, {}, ALL_KEYS)
    second = render(plan, 8080, None, cache)
    assert second == render(plan, 8080)  # the same config as without a cache
    before, after = first[CLUSTER_TYPE], second[CLUSTER_TYPE]
    assert after[0] is before[0]
    assert after[2] is before[2]
    assert after[1] is not before[1]
    assert len(cache.entries) == 3


def test_packing_with_a_packer_gives_the_same_messages_and_versions() -> None:
    packer = Packer()
    for count in (3, 4, 4):
        resources = many(count)
        for type_url, items in resources.items():
            fresh = pack(type_url, items)
            remembered = pack(type_url, items, packer)
            assert remembered.version == fresh.version
            assert [r.SerializeToString(deterministic=True) for r in remembered.resources] == [
                r.SerializeToString(deterministic=True) for r in fresh.resources
            ]
        packer.forget_unused()
    assert many(3)[CLUSTER_TYPE]
    assert version_of(many(3)[CLUSTER_TYPE]) != version_of(many(4)[CLUSTER_TYPE])


def test_routes_are_acked_rejected_and_pushed_after_their_clusters() -> None:
    """One ADS stream as Envoy drives it: it subscribes to clusters, listeners and routes,
    ACKs each; an endpoint change pushes clusters, then routes, and never the listener; a
    NACK of the routes is reported; asking for other route names gets an answer."""
    node = base_pb2.Node(id="ns/gw")

    def ask(type_url: str, names: tuple[str, ...] = (), **extra: Any) -> DiscoveryRequest:
        return DiscoveryRequest(node=node, type_url=type_url, resource_names=names, **extra)

    def ack(
        response: DiscoveryResponse, names: tuple[str, ...] = (ROUTE_CONFIG_NAME,), **extra: Any
    ) -> DiscoveryRequest:
        return ask(
            response.type_url,
            names if response.type_url == ROUTE_TYPE else (),
            version_info=response.version_info,
            response_nonce=response.nonce,
            **extra,
        )

    async def scenario() -> None:
        server = XdsServer()
        server.set_snapshot("ns/gw", rendered(endpoint("chat", backends=[local("a")])))
        inbox: asyncio.Queue[DiscoveryRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[DiscoveryRequest]:
            while (request := await inbox.get()) is not None:
                yield request

        outbox: asyncio.Queue[DiscoveryResponse] = asyncio.Queue()

        async def pump() -> None:  # as gRPC does: read the stream's responses as they come
            async for response in server.stream(requests(), "ns/gw"):
                await outbox.put(response)

        pumping = asyncio.create_task(pump())

        async def next_response() -> DiscoveryResponse:
            return await asyncio.wait_for(outbox.get(), 5)

        first: list[DiscoveryResponse] = []
        for type_url in (CLUSTER_TYPE, LISTENER_TYPE):
            await inbox.put(ask(type_url))
            first.append(await next_response())
        await inbox.put(ask(ROUTE_TYPE, (ROUTE_CONFIG_NAME,)))
        first.append(await next_response())
        assert [r.type_url for r in first] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
        for response in first[:2]:
            await inbox.put(ack(response))
        assert not server.status("ns/gw").programmed  # the routes are not ACKed yet
        await inbox.put(ack(first[2]))
        await asyncio.sleep(0.05)
        assert server.status("ns/gw").programmed

        endpoints = [
            endpoint("chat", backends=[local("a")]),
            endpoint("new", backends=[local("b")]),
        ]
        server.set_snapshot("ns/gw", rendered(*endpoints))
        pushed = [await next_response(), await next_response()]
        assert [r.type_url for r in pushed] == [CLUSTER_TYPE, ROUTE_TYPE]
        await inbox.put(ack(pushed[0]))
        await asyncio.sleep(0.05)
        assert not server.status("ns/gw").programmed
        await inbox.put(ack(pushed[1], error_detail={"message": "route: unknown cluster"}))
        await asyncio.sleep(0.05)
        status = server.status("ns/gw")
        assert (status.programmed, status.rejection) == (False, "route: unknown cluster")

        # Envoy wants other route configurations, with the last nonce: it gets an answer.
        await inbox.put(ask(ROUTE_TYPE, ("other",), response_nonce=pushed[1].nonce))
        again = await next_response()
        assert again.type_url == ROUTE_TYPE
        await inbox.put(ack(again, ("other",)))
        await asyncio.sleep(0.05)
        assert server.status("ns/gw").programmed
        assert outbox.empty()
        await inbox.put(None)
        await asyncio.wait_for(pumping, 5)
        assert server.status("ns/gw").streams == 0

    asyncio.run(scenario())


def limited_clients(plan: GatewayPlan) -> ClientsPlan:
    """Two clients of team-a: one with limits, one without."""
    return plan_clients(
        GATEWAY_KEY, gateway(),
        [
            client("capped", apiKeyRef={"name": "c", "key": "k"},
                   limits={"requestsPerMinute": 60, "tokensPerMinute": 1000}),
            client("free", apiKeyRef={"name": "f", "key": "k"}),
        ],
        plan, {},
        {("team-a", "c"): {"k": key_digest(b"sk-capped")},
         ("team-a", "f"): {"k": key_digest(b"sk-free")}},
        limits_enforced=True,
    )  # fmt: skip


def test_limits_put_the_rate_limit_filter_before_the_router_and_its_service_in_cds() -> None:
    plan = plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS)
    service = RateLimitService("ratelimit.switchyard-system.svc", 8081)
    resources = render(plan, 8080, clients=limited_clients(plan), limits=service)
    for type_url, items in resources.items():
        assert pack(type_url, items).resources
    filters = [f["name"] for f in manager_of(resources)["http_filters"]]
    assert filters[-2:] == ["envoy.filters.http.ratelimit", "envoy.filters.http.router"]
    [cluster] = [c for c in resources[CLUSTER_TYPE] if c["name"] == "switchyard-ratelimit"]
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {
        "address": "ratelimit.switchyard-system.svc", "port_value": 8081
    }  # fmt: skip
    # Only the limited client's limits reach the clients filter.
    [clients_filter] = [e for e in resources[EXTENSION_TYPE] if e["name"] == CLIENTS_FILTER]
    source = clients_filter["typed_config"]["default_source_code"]["inline_string"]
    assert '["team-a/capped"]={["requests"]=60,["tokens"]=1000}' in source.replace(" ", "")
    assert "team-a/free" not in source.split("limits", 1)[1].split("\n", 1)[0]
    # Without a service, or with no client checked, there is no filter to ask it.
    for unlimited in (
        render(plan, 8080, clients=limited_clients(plan)),
        render(plan, 8080, clients=None, limits=service),
    ):
        names = [f["name"] for f in manager_of(unlimited)["http_filters"]]
        assert "envoy.filters.http.ratelimit" not in names
        assert "switchyard-ratelimit" not in [c["name"] for c in unlimited[CLUSTER_TYPE]]


def test_a_token_limit_is_checked_on_arrival_and_charged_when_the_answer_ends() -> None:
    rate_limits = rate_limit_filter()["typed_config"]["rate_limits"]
    arrival = [r for r in rate_limits if not r.get("apply_on_stream_done")]
    done = [r for r in rate_limits if r.get("apply_on_stream_done")]
    assert [r.get("hits_addend") for r in arrival] == [None, {"number": 0}]
    charged = {r["hits_addend"]["format"] for r in done}
    assert charged == {f"%DYNAMIC_METADATA(switchyard.usage:{key})%" for key in TOTAL_KEYS}
    assert "cached_tokens" not in TOTAL_KEYS  # a part of prompt_tokens: never twice
