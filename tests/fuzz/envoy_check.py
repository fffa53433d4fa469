"""What the operator pushes to a gateway's Envoys, read over xDS as an Envoy reads it, and
judged by the real Envoy binary in validate mode."""

from __future__ import annotations

import copy
import json
import queue
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import json_format

from gatewaylab import discovered_filters, envoy_refusal, inline_discovered
from switchyard.render.envoy import (
    CLUSTER_TYPE,
    EXTENSION_TYPE,
    LISTENER_TYPE,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    bootstrap,
)
from switchyard.xds import resources as _registered_types  # noqa: F401  (Any type registry)

Resources = dict[str, list[dict[str, Any]]]
# An Envoy asks for these, in this order (the listener's routes come by name, over RDS).
SUBSCRIPTIONS = ((CLUSTER_TYPE, ()), (LISTENER_TYPE, ()), (ROUTE_TYPE, (ROUTE_CONFIG_NAME,)))


class NoSnapshot(Exception):
    """The xDS server sent nothing for a node within the timeout."""


def fetch_snapshot(
    address: str, node: str, credentials: grpc.ChannelCredentials, timeout: float = 10.0
) -> Resources:
    """The resources the xDS server at `address` serves node `node`, asked for on one ADS
    stream as a gateway's Envoy does on connecting, with the gateway's certificate
    (`credentials`). Nothing is ACKed: the stream closes."""
    outbox: queue.Queue[discovery_pb2.DiscoveryRequest | None] = queue.Queue()

    def requests() -> Iterator[discovery_pb2.DiscoveryRequest]:
        while (request := outbox.get()) is not None:
            yield request

    found: Resources = {}
    options = [("grpc.max_receive_message_length", 256 * 2**20)]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        replies = stub.StreamAggregatedResources(requests(), timeout=timeout)
        try:
            for type_url, names in SUBSCRIPTIONS:
                request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=names)
                if not found:
                    request.node.id = node
                outbox.put(request)
                reply = next(replies)
                found[type_url] = [_message(resource) for resource in reply.resources]
            # The listener's filter configs served on their own (ECDS), when it has any.
            filters = [f["name"] for f in discovered_filters(found[LISTENER_TYPE])]
            if filters:
                outbox.put(
                    discovery_pb2.DiscoveryRequest(type_url=EXTENSION_TYPE, resource_names=filters)
                )
                found[EXTENSION_TYPE] = [_message(r) for r in next(replies).resources]
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise NoSnapshot(f"no xDS snapshot for node {node} within {timeout}s") from error
            raise
        finally:
            outbox.put(None)
            replies.cancel()
    return found


def _message(resource: Any) -> dict[str, Any]:
    """An Any from the stream as the JSON of the message it holds."""
    found: dict[str, Any] = json_format.MessageToDict(resource, preserving_proto_field_name=True)
    del found["@type"]
    return found


def static_bootstrap(node: str, resources: Resources) -> dict[str, Any]:
    """The gateway's bootstrap with what ADS pushed held statically, untouched but for what
    arrives on its own: the listener's routes (RDS) and its client filters' configs (ECDS)
    are put inline. The xDS cluster points nowhere; validate mode connects to nothing."""
    config = bootstrap(node, "127.0.0.1", 1)
    del config["dynamic_resources"]
    routes = {r["name"]: r for r in resources[ROUTE_TYPE]}
    listeners = copy.deepcopy(resources[LISTENER_TYPE])
    for listener in listeners:
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                manager = network_filter.get("typed_config", {})
                if "rds" in manager:
                    manager["route_config"] = routes[manager.pop("rds")["route_config_name"]]
    inline_discovered(listeners, resources.get(EXTENSION_TYPE, []))
    config["static_resources"]["listeners"] = listeners
    config["static_resources"]["clusters"] += resources[CLUSTER_TYPE]
    return config


def envoy_verdicts(configs: dict[str, dict[str, Any]], directory: Path) -> dict[str, str]:
    """Validate each bootstrap with the real Envoy (two at a time: the machine has two
    cores); returns Envoy's complaint for every one it refuses. The files stay in
    `directory` for a look at what was refused."""
    directory.mkdir(parents=True, exist_ok=True)

    def validate(item: tuple[int, tuple[str, dict[str, Any]]]) -> tuple[str, str | None]:
        index, (label, config) = item
        path = directory / f"gateway-{index}.json"
        refusal = envoy_refusal(config, path)
        return label, None if refusal is None else f"{path}: {_complaint(refusal)}"

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(validate, enumerate(configs.items())))
    return {label: complaint for label, complaint in results if complaint is not None}


def _complaint(output: str) -> str:
    """Envoy's reason, without the copy of the whole config it prints with a proto error."""
    found = re.search(r"Proto constraint validation failed.*", output, re.DOTALL)
    if found is None:
        found = re.search(r"error initializing configuration.*", output, re.DOTALL)
    return (found[0] if found else output).strip()[:2000]


def served_models(resources: Resources) -> tuple[set[str], set[str]]:
    """The models the routes send to a cluster, and those `GET /v1/models` lists."""
    routed: set[str] = set()
    listed: set[str] = set()
    for configuration in resources[ROUTE_TYPE]:
        for host in configuration.get("virtual_hosts", []):
            for route in host.get("routes", []):
                if "route" in route:
                    for matcher in route["match"].get("dynamic_metadata", []):
                        routed.add(matcher["value"]["string_match"]["exact"])
                elif route["match"].get("path") == "/v1/models":
                    body = route["direct_response"]["body"]["inline_string"]
                    listed |= {model["id"] for model in json.loads(body)["data"]}
    return routed, listed


def locality_weights(resources: Resources, cluster: str) -> dict[str, int]:
    """Backend -> load-balancing weight in one cluster of the snapshot."""
    for resource in resources[CLUSTER_TYPE]:
        if resource.get("name") == cluster:
            return {
                locality["locality"]["sub_zone"]: int(locality["load_balancing_weight"])
                for locality in resource["load_assignment"].get("endpoints", [])
            }
    return {}
