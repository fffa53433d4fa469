"""Accounting on and off, for the data plane benchmark.

The gateway's Envoy counts every answer: its listener reads a whole JSON answer's usage
(json_to_metadata's response rules), reads a stream's usage as it passes (sse_to_metadata),
and sends one record per answer to the operator (a gRPC access log, `switchyard-usage`). The
`answer` Lua filter, which every answer passes anyway (a provider's refusal is rewritten
there), also times a stream's first event and takes away the usage event a client did not
ask for: it stays in both variants. The product has no switch for accounting; to see what it
costs, the benchmark takes what the operator really serves the gateway over xDS, removes
those three pieces from the listener, and runs the rest as a static Envoy beside the
xDS-fed one: the same binary, workers, routes, clusters, client check and backend shaping
(which still asks an OpenAI stream's backend for its usage, as it does with accounting on).

Also here: time to first event of a streamed chat completion, as a client sees it.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fuzz.envoy_check import fetch_snapshot, static_bootstrap
from gatewaylab import stop_process, wait_for_port
from ports import free_port
from switchyard.local_envoy import envoy_binary
from switchyard.providers.usage import ANSWER_LOG
from switchyard.render.envoy import (
    CLUSTER_TYPE,
    CREDENTIALS_DIR_ENV,
    METADATA_NAMESPACE,
    XDS_CLUSTER,
    XdsTls,
    bootstrap,
    xds_sds_files,
)
from switchyard.render.objects import credentials_secret_name
from switchyard.xds.server import node_of_gateway
from tests_support.cluster import Cluster
from tests_support.xds_tls import gateway_credentials, gateway_secret

JSON_TO_METADATA = "envoy.filters.http.json_to_metadata"
SSE_TO_METADATA = "envoy.filters.http.sse_to_metadata"
GRPC_ACCESS_LOG = "envoy.access_loggers.http_grpc"
# The three pieces, as the report names them.
PIECES = (
    "whole answers' usage (json_to_metadata response_rules)",
    "streams' usage (sse_to_metadata)",
    f"answer records to the operator (gRPC access log {ANSWER_LOG})",
)


# --- the listener's accounting


def http_managers(listeners: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The HTTP connection managers' configs of `listeners` (as xDS or a config dump has
    them)."""
    for listener in listeners:
        for chain in listener.get("filter_chains", []):
            for network_filter in chain.get("filters", []):
                manager = network_filter.get("typed_config", {})
                if "http_filters" in manager:
                    yield manager


def _piece(kind: str, item: dict[str, Any]) -> str | None:
    """Which of PIECES `item` (an HTTP filter, or an access log: `kind`) is, if any."""
    config = item.get("typed_config", {})
    name = item.get("name")
    if kind == "filter" and name == JSON_TO_METADATA and "response_rules" in config:
        return PIECES[0]
    if kind == "filter" and name == SSE_TO_METADATA:
        return PIECES[1]
    common = config.get("common_config", {})
    if kind == "log" and name == GRPC_ACCESS_LOG and common.get("log_name") == ANSWER_LOG:
        return PIECES[2]
    return None


def accounting_pieces(listeners: list[dict[str, Any]]) -> dict[str, int]:
    """How many times each of PIECES appears in `listeners`' HTTP connection managers."""
    found = dict.fromkeys(PIECES, 0)
    for manager in http_managers(listeners):
        items = [("filter", f) for f in manager["http_filters"]]
        items += [("log", log) for log in manager.get("access_log", [])]
        for kind, item in items:
            if (piece := _piece(kind, item)) is not None:
                found[piece] += 1
    return found


def without_accounting(
    listeners: list[dict[str, Any]], pieces: Collection[str] = PIECES
) -> list[dict[str, Any]]:
    """A copy of `listeners` without the accounting `pieces` (all three unless told);
    everything else as it was. Each piece must be there exactly once: if the product
    changes, this says so instead of measuring something else."""
    found = accounting_pieces(listeners)
    if any(count != 1 for count in found.values()):
        raise AssertionError(f"the gateway's listener has its accounting pieces {found}")
    listeners = copy.deepcopy(listeners)
    for manager in http_managers(listeners):
        kept = []
        for http_filter in manager["http_filters"]:
            piece = _piece("filter", http_filter)
            if piece == PIECES[0] and piece in pieces:
                del http_filter["typed_config"]["response_rules"]  # the request's rules stay
            elif piece in pieces:
                continue
            kept.append(http_filter)
        manager["http_filters"] = kept
        manager["access_log"] = [
            log for log in manager.get("access_log", []) if _piece("log", log) not in pieces
        ]
    return listeners


def dumped_listeners(dump: dict[str, Any]) -> list[dict[str, Any]]:
    """The listeners an Envoy runs, from its admin API's /config_dump."""
    listeners = []
    for section in dump.get("configs", []):
        for static in section.get("static_listeners", []):
            listeners.append(static["listener"])
        for dynamic in section.get("dynamic_listeners", []):
            if "active_state" in dynamic:
                listeners.append(dynamic["active_state"]["listener"])
    return listeners


# --- the gateway without accounting


class StaticGateway:
    """The gateway's Envoy on what the operator serves its node over xDS now, held static
    (routes and ECDS filters inline), without the listener's accounting; on `port` on
    loopback, reading the backends' keys from a copy of the gateway's credentials Secret,
    as the gateway's Pods do. Started as `switchyard envoy` starts its Envoy (2 workers).
    Its xDS cluster, which nothing asks for resources any more, still reaches the operator
    with the gateway's certificate: what the listener logs to the operator (failed
    attempts; answer records, if kept) arrives as it does from the gateway."""

    def __init__(
        self,
        cluster: Cluster,
        xds_address: str,
        namespace: str,
        name: str,
        workdir: Path,
        pieces: Collection[str] = PIECES,
    ) -> None:
        """`pieces`: the accounting taken away (all of it unless told)."""
        node = node_of_gateway(namespace, name)
        tls = gateway_credentials(cluster, namespace, name)
        if tls is None:
            raise AssertionError(f"no control-channel certificate for {node}")
        resources = fetch_snapshot(xds_address, node, tls)
        config = static_bootstrap(node, resources)
        workdir.mkdir(parents=True, exist_ok=True)
        clusters = config["static_resources"]["clusters"]
        xds = self._xds_cluster(cluster, namespace, name, xds_address, workdir)
        config["static_resources"]["clusters"] = [
            xds if c["name"] == XDS_CLUSTER else c for c in clusters
        ]
        self.port, self.admin_port = free_port(), free_port()
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        listeners = config["static_resources"]["listeners"]
        if len(listeners) != 1:
            raise AssertionError(f"{node} is served {len(listeners)} listeners, not one")
        # Where it listens, as the operator moves a listener for `switchyard envoy --port`.
        listener = listeners[0]
        listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": self.port}}
        listener["name"] = f"{listener['name']}-127.0.0.1-{self.port}"
        config["static_resources"]["listeners"] = without_accounting(listeners, pieces)
        self.credentials = workdir / "credentials"
        self._write_credentials(cluster, namespace, name, resources[CLUSTER_TYPE])
        path = workdir / "envoy.json"
        path.write_text(json.dumps(config, indent=1))
        self.log = workdir / "envoy.log"
        self.process = subprocess.Popen(
            [envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency", "2",
             "--log-level", "warning"],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, CREDENTIALS_DIR_ENV: str(self.credentials)},
        )  # fmt: skip
        wait_for_port(self.port, self.process, timeout=30)

    @staticmethod
    def _xds_cluster(
        cluster: Cluster, namespace: str, name: str, xds_address: str, workdir: Path
    ) -> dict[str, Any]:
        """The bootstrap's cluster of the operator, with the gateway's control-channel
        Secret as files (as the kubelet mounts it) and the SDS files that name them."""
        secret = gateway_secret(cluster, namespace, name)
        if secret is None:
            raise AssertionError(f"no control-channel Secret for {namespace}/{name}")
        certificates, sds = workdir / "xds-tls", workdir / "sds"
        certificates.mkdir(mode=0o700, exist_ok=True)
        sds.mkdir(mode=0o700, exist_ok=True)
        for key, value in secret.items():
            (certificates / key).write_bytes(value)
        for file, content in xds_sds_files(str(certificates)).items():
            (sds / file).write_text(json.dumps(content))
        host, _, port = xds_address.rpartition(":")
        tls = XdsTls(certificates=str(certificates), sds=str(sds))
        config = bootstrap(node_of_gateway(namespace, name), host, int(port), tls=tls)
        found: dict[str, Any] = config["static_resources"]["clusters"][0]
        assert found["name"] == XDS_CLUSTER
        return found

    def _write_credentials(
        self, cluster: Cluster, namespace: str, name: str, clusters: list[dict[str, Any]]
    ) -> None:
        """The credentials Secret the operator keeps for the gateway, one file per key (what
        the kubelet mounts); every key an endpoint's metadata names must be among them."""
        secret = cluster.get("secret", credentials_secret_name(name), namespace)
        data = (secret or {}).get("data") or {}
        self.credentials.mkdir(mode=0o700, exist_ok=True)
        for key, value in data.items():
            (self.credentials / key).write_bytes(base64.b64decode(value))
        named = {
            endpoint["metadata"]["filter_metadata"][METADATA_NAMESPACE]["credentials"]
            for resource in clusters
            for locality in resource.get("load_assignment", {}).get("endpoints", [])
            for endpoint in locality.get("lb_endpoints", [])
        }
        missing = sorted(key for key in named if key and key not in data)
        if missing:
            raise AssertionError(f"the credentials Secret of {namespace}/{name} lacks {missing}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config_dump(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.admin_port}/config_dump"
        with urllib.request.urlopen(url, timeout=10) as reply:
            dump: dict[str, Any] = json.loads(reply.read())
        return dump

    def stop(self) -> None:
        stop_process(self.process)


# --- time to first event


@dataclass
class StreamTarget:
    """One way to reach a streaming provider, as a client that streams sees it."""

    name: str
    url: str
    model: str
    headers: dict[str, str]


@dataclass
class Streamed:
    """One streamed answer as the client got it."""

    first_event_s: float  # from sending the request to the first `data:` line
    last_byte_s: float  # to the stream's end
    events: list[dict[str, Any] | str]  # each `data:` event, parsed ("[DONE]" as text)

    @property
    def usage_events(self) -> int:
        """Events that carry only usage (no choices): what a client gets when it asks."""
        return sum(
            1
            for e in self.events
            if isinstance(e, dict) and not e.get("choices") and e.get("usage")
        )

    def problem(self) -> str | None:
        """What is wrong with the stream as an OpenAI chat completion stream, or None."""
        chunks = [e for e in self.events if isinstance(e, dict)]
        if not chunks or self.events[-1] != "[DONE]":
            return f"not a complete stream: {self.events[:2]!r}…{self.events[-1:]!r}"
        if any(c.get("object") != "chat.completion.chunk" for c in chunks):
            return f"not chat.completion.chunk events: {chunks[0]!r}"
        text = "".join(
            choice.get("delta", {}).get("content") or ""
            for chunk in chunks
            for choice in chunk.get("choices", [])
        )
        return None if text else "no text in the stream"


class StreamClient:
    """Streamed chat completions to one target on one kept-alive connection (as an SDK
    keeps its connections), timed with the monotonic clock."""

    PATH = "/v1/chat/completions"

    def __init__(self, target: StreamTarget) -> None:
        self.target = target
        address = urlsplit(target.url)
        self._connection = http.client.HTTPConnection(
            address.hostname or "127.0.0.1", address.port, timeout=30
        )
        self._body = json.dumps(
            {
                "model": target.model,
                "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                "max_tokens": 64,
                "stream": True,
            }
        ).encode()
        self._headers = {"Content-Type": "application/json", **target.headers}

    def send(self) -> Streamed:
        started = time.perf_counter()
        self._connection.request("POST", self.PATH, self._body, self._headers)
        reply = self._connection.getresponse()
        if reply.status != 200:
            body = reply.read().decode(errors="replace")
            raise AssertionError(f"{self.target.name}: HTTP {reply.status}: {body[:200]}")
        first: float | None = None
        events: list[dict[str, Any] | str] = []
        while line := reply.readline():
            if not line.startswith(b"data:"):
                continue
            if first is None:
                first = time.perf_counter() - started
            data = line[5:].strip().decode()
            events.append(data if data == "[DONE]" else json.loads(data))
        last = time.perf_counter() - started
        if first is None:
            raise AssertionError(f"{self.target.name}: no event in the stream")
        return Streamed(first, last, events)

    def close(self) -> None:
        self._connection.close()


def first_events(
    targets: list[StreamTarget], requests: int, warmup: int = 10
) -> dict[str, dict[str, list[float]]]:
    """`requests` streamed requests to each target, one at a time, interleaved (each round
    sends one to every target, in a rotating order); per target, each request's time to the
    first event and to the last byte, in ms. `warmup` rounds first, not counted."""
    clients = [StreamClient(t) for t in targets]
    found: dict[str, dict[str, list[float]]] = {
        t.name: {"first_event_ms": [], "last_byte_ms": []} for t in targets
    }
    try:
        for round_ in range(warmup + requests):
            shift = round_ % len(clients)
            for client in [*clients[shift:], *clients[:shift]]:
                streamed = client.send()
                if round_ < warmup:
                    continue
                figures = found[client.target.name]
                figures["first_event_ms"].append(streamed.first_event_s * 1000)
                figures["last_byte_ms"].append(streamed.last_byte_s * 1000)
    finally:
        for client in clients:
            client.close()
    return found


# --- a process's CPU time


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a live process has used so far, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def quiet(
    pid: int, at_least: float, window: float = 0.5, busy: float = 0.1, timeout: float = 60.0
) -> float:
    """Wait `at_least` seconds, and then until process `pid` has used less than `busy` of a
    core over the last `window` seconds (what it was sent is handled), at most `timeout`
    seconds in all; returns how long that took."""
    started = time.monotonic()
    time.sleep(max(0.0, at_least - window))
    used = cpu_seconds(pid)
    while time.monotonic() - started < timeout:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - used < busy * window:
            break
        used = now
    return time.monotonic() - started
