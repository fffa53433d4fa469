"""Data plane: what a request pays to go through Switchyard's Envoy gateway, against calling a
provider directly, a bare Envoy with a plain weighted route (the limit), and LiteLLM's proxy
(the peer), all in one run against the same fake providers, which answer at once.

Rounds are interleaved (each round runs every target once, in a rotating order), so that a
noisy neighbour on this shared machine hits every target alike; ratios are taken within a
round, then summarised.

The same run measures API translation: a client of OpenAI's Chat Completions reaching an
Anthropic backend, and a client of Anthropic's Messages reaching OpenAI backends, through
Switchyard and through LiteLLM, against the native request to the same backends and a bare
Envoy in front of them. `--only translation` measures that alone, and puts its figures in the
saved results beside the others'.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from accounting import (
    PIECES,
    StaticGateway,
    StreamClient,
    StreamTarget,
    accounting_pieces,
    cpu_seconds,
    dumped_listeners,
    first_events,
    quiet,
)
from common import WORK, OperatorProcess, control_plane, spread
from gatewaylab import (
    CLIENT_HEADERS,
    BedrockProcess,
    FakeProcess,
    LocalEnvoy,
    lab_client,
    send_sync,
    wait_for_port,
)
from litellm_proxy import LITELLM_VERSION, Deployment, LiteLLMProxy
from ports import free_port
from switchyard.api.models import API_VERSION
from switchyard.local_envoy import envoy_binary
from tests_support.cluster import Cluster, condition, eventually

NAMESPACE = "bench-data"
# Three OpenAI-wire fakes share the load in every throughput run; the mixed endpoint adds
# Azure OpenAI and Anthropic, for the split-accuracy run.
SPLIT = {"a": 50, "b": 30, "c": 20}
MIXED = {"a": 50, "azure": 30, "anthropic": 20}
UPSTREAM_MODEL = "gpt-4o"
ANTHROPIC_MODEL = "claude-sonnet-4-5"
BEDROCK_MODEL = "anthropic.claude-x-v1:0"
CONNECTIONS = 8
# The streaming fake for time to first event: a chunk every 10 ms after the first two (a
# model writing 100 tokens a second), behind a model of its own.
STREAM_MODEL = "bench-stream"
STREAM_CHUNK_DELAY = 0.01

# The two client APIs, by the provider whose API it is (as the fakes name them), and the path
# a client of each calls.
OPENAI, ANTHROPIC = "OpenAI", "Anthropic"
PATHS = {OPENAI: "/v1/chat/completions", ANTHROPIC: "/v1/messages"}
# What reaches a provider that is not on either client API's own path.
UPSTREAM_PATHS = {"AWSBedrock": f"/model/{BEDROCK_MODEL}/invoke"}
ANTHROPIC_VERSION = {"anthropic-version": "2023-06-01"}
PROMPT = "Say hello in one short sentence."


def request_body(api: str, model: str) -> dict[str, Any]:
    """A realistic, valid request in `api`'s own format (Anthropic's requires max_tokens)."""
    messages = [{"role": "user", "content": PROMPT}]
    if api == ANTHROPIC:
        return {"model": model, "max_tokens": 64, "messages": messages}
    return {"model": model, "messages": messages, "max_tokens": 64}


def reply_problem(api: str, status: int, body: str) -> str | None:
    """What is wrong with a reply to a request in `api`'s format: not 2xx, or not that API's
    completion. None when nothing is."""
    if not 200 <= status < 300:
        return f"HTTP {status}: {body[:160]}"
    try:
        reply = json.loads(body)
        if api == ANTHROPIC:
            block = reply["content"][0]
            ok = reply["type"] == "message" and block["type"] == "text"
            ok = ok and isinstance(block["text"], str)
        else:
            message = reply["choices"][0]["message"]
            ok = reply["object"] == "chat.completion" and isinstance(message["content"], str)
    except (ValueError, KeyError, IndexError, TypeError):
        ok = False
    return None if ok else f"not an {api} reply: {body[:160]}"


@dataclass
class Target:
    """One way to reach the providers, as wrk sees it."""

    name: str
    url: str
    model: str
    headers: dict[str, str]
    pids: Callable[[], list[int]]  # the processes whose memory counts
    api: str = OPENAI  # the client's API: what it sends, where, and what it expects back
    upstream: Sequence[FakeProcess] = ()  # the fakes it reaches, each in its own API
    single: bool = True  # measured on 1 connection too, not only under load

    @property
    def path(self) -> str:
        return PATHS[self.api]

    def wrk_script(self) -> Path:
        body = json.dumps(request_body(self.api, self.model)).replace("'", "\\'")
        lines = ['wrk.method = "POST"', f"wrk.body = '{body}'"]
        for name, value in {"Content-Type": "application/json", **self.headers}.items():
            lines.append(f'wrk.headers["{name}"] = "{value}"')
        # wrk's own summary, as JSON on the last line: latencies in microseconds.
        lines.append(WRK_DONE)
        path = WORK / f"wrk-{re.sub(r'[^A-Za-z0-9]+', '-', self.name).strip('-')}.lua"
        path.write_text("\n".join(lines) + "\n")
        return path


# wrk counts only replies >= 400 as errors; every thread counts any reply that is not 2xx
# (which costs wrk a few microseconds a reply, alike for every target), and the summary adds
# them up, as JSON on the last line.
WRK_DONE = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) non_2xx = 0 end
response = function(status, headers, body)
  if status < 200 or status > 299 then non_2xx = non_2xx + 1 end
end
done = function(summary, latency, requests)
  local e = summary.errors
  local non_2xx = 0
  for _, thread in ipairs(threads) do non_2xx = non_2xx + thread:get("non_2xx") end
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "failed": %d, '
    .. '"non_2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + non_2xx, non_2xx))
end
"""


def wrk(target: Target, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run; requests answered, requests per second, p50 and p99 in ms, failed requests
    (not answered, or answered other than 2xx) and, of those, the non-2xx replies."""
    threads = min(2, connections)
    done = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(target.wrk_script()), f"{target.url}{target.path}",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "requests": summary["requests"],
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "failed": summary["failed"],
        "non_2xx": summary["non_2xx"],
    }


def check(target: Target, requests: int = 4) -> dict[str, Any]:
    """A few requests before the load, each reply checked (2xx, in the client's API), and what
    reached the fakes (each in its own API: a request passed on untranslated is caught)."""
    for fake in target.upstream:
        fake.forget_requests()
    problem = None
    for _ in range(requests):
        request = urllib.request.Request(
            f"{target.url}{target.path}",
            data=json.dumps(request_body(target.api, target.model)).encode(),
            headers={"Content-Type": "application/json", **target.headers},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as reply:
                status, body = reply.status, reply.read().decode(errors="replace")
        except urllib.error.HTTPError as error:
            status, body = error.code, error.read().decode(errors="replace")
        if problem := reply_problem(target.api, status, body):
            break
    upstream: dict[str, int] = {}
    for fake in target.upstream:
        for recorded in fake.traffic():
            path = f"{fake.provider} {recorded['path']}"
            upstream[path] = upstream.get(path, 0) + 1
            if problem is None and recorded["path"] != UPSTREAM_PATHS.get(
                fake.provider, PATHS.get(fake.provider)
            ):
                problem = f"the {fake.provider} fake got {recorded['path']}"
    if problem is None and target.upstream and not upstream:
        problem = "no request reached a fake provider"
    return {"ok": problem is None, "problem": problem, "upstream": upstream}


class MemoryWatch:
    """Samples the resident memory of some processes in the background; keeps the peak."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self.peaks = {t.name: 0.0 for t in targets}
        self._targets = targets
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.25):
            for target in self._targets:
                rss = common.rss_mb(target.pids())
                self.peaks[target.name] = max(self.peaks[target.name], rss)

    def __enter__(self) -> MemoryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --- the bare Envoy: a plain weighted route, no rewriting, no credentials


def bare_envoy_config(
    port: int,
    admin_port: int,
    backends: dict[str, tuple[int, int]],
    messages: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """backends: name -> (port, weight); messages: the backend (name, port) that gets every
    `/v1/messages` request, the rest going to the weighted split."""
    types = "type.googleapis.com/envoy.extensions.filters"
    route = {
        "weighted_clusters": {
            "clusters": [{"name": name, "weight": weight} for name, (_, weight) in backends.items()]
        }
    }
    routes: list[dict[str, Any]] = [{"match": {"prefix": "/"}, "route": route}]
    if messages:
        routes.insert(0, {"match": {"path": PATHS[ANTHROPIC]}, "route": {"cluster": messages[0]}})
        backends = {**backends, messages[0]: (messages[1], 0)}
    manager = {
        "@type": f"{types}.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bare",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": routes,
                }
            ]
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": f"{types}.http.router.v3.Router"},
            }
        ],
    }
    return {
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
        },
        "static_resources": {
            "listeners": [
                {
                    "name": "bare",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": manager,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": name,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": {
                        "cluster_name": name,
                        "endpoints": [
                            {
                                "lb_endpoints": [
                                    {
                                        "endpoint": {
                                            "address": {
                                                "socket_address": {
                                                    "address": "127.0.0.1",
                                                    "port_value": backend_port,
                                                }
                                            }
                                        }
                                    }
                                ]
                            }
                        ],
                    },
                }
                for name, (backend_port, _) in backends.items()
            ],
        },
    }


class BareEnvoy:
    def __init__(
        self,
        backends: dict[str, tuple[int, int]],
        log: Path,
        messages: tuple[str, int] | None = None,
    ) -> None:
        self.port = free_port()
        config = log.with_suffix(".json")
        config.write_text(json.dumps(bare_envoy_config(self.port, free_port(), backends, messages)))
        # Same binary and worker count as the gateway's Envoy.
        self.process = subprocess.Popen(
            [envoy_binary(), "-c", str(config), "--disable-hot-restart", "--concurrency", "2",
             "--log-level", "warning"],
            stdout=log.open("wb"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.port, self.process, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


# --- everything running at once


@dataclass
class Stage:
    cluster: Cluster
    operator: OperatorProcess
    fakes: dict[str, FakeProcess]
    gateway: LocalEnvoy
    bare: BareEnvoy
    litellm: LiteLLMProxy
    api_key: str
    logs: Path
    # With `stage(accounting=True)`: the gateway without accounting, and a bare Envoy in
    # front of the streaming fake.
    unaccounted: StaticGateway | None = None
    stream_bare: BareEnvoy | None = None

    def envoy_pids(self) -> list[int]:
        """The gateway's Envoy alone, without the `switchyard envoy` wrapper around it,
        which a Pod does not run."""
        return [pid for pid in common.tree_pids(self.gateway.process.pid) if _comm(pid) == "envoy"]

    def targets(self) -> list[Target]:
        bearer = {"Authorization": f"Bearer {self.api_key}"}
        litellm = {"Authorization": f"Bearer {self.litellm.master_key}"}
        split = [self.fakes[n] for n in SPLIT]
        anthropic = [self.fakes["anthropic"]]
        targets = [
            Target("direct", self.fakes["a"].url, UPSTREAM_MODEL, bearer, lambda: [], OPENAI,
                   [self.fakes["a"]]),
            Target("bare Envoy", self.bare.url, UPSTREAM_MODEL, bearer,
                   lambda: [self.bare.process.pid], OPENAI, split),
            # The client names the endpoint's model and sends its own key, which the gateway
            # checks (a ModelClient's): Switchyard rewrites the model and injects the
            # provider's key.
            Target("Switchyard", self.gateway.url, "bench-chat", CLIENT_HEADERS,
                   self.envoy_pids, OPENAI, split),
            *self._unaccounted_targets(),
            Target("LiteLLM", self.litellm.url, "bench-chat", litellm, self.litellm.pids,
                   OPENAI, split),
            # API translation, and the same backends in their own API. A client of Anthropic's
            # API sends anthropic-version, and its key as the rest do.
            Target(BARE_ANTHROPIC, self.bare.url, ANTHROPIC_MODEL,
                   {"x-api-key": self.api_key, **ANTHROPIC_VERSION}, lambda: [], ANTHROPIC,
                   anthropic, single=False),
            Target(NATIVE_ANTHROPIC, self.gateway.url, "bench-claude",
                   {**CLIENT_HEADERS, **ANTHROPIC_VERSION}, lambda: [], ANTHROPIC, anthropic),
            # Claude on Bedrock: the same Messages request, each attempt signed with SigV4.
            Target(SIGNED, self.gateway.url, "bench-bedrock",
                   {**CLIENT_HEADERS, **ANTHROPIC_VERSION}, lambda: [], ANTHROPIC,
                   [self.fakes["bedrock"]]),
        ]  # fmt: skip
        for direction in DIRECTIONS:
            backends = anthropic if direction.backend == ANTHROPIC else split
            model = "bench-claude" if direction.backend == ANTHROPIC else "bench-chat"
            version = ANTHROPIC_VERSION if direction.client == ANTHROPIC else {}
            targets += [
                Target(direction.translated("Switchyard"), self.gateway.url, model,
                       {**CLIENT_HEADERS, **version}, lambda: [], direction.client, backends),
                # LiteLLM at its pace: on 1 connection its figures add nothing.
                Target(direction.translated("LiteLLM"), self.litellm.url, model,
                       {**litellm, **version}, lambda: [], direction.client, backends,
                       single=False),
            ]  # fmt: skip
        return targets

    def _unaccounted_targets(self) -> list[Target]:
        """The gateway without accounting, sent what Switchyard is sent."""
        if self.unaccounted is None:
            return []
        process = self.unaccounted.process
        split = [self.fakes[n] for n in SPLIT]
        return [
            Target(UNACCOUNTED, self.unaccounted.url, "bench-chat", CLIENT_HEADERS,
                   lambda: [process.pid], OPENAI, split),
        ]  # fmt: skip

    def stream_targets(self) -> list[StreamTarget]:
        """The streaming fake directly, behind bare Envoy, and behind the gateway with
        accounting and without: an OpenAI client that does not ask for its stream's usage."""
        assert self.unaccounted is not None
        assert self.stream_bare is not None
        fake = self.fakes["stream"]
        bearer = {"Authorization": f"Bearer {fake.api_key}"}
        return [
            StreamTarget("direct", fake.url, fake.model, bearer),
            StreamTarget("bare Envoy", self.stream_bare.url, fake.model, bearer),
            StreamTarget("Switchyard", self.gateway.url, STREAM_MODEL, CLIENT_HEADERS),
            StreamTarget(UNACCOUNTED, self.unaccounted.url, STREAM_MODEL, CLIENT_HEADERS),
        ]


UNACCOUNTED = "Switchyard (accounting off)"


@dataclass(frozen=True)
class Direction:
    """A translation: a client of one API, a backend of the other."""

    client: str
    backend: str

    @property
    def name(self) -> str:
        return f"{self.client}→{self.backend}"

    def translated(self, peer: str) -> str:
        """The target that has `peer` translate."""
        return f"{peer} {self.name}"

    @property
    def native(self) -> str:
        """Switchyard, the same backends in their own API: translation is the difference."""
        return "Switchyard" if self.backend == OPENAI else NATIVE_ANTHROPIC

    @property
    def bare(self) -> str:
        """Bare Envoy, the same backends in their own API."""
        return "bare Envoy" if self.backend == OPENAI else BARE_ANTHROPIC


NATIVE_ANTHROPIC = "Switchyard (Anthropic)"
BARE_ANTHROPIC = "bare Envoy (Anthropic)"
SIGNED = "Switchyard (Bedrock, SigV4)"
DIRECTIONS = (Direction(OPENAI, ANTHROPIC), Direction(ANTHROPIC, OPENAI))
# What the translation figures need, in the order the report shows them; then the signed
# path, measured with them against the same native request.
TRANSLATION_TARGETS = (
    *(
        name
        for d in DIRECTIONS
        for name in (d.bare, d.native, d.translated("Switchyard"), d.translated("LiteLLM"))
    ),
    SIGNED,
)


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def _backend(name: str, fake: FakeProcess, weight: int) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "name": name,
        "provider": fake.provider,
        "model": fake.model,
        "url": fake.url,
        "weight": weight,
        "credentialsRef": {"name": "keys", "key": name},
    }
    if fake.provider == "AzureOpenAI":
        backend["apiVersion"] = "2024-10-21"
    if isinstance(fake, BedrockProcess):
        backend |= {"region": fake.region, "authentication": "SigV4"}
    return backend


def _endpoint(model: str, backends: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelEndpoint",
        "metadata": {"name": model, "namespace": NAMESPACE},
        "spec": {"gatewayRef": {"name": "gw"}, "model": model, "backends": backends, **spec},
    }


def deployments(fakes: dict[str, FakeProcess], weights: dict[str, int]) -> list[Deployment]:
    return [
        Deployment(
            name=name,
            provider=fakes[name].provider,
            url=fakes[name].url,
            model=fakes[name].model,
            api_key=fakes[name].api_key,
            weight=weight,
            api_version="2024-10-21" if fakes[name].provider == "AzureOpenAI" else None,
        )
        for name, weight in weights.items()
    ]


# The stage's public models, and the API the gateway is first asked each in (its own).
MODELS = {
    "bench-chat": OPENAI,
    "bench-mixed": OPENAI,
    "bench-claude": ANTHROPIC,
    "bench-bedrock": ANTHROPIC,
}


def _answers(url: str, api: str, model: str) -> bool:
    """Whether 20 requests in a row for `model`, in `api`, all get 200."""
    headers = {**CLIENT_HEADERS, **(ANTHROPIC_VERSION if api == ANTHROPIC else {})}
    outcome = send_sync(f"{url}{PATHS[api]}", request_body(api, model), 20, 2, headers)
    return outcome.statuses[200] == 20


@contextmanager
def stage(
    name: str,
    litellm_router: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    accounting: bool = False,
) -> Iterator[Stage]:
    """The local control plane, the operator, Switchyard's gateway Envoy, a bare Envoy and
    LiteLLM, all in front of the same fake providers. With `accounting`, also the gateway
    without accounting (a static Envoy on what the operator serves the gateway), and a
    streaming fake behind a model of its own and a bare Envoy of its own."""
    models = {**MODELS, **({STREAM_MODEL: OPENAI} if accounting else {})}
    logs = WORK / name / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_key = f"sk-bench-{uuid.uuid4().hex}"
    with ExitStack() as stack:
        cluster = stack.enter_context(control_plane(f"{name}/control-plane"))
        bedrock = BedrockProcess(models=(BEDROCK_MODEL,), keep_requests=1000)
        fakes = {
            "a": FakeProcess("OpenAI", api_key, UPSTREAM_MODEL, keep_requests=1000),
            "b": FakeProcess("OpenAI", api_key, UPSTREAM_MODEL, keep_requests=1000),
            "c": FakeProcess("OpenAI", api_key, UPSTREAM_MODEL, keep_requests=1000),
            "azure": FakeProcess("AzureOpenAI", api_key, "gpt-4o-deployment", keep_requests=1000),
            "anthropic": FakeProcess("Anthropic", api_key, ANTHROPIC_MODEL, keep_requests=1000),
            "bedrock": bedrock,
        }
        if accounting:
            fakes["stream"] = FakeProcess(
                "OpenAI", api_key, UPSTREAM_MODEL, chunk_delay=STREAM_CHUNK_DELAY
            )
        for fake in fakes.values():
            stack.callback(fake.stop)
        keys = {name: fake.api_key for name, fake in fakes.items()}
        keys["bedrock"] = bedrock.credentials_file_text
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "keys", "namespace": NAMESPACE},
                "stringData": keys,
            },
            {
                "apiVersion": API_VERSION,
                "kind": "ModelGateway",
                "metadata": {"name": "gw", "namespace": NAMESPACE},
                "spec": {"listener": {"port": 8080}},
            },
            *lab_client(NAMESPACE, "gw"),
            _endpoint(
                "bench-chat", [_backend(n, fakes[n], w) for n, w in SPLIT.items()], **(spec or {})
            ),
            _endpoint(
                "bench-mixed", [_backend(n, fakes[n], w) for n, w in MIXED.items()], **(spec or {})
            ),
            # Anthropic alone: OpenAI's clients reach it only by translation.
            _endpoint(
                "bench-claude", [_backend("anthropic", fakes["anthropic"], 100)], **(spec or {})
            ),
            _endpoint(
                "bench-bedrock", [_backend("bedrock", fakes["bedrock"], 100)], **(spec or {})
            ),
            *(
                [
                    _endpoint(
                        STREAM_MODEL, [_backend("stream", fakes["stream"], 100)], **(spec or {})
                    )
                ]
                if accounting
                else []
            ),
        )
        operator = OperatorProcess(cluster.kubeconfig, logs / "operator.log")
        operator.start()
        stack.callback(operator.stop)
        for model in models:
            eventually(
                lambda m=model: condition(cluster.get("modelendpoints", m, NAMESPACE), "Ready"),  # type: ignore[misc]
                timeout=60,
            )
        gateway = LocalEnvoy(
            f"{NAMESPACE}/gw",
            free_port(),
            operator.xds_address,
            logs / "envoy.log",
            cluster.kubeconfig,
        )
        stack.callback(gateway.stop)
        gateway.wait_listening()
        for model, api in models.items():
            eventually(lambda m=model, a=api: _answers(gateway.url, a, m), timeout=30)  # type: ignore[misc]
        unaccounted: StaticGateway | None = None
        stream_bare: BareEnvoy | None = None
        if accounting:
            # What the operator serves the gateway now that every model answers through it.
            off = StaticGateway(
                cluster, operator.xds_address, NAMESPACE, "gw", WORK / name / "unaccounted"
            )
            stack.callback(off.stop)
            for model, api in models.items():
                eventually(lambda m=model, a=api: _answers(off.url, a, m), timeout=30)  # type: ignore[misc]
            stream_bare = BareEnvoy(
                {"stream": (fakes["stream"].port, 100)}, logs / "bare-envoy-stream.log"
            )
            stack.callback(stream_bare.stop)
            unaccounted = off
        bare = BareEnvoy(
            {n: (fakes[n].port, w) for n, w in SPLIT.items()},
            logs / "bare-envoy.log",
            messages=("anthropic", fakes["anthropic"].port),
        )
        stack.callback(bare.stop)
        litellm = LiteLLMProxy(
            "bench-chat",
            deployments(fakes, SPLIT),
            logs / "litellm.log",
            router_settings=litellm_router,
            also={"bench-claude": deployments(fakes, {"anthropic": 100})},
        )
        stack.callback(litellm.stop)
        litellm.start()
        yield Stage(
            cluster, operator, fakes, gateway, bare, litellm, api_key, logs, unaccounted,
            stream_bare,
        )  # fmt: skip


# --- the measurements


Runs = dict[str, dict[str, list[float]]]  # target -> figure -> one value per round


def measure(
    targets: Sequence[Target], rounds: int, seconds: int, operator: OperatorProcess | None = None
) -> Runs:
    """Every target under load, then on 1 connection for half as long (those that are), in
    interleaved rounds. With `operator`: after each run the operator finishes what the run
    sent it (the gateway's answer records) before the next run starts, and the run's figures
    include the operator's CPU time over the run and that wait, and the answers it counted."""
    for target in targets:  # warm connection pools and caches; not counted
        wrk(target, CONNECTIONS, 2)
    if operator is not None:
        quiet(operator.pid, OPERATOR_LAG_S)
    runs: Runs = {t.name: {} for t in targets}
    for round_ in range(rounds):
        order = [*targets[round_ % len(targets) :], *targets[: round_ % len(targets)]]
        for target in order:
            for connections, label in ((CONNECTIONS, "loaded"), (1, "single")):
                if connections == 1 and not target.single:
                    continue
                before = _operator_now(operator) if operator is not None else (0.0, 0.0)
                result = wrk(
                    target, connections, seconds if connections > 1 else max(1, seconds // 2)
                )
                if operator is not None:
                    result |= _operator_after(operator, before)
                for key, value in result.items():
                    runs[target.name].setdefault(f"{label}_{key}", []).append(value)
    return runs


# The operator's count of answers: every answer a gateway reported is in this histogram.
ANSWERS_COUNT = "gen_ai_client_operation_duration_seconds_count"
# How late the last records of a run may reach the operator: the gateway sends its answer
# records at least every second (render/envoy.py's _usage_record), and the operator needs a
# moment for them.
OPERATOR_LAG_S = 1.5


def _operator_now(operator: OperatorProcess) -> tuple[float, float]:
    """The answers the operator has counted, and its CPU time so far (read in that order:
    reading its metrics costs it CPU, outside the run)."""
    counted = common.metric_sum(operator.metrics(), ANSWERS_COUNT)
    return counted, cpu_seconds(operator.pid)


def _operator_after(operator: OperatorProcess, before: tuple[float, float]) -> dict[str, float]:
    """Once the operator has gone quiet after a run: how long that took, its CPU time since
    `before`, and the answers it counted since."""
    settle = quiet(operator.pid, OPERATOR_LAG_S)
    cpu = cpu_seconds(operator.pid) - before[1]
    counted = common.metric_sum(operator.metrics(), ANSWERS_COUNT) - before[0]
    return {"operator_settle_s": settle, "operator_cpu_s": cpu, "answers_counted": counted}


def _summary(runs: Runs) -> dict[str, dict[str, dict[str, float]]]:
    return {name: {k: spread(v) for k, v in figures.items()} for name, figures in runs.items()}


def throughput(
    stage: Stage,
    runs: Runs,
    checks: dict[str, Any],
    memory: MemoryWatch,
    rounds: int,
    seconds: int,
    pieces: dict[str, dict[str, int]] | None = None,
) -> dict[str, Any]:
    """The main targets' figures, of runs that measured them; with `pieces` (the accounting
    each gateway's listener has), accounting's own cost too."""
    runs = {name: runs[name] for name in TARGETS if name in runs}
    ratios = {
        "switchyard_vs_bare_rps": _ratios(runs, "Switchyard", "bare Envoy", "loaded_rps"),
        "switchyard_vs_litellm_rps": _ratios(runs, "Switchyard", "LiteLLM", "loaded_rps"),
        "bare_vs_litellm_rps": _ratios(runs, "bare Envoy", "LiteLLM", "loaded_rps"),
    }
    added = {
        f"{label}_{percentile}_added_over_{base_key}_ms": _differences(
            runs, "Switchyard", base, f"{label}_{percentile}_ms"
        )
        for label in ("loaded", "single")
        for percentile in ("p50", "p99")
        for base, base_key in (("bare Envoy", "bare"), ("direct", "direct"))
    }
    found: dict[str, Any] = {
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "runs": runs,
        "checks": {name: checks[name] for name in runs},
        "summary": _summary(runs),
        "ratios": {k: spread(v) for k, v in ratios.items()},
        "added_ms": {k: spread(v) for k, v in added.items()},
        "peak_rss_mb": {
            **memory.peaks,
            "Switchyard (VmHWM)": max(common.peak_rss_mb(p) for p in stage.envoy_pids()),
            "bare Envoy (VmHWM)": common.peak_rss_mb(stage.bare.process.pid),
        },
    }
    if pieces is not None and stage.unaccounted is not None:
        found["accounting"] = _accounting(runs, pieces)
        found["peak_rss_mb"][f"{UNACCOUNTED} (VmHWM)"] = common.peak_rss_mb(
            stage.unaccounted.process.pid
        )
    return found


def _accounting(runs: Runs, pieces: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Switchyard against itself without accounting, round by round; and the operator's
    side: its CPU time per request (over each run and the wait for it to go quiet after), and
    the share of Switchyard's answers it counted."""
    on, off = runs["Switchyard"], runs[UNACCOUNTED]

    def per_request_ms(figures: dict[str, list[float]]) -> list[float]:
        return [
            cpu * 1000 / max(1.0, n)
            for cpu, n in zip(
                figures["loaded_operator_cpu_s"], figures["loaded_requests"], strict=True
            )
        ]

    counted = [
        c / max(1.0, n)
        for label in ("loaded", "single")
        for c, n in zip(on[f"{label}_answers_counted"], on[f"{label}_requests"], strict=True)
    ]
    return {
        "pieces": pieces,
        "vs_unaccounted_rps": spread(_ratios(runs, "Switchyard", UNACCOUNTED, "loaded_rps")),
        "unaccounted_vs_bare_rps": spread(_ratios(runs, UNACCOUNTED, "bare Envoy", "loaded_rps")),
        "added_ms": {
            f"{label}_{percentile}": spread(
                _differences(runs, "Switchyard", UNACCOUNTED, f"{label}_{percentile}_ms")
            )
            for label in ("loaded", "single")
            for percentile in ("p50", "p99")
        },
        "operator_cpu_ms_per_request": {
            "Switchyard": spread(per_request_ms(on)),
            UNACCOUNTED: spread(per_request_ms(off)),
        },
        "operator_settle_s": {
            "Switchyard": spread(on["loaded_operator_settle_s"]),
            UNACCOUNTED: spread(off["loaded_operator_settle_s"]),
        },
        "counted_share": spread(counted),
    }


def translation(runs: Runs, checks: dict[str, Any], rounds: int, seconds: int) -> dict[str, Any]:
    """Each direction against the native request to the same backends (Switchyard), a bare
    Envoy in front of them, and LiteLLM translating too."""
    runs = {name: runs[name] for name in TRANSLATION_TARGETS}
    directions: dict[str, Any] = {}
    for d in DIRECTIONS:
        ours, theirs = d.translated("Switchyard"), d.translated("LiteLLM")
        directions[d.name] = {
            "translated": ours,
            "native": d.native,
            "bare": d.bare,
            "litellm": theirs,
            "vs_bare_rps": spread(_ratios(runs, ours, d.bare, "loaded_rps")),
            "vs_native_rps": spread(_ratios(runs, ours, d.native, "loaded_rps")),
            "vs_litellm_rps": spread(_ratios(runs, ours, theirs, "loaded_rps")),
            "added_over_native_ms": {
                f"{label}_{percentile}": spread(
                    _differences(runs, ours, d.native, f"{label}_{percentile}_ms")
                )
                for label in ("loaded", "single")
                for percentile in ("p50", "p99")
            },
            # Every request the translation's targets lost: its figures mean nothing without.
            "failed": sum(
                sum(runs[name].get(f"{label}_failed", []))
                for name in (ours, d.native, d.bare)
                for label in ("loaded", "single")
            ),
            "checked": all(checks[name]["ok"] for name in (ours, d.native, d.bare)),
        }
    signed = {
        "vs_native_rps": spread(_ratios(runs, SIGNED, NATIVE_ANTHROPIC, "loaded_rps")),
        "added_over_native_ms": {
            f"{label}_{percentile}": spread(
                _differences(runs, SIGNED, NATIVE_ANTHROPIC, f"{label}_{percentile}_ms")
            )
            for label in ("loaded", "single")
            for percentile in ("p50", "p99")
        },
    }
    return {
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "date": common.machine()["date"],
        "runs": runs,
        "checks": {name: checks[name] for name in TRANSLATION_TARGETS},
        "summary": _summary(runs),
        "directions": directions,
        "signed": signed,
    }


def _ratios(runs: dict[str, dict[str, list[float]]], a: str, b: str, key: str) -> list[float]:
    return [x / y for x, y in zip(runs[a][key], runs[b][key], strict=True)]


def _differences(runs: dict[str, dict[str, list[float]]], a: str, b: str, key: str) -> list[float]:
    return [x - y for x, y in zip(runs[a][key], runs[b][key], strict=True)]


def listener_accounting(stage: Stage) -> dict[str, dict[str, int]]:
    """The accounting pieces each gateway's Envoy runs (its admin API's config dump): all
    three, once each, in Switchyard's; none in the one without."""
    assert stage.unaccounted is not None
    pieces = {
        "Switchyard": accounting_pieces(dumped_listeners(json.loads(stage.gateway.config_dump()))),
        UNACCOUNTED: accounting_pieces(dumped_listeners(stage.unaccounted.config_dump())),
    }
    expected = {"Switchyard": 1, UNACCOUNTED: 0}
    for name, found in pieces.items():
        if set(found.values()) != {expected[name]}:
            raise AssertionError(f"{name}'s listener has the accounting pieces {found}")
    return pieces


# The usage events each stream target's client gets, not having asked for any: the gateway
# asks the backend for them (backend_shaper.lua) and takes that event away again
# (answer.lua), in both variants.
USAGE_EVENTS = {"direct": 0, "bare Envoy": 0, "Switchyard": 0, UNACCOUNTED: 0}


def time_to_first_event(stage: Stage, requests: int) -> dict[str, Any]:
    """A streamed chat completion, one at a time, to the streaming fake directly, through
    bare Envoy and through the gateway with accounting and without: each stream checked
    first, then `requests` to each, interleaved."""
    targets = stage.stream_targets()
    checks = {}
    for target in targets:
        client = StreamClient(target)
        try:
            streamed = client.send()
        finally:
            client.close()
        problem = streamed.problem()
        if problem is None and streamed.usage_events != USAGE_EVENTS[target.name]:
            problem = f"{streamed.usage_events} usage events, not {USAGE_EVENTS[target.name]}"
        checks[target.name] = {
            "ok": problem is None,
            "problem": problem,
            "events": len(streamed.events),
            "usage_events": streamed.usage_events,
        }
    samples = {
        name: {key: [round(v, 3) for v in values] for key, values in figures.items()}
        for name, figures in first_events(targets, requests).items()
    }
    summary = {
        name: {
            f"{key.removesuffix('_ms')}_{p}_ms": common.percentile(values, q)
            for key, values in figures.items()
            for p, q in (("p50", 50), ("p99", 99))
        }
        for name, figures in samples.items()
    }

    def added(a: str, b: str) -> dict[str, float]:
        return {key: summary[a][key] - summary[b][key] for key in summary[a]}

    return {
        "requests": requests,
        "chunk_delay_s": STREAM_CHUNK_DELAY,
        "checks": checks,
        "samples": samples,
        "summary": summary,
        "added_ms": {
            "over_direct": added("Switchyard", "direct"),
            "over_bare": added("Switchyard", "bare Envoy"),
            "accounting": added("Switchyard", UNACCOUNTED),
            "unaccounted_over_direct": added(UNACCOUNTED, "direct"),
            "bare_over_direct": added("bare Envoy", "direct"),
        },
    }


def split_accuracy(stage: Stage, requests: int, peer_requests: int) -> dict[str, Any]:
    """Observed shares over `requests` requests of the mixed endpoint (OpenAI, Azure OpenAI,
    Anthropic at 50/30/20) through Switchyard, and `peer_requests` through LiteLLM (which
    serves about 1% as many a second)."""
    names = {stage.fakes[n].port: n for n in MIXED}
    expected = {n: w / sum(MIXED.values()) for n, w in MIXED.items()}
    results: dict[str, Any] = {"expected": expected}
    mixed = LiteLLMProxy(
        "bench-mixed", deployments(stage.fakes, MIXED), stage.logs / "litellm-mixed.log"
    )
    mixed.start()
    try:
        for name, url, count, headers in (
            ("Switchyard", stage.gateway.url, requests, None),
            ("LiteLLM", mixed.url, peer_requests, {"Authorization": f"Bearer {mixed.master_key}"}),
        ):
            outcome = send_sync(
                f"{url}{PATHS[OPENAI]}", request_body(OPENAI, "bench-mixed"), count, 16, headers
            )
            shares = {names.get(p, str(p)): s for p, s in outcome.shares().items()}
            results[name] = {
                "requests": count,
                "observed": shares,
                "failed": outcome.failed,
                "max_error_pp": max(abs(shares.get(n, 0.0) - e) * 100 for n, e in expected.items()),
            }
    finally:
        mixed.stop()
    return results


def run(quick: bool = False, only: str | None = None) -> dict[str, Any]:
    """All of it; or, `only="translation"`, the translation's targets alone, their figures put
    in the saved results in place of the last ones (the rest kept as they were)."""
    started = time.monotonic()
    rounds, seconds = (1, 3) if quick else (3, 10)
    with stage("dataplane", accounting=only is None) as running:
        targets = running.targets()
        if only == "translation":
            targets = [t for t in targets if t.name in TRANSLATION_TARGETS]
        pieces = listener_accounting(running) if only is None else None
        checks = {t.name: check(t) for t in targets}
        for name, checked in checks.items():
            if not checked["ok"]:
                print(f"{name}: {checked['problem']}", flush=True)
        with MemoryWatch([t for t in targets if t.name in TARGETS]) as memory:
            runs = measure(targets, rounds, seconds, running.operator)
        translated = translation(runs, checks, rounds, seconds)
        if only == "translation":
            data = common.load("dataplane") or {"machine": common.machine()}
        else:
            data = {
                "throughput": throughput(running, runs, checks, memory, rounds, seconds, pieces),
                "ttft": time_to_first_event(running, 30 if quick else 300),
                "split": split_accuracy(running, *((1000, 500) if quick else (10_000, 2_000))),
                "machine": common.machine(),
            }
            for name, checked in data["ttft"]["checks"].items():
                if not checked["ok"]:
                    print(f"{name}, streamed: {checked['problem']}", flush=True)
        data["translation"] = translated | {"apart": only is not None}
    if only is None:
        data["elapsed_s"] = time.monotonic() - started
    else:
        data["translation"]["elapsed_s"] = time.monotonic() - started
    common.save("dataplane", data)
    return data


# --- the report


TARGETS = ("direct", "bare Envoy", "Switchyard", UNACCOUNTED, "LiteLLM")


def stage_name(fake: str) -> str:
    """The provider a fake of the stage plays, for the report."""
    return {"a": "OpenAI", "azure": "Azure OpenAI", "anthropic": "Anthropic"}.get(fake, fake)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _main_targets(data) if "throughput" in data else []
    if "translation" in data:
        rows += _translation_targets(data["translation"])
    return rows


def _main_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    ratios, added = data["throughput"]["ratios"], data["throughput"]["added_ms"]
    kept = ratios["switchyard_vs_bare_rps"]
    rows = [
        common.target(
            "Data plane: Switchyard with accounting, checking client keys, keeps ≥ 70% of bare "
            "Envoy's throughput",
            _percent(kept),
            kept["median"] >= 0.7,
        )
    ]
    for label, words in (("single", "1 connection"), ("loaded", f"{CONNECTIONS} connections")):
        extra = added[f"{label}_p99_added_over_bare_ms"]
        rows.append(
            common.target(
                f"Data plane: Switchyard adds < 1 ms at p99 over bare Envoy ({words})",
                common.fmt(extra, 2, " ms"),
                extra["median"] < 1.0,
            )
        )
    if "ttft" in data:
        added = data["ttft"]["added_ms"]["over_direct"]
        trouble = "" if _streams_checked(data["ttft"]) else "; streams checked wrong"
        rows.append(
            common.target(
                "Data plane: Switchyard adds < 5 ms p50 to a streamed answer's time to first "
                "event (over calling the provider directly)",
                f"{added['first_event_p50_ms']:.2f} ms at p50, "
                f"{added['first_event_p99_ms']:.2f} ms at p99" + trouble,
                added["first_event_p50_ms"] < 5.0 and not trouble,
            )
        )
    return rows


def _streams_checked(ttft: dict[str, Any]) -> bool:
    return all(checked["ok"] for checked in ttft["checks"].values())


def _translation_targets(translation: dict[str, Any]) -> list[dict[str, Any]]:
    """Per direction: throughput against bare Envoy, added p99 against the native request;
    missed, whatever the figures, if a request failed or a check found the replies wrong."""
    rows = []
    for name, direction in _directions(translation):
        trouble = ""
        if direction["failed"]:
            trouble += f"; {direction['failed']:,.0f} requests failed"
        if not direction["checked"]:
            trouble += "; replies checked wrong (see API translation)"
        kept = direction["vs_bare_rps"]
        rows.append(
            common.target(
                f"Data plane: translated {name} keeps ≥ 50% of bare Envoy's throughput",
                _percent(kept) + trouble,
                kept["median"] >= 0.5 and not trouble,
            )
        )
        for label, words in (("single", "1 connection"), ("loaded", f"{CONNECTIONS} connections")):
            extra = direction["added_over_native_ms"][f"{label}_p99"]
            rows.append(
                common.target(
                    f"Data plane: translated {name} adds < 1 ms at p99 over native ({words})",
                    common.fmt(extra, 2, " ms") + trouble,
                    extra["median"] < 1.0 and not trouble,
                )
            )
    return rows


def _directions(translation: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The measured directions, in DIRECTIONS' order."""
    found = translation["directions"]
    return [(d.name, found[d.name]) for d in DIRECTIONS if d.name in found]


def _percent(figure: dict[str, float]) -> str:
    if figure["runs"] == 1 or figure["min"] == figure["max"]:
        return f"{figure['median']:.0%}"
    return f"{figure['median']:.0%} ({figure['min']:.0%}–{figure['max']:.0%})"


def section(data: dict[str, Any]) -> str:
    text = _main_section(data) if "throughput" in data else "\n## Data plane\n"
    if "translation" in data:
        text += _translation_section(data["translation"])
    return text


def _main_section(data: dict[str, Any]) -> str:
    throughput, split = data["throughput"], data["split"]
    summary = throughput["summary"]
    rss = throughput["peak_rss_mb"]
    shown = [name for name in TARGETS if name in summary]
    labels = [name.replace(" (", "\n(") for name in shown]
    rows = []
    for name in shown:
        figures = summary[name]
        memory = f"{rss[name]:.0f}" if rss.get(name) else "–"
        latencies = " | ".join(
            common.fmt(figures[f"{label}_{p}_ms"], 2)
            for label in ("loaded", "single")
            for p in ("p50", "p99")
        )
        failed = figures["loaded_failed"]["max"] + figures["single_failed"]["max"]
        rows.append(
            f"| {name} | {common.fmt(figures['loaded_rps'])} | {latencies} | {failed:.0f} | "
            f"{memory} |"
        )
    ratios = throughput["ratios"]
    added = {k: common.fmt(v, 2, " ms") for k, v in throughput["added_ms"].items()}
    header = (
        f"| Target | req/s ({CONNECTIONS} conn.) | p50 ms | p99 ms | p50 ms (1 conn.) "
        "| p99 ms (1 conn.) | failed | peak RSS MB |\n|---|---|---|---|---|---|---|---|"
    )
    throughput_plot = common.bars(
        "dataplane-throughput.png",
        f"Throughput at {CONNECTIONS} connections (log scale)",
        "requests/s",
        labels,
        {"requests/s": [summary[n]["loaded_rps"] for n in shown]},
        log=True,
    )
    latency_plot = common.bars(
        "dataplane-latency.png",
        "Latency, 1 connection (log scale)",
        "ms",
        labels,
        {p: [summary[n][f"single_{p}_ms"] for n in shown] for p in ("p50", "p99")},
        log=True,
    )
    accounting = throughput.get("accounting")
    unaccounted_rss = _unaccounted_rss(rss)
    more = (_accounting_section(accounting, ratios) if accounting else "") + (
        _ttft_section(data["ttft"]) if "ttft" in data else ""
    )
    expected = split["expected"]
    names = list(expected)
    providers = {name: stage_name(name) for name in names}
    split_rows = [
        f"| {peer} | "
        + " | ".join(f"{split[peer]['observed'].get(n, 0):.1%}" for n in names)
        + f" | {split[peer]['max_error_pp']:.2f} pp | {split[peer]['failed']} "
        + f"| {split[peer]['requests']:,} |"
        for peer in ("Switchyard", "LiteLLM")
    ]
    return f"""
## Data plane

Fake providers on loopback answer at once, so every millisecond here is the proxy's. wrk
(Debian's, {CONNECTIONS} connections, 2 threads) sends a chat completion (`max_tokens` 64; a
reply other than 2xx counts as failed) to each target for
{throughput["seconds"]} s, then again on 1 connection for half as long; {throughput["rounds"]}
interleaved rounds. After every run the benchmark waits until the operator has gone quiet (at
least {OPERATOR_LAG_S} s: the gateway sends its answer records at least once a second), so
that no run pays for the records of the one before. The targets:

- **direct**: one OpenAI-wire fake, the client sending the provider's model and key;
- **bare Envoy**: the same Envoy build and worker count as Switchyard's gateway, with a static
  plain weighted route 50/30/20 over three such fakes, the client sending model and key;
- **Switchyard**: the gateway's Envoy as the operator configures it over xDS, the same
  50/30/20 split: the client names the public model `bench-chat` and sends its ModelClient's
  key, which the gateway checks (its SHA-256 digest, in Lua) before it picks a backend,
  rewrites the body's model and injects that backend's key from the mounted Secret; and it
  accounts for every answer: reads its usage and sends a record of it to the operator;
{_unaccounted_bullet(accounting, throughput["checks"])}- **LiteLLM**: `litellm` {
        LITELLM_VERSION
    } proxy, one worker, the same three deployments
  with weights 50/30/20, the client sending the proxy's master key.

All of them share this machine's 2 cores with wrk, the fake providers and the operator
(Python), which bounds every figure; ratios within a round are what carries over to other
machines.

{header}
{chr(10).join(rows)}

- Switchyard / bare Envoy throughput: **{common.fmt(ratios["switchyard_vs_bare_rps"], 2, "×")}**;
  Switchyard / LiteLLM: **{common.fmt(ratios["switchyard_vs_litellm_rps"], 0, "×")}**;
  bare Envoy / LiteLLM: {common.fmt(ratios["bare_vs_litellm_rps"], 0, "×")}.
- Added p99 over bare Envoy: {added["single_p99_added_over_bare_ms"]} on 1 connection,
  {added["loaded_p99_added_over_bare_ms"]} at {CONNECTIONS} connections; added p50 over
  calling the provider directly: {added["single_p50_added_over_direct_ms"]} on 1 connection.
- Peak RSS is the highest resident memory sampled (every 0.25 s) during the runs; Envoy's own
  high-water mark (VmHWM): Switchyard {rss["Switchyard (VmHWM)"]:.0f} MB{unaccounted_rss},
  bare {rss["bare Envoy (VmHWM)"]:.0f} MB. LiteLLM's counts its whole process tree.

{throughput_plot}

{latency_plot}
{more}
### Split accuracy

Requests to one public model split 50/30/20 over OpenAI, Azure OpenAI and Anthropic fakes
(each provider's own wire format), 16 at a time; each reply names the fake that answered.
{split["Switchyard"]["requests"]:,} through Switchyard; {split["LiteLLM"]["requests"]:,} through
LiteLLM, which serves about 1% as many requests a second (its expected error is larger for
that alone: about ±1 pp at 2,000).

| Peer | {" | ".join(providers[n] for n in names)} | largest error | failed | requests |
|---|{"---|" * len(names)}---|---|---|
{chr(10).join(split_rows)}
"""


def _unaccounted_bullet(accounting: dict[str, Any] | None, checks: dict[str, Any]) -> str:
    if accounting is None:
        return ""
    pieces = accounting["pieces"]
    found = ", ".join(
        f"{name}: {sum(counts.values())} of the {len(PIECES)}" for name, counts in pieces.items()
    )
    wrong = [
        f"**{name}'s replies checked wrong: {_cell(checks[name]['problem'])}**"
        for name in ("Switchyard", UNACCOUNTED)
        if not checks[name]["ok"]
    ]
    verdict = "; ".join(wrong) or "both answered the requests checked before the load right"
    return f"""- **{UNACCOUNTED}**: not a setting of the product. The benchmark fetches what the
  operator serves the gateway over xDS, as the gateway's Envoy does (with its certificate),
  removes the listener's accounting (json_to_metadata's response rules, which read a whole
  answer's usage; sse_to_metadata, which reads a stream's usage; the gRPC access log that
  sends each answer's record to the operator; the `answer` Lua filter stays, as a provider's
  refusal needs it, and with it the stream's timing and the hidden usage event), and runs the
  rest as a static config on the same Envoy build and workers, with the same routes,
  clusters, client check and backend keys (the gateway's credentials Secret, as files), its
  failed attempts still reported to the operator with the gateway's certificate. The backend
  shaper still asks OpenAI streams for their usage. Each Envoy's config dump was
  checked for the three pieces before the load ({found}); {verdict};
"""


def _unaccounted_rss(rss: dict[str, float]) -> str:
    hwm = rss.get(f"{UNACCOUNTED} (VmHWM)")
    return "" if hwm is None else f", without accounting {hwm:.0f} MB"


def _accounting_section(accounting: dict[str, Any], ratios: dict[str, Any]) -> str:
    added = {k: common.fmt(v, 2, " ms") for k, v in accounting["added_ms"].items()}
    cpu = {k: common.fmt(v, 3, " ms") for k, v in accounting["operator_cpu_ms_per_request"].items()}
    settle = {k: common.fmt(v, 1, " s") for k, v in accounting["operator_settle_s"].items()}
    return f"""
### What accounting costs

Switchyard against itself without accounting, in the same rounds:

- Throughput with accounting / without: **{common.fmt(accounting["vs_unaccounted_rps"], 2, "×")}**
  at {CONNECTIONS} connections; bare Envoy's kept: {_percent(ratios["switchyard_vs_bare_rps"])}
  with accounting, {_percent(accounting["unaccounted_vs_bare_rps"])} without.
- Added by accounting: **{added["loaded_p99"]}** at p99 and {added["loaded_p50"]} at p50 at
  {CONNECTIONS} connections; **{added["single_p99"]}** at p99 and {added["single_p50"]} at p50 on
  1 connection.
- The operator, beside the gateway: {cpu["Switchyard"]} of CPU per request with accounting,
  {cpu[UNACCOUNTED]} without (its probes and housekeeping), over each run at {CONNECTIONS}
  connections and the wait for it to go quiet after ({settle["Switchyard"]} and
  {settle[UNACCOUNTED]}).
  It counted {_percent(accounting["counted_share"])} of the answers wrk got through
  Switchyard (its count of answers over each run, the records' last second included, over
  wrk's; an answer still in flight when wrk stops is counted by the operator alone). Here the
  operator shares the 2 cores with the gateway, so the CPU it spends on the records is the
  gateway's loss too; in a cluster it runs in a Pod of its own.
"""


def _ttft_section(ttft: dict[str, Any]) -> str:
    summary, checks, added = ttft["summary"], ttft["checks"], ttft["added_ms"]
    rows = []
    for name in USAGE_EVENTS:  # the stream targets, in their order
        figures, checked = summary[name], checks[name]
        verdict = "ok" if checked["ok"] else f"**{_cell(checked['problem'])}**"
        rows.append(
            f"| {name} | {figures['first_event_p50_ms']:.2f} | {figures['first_event_p99_ms']:.2f} "
            f"| {figures['last_byte_p50_ms']:.1f} | {figures['last_byte_p99_ms']:.1f} "
            f"| {checked['usage_events']} | {verdict} |"
        )

    def pair(key: str) -> str:
        found = added[key]
        p50, p99 = found["first_event_p50_ms"], found["first_event_p99_ms"]
        return f"{p50:.2f} ms at p50, {p99:.2f} ms at p99"

    return f"""
### Time to first event

A streamed chat completion (`"stream": true` without `stream_options`, as most OpenAI clients
send it) to an OpenAI-wire fake that writes an event every {ttft["chunk_delay_s"] * 1000:.0f} ms
after its first two: directly; through a bare Envoy with a static route to that fake alone;
and through the gateway, with accounting and without, for the public model
`{STREAM_MODEL}` whose only backend it is. One request at a time on one kept-alive connection
per target (Python's http.client, alike for every target), {ttft["requests"]} to each,
interleaved. Time to first event: from sending the request to reading the first `data:`
line; last byte: to the stream's end. Each stream was checked first: a complete stream of
`chat.completion.chunk` events with text, ending in `[DONE]`; with accounting, the client
gets no usage event (the gateway asks the backend for one and takes it away again); without,
it gets the one the gateway asked for.

| Target | first event p50 ms | p99 ms | last byte p50 ms | p99 ms | usage events | check |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- The gateway adds **{pair("over_direct")}** to the time to first event over calling the
  provider directly; {pair("over_bare")} over bare Envoy.
- Accounting's share (with against without): {pair("accounting")}.
"""


def _cell(text: str) -> str:
    """Free text in a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def _translation_section(translation: dict[str, Any]) -> str:
    summary, checks = translation["summary"], translation["checks"]
    runs = translation["runs"]

    def row(path: str, label: str, target: str) -> str:
        figures = summary[target]
        latencies = " | ".join(
            common.fmt(figures[f"{load}_{p}_ms"], 2) if f"{load}_{p}_ms" in figures else "–"
            for load in ("loaded", "single")
            for p in ("p50", "p99")
        )
        failed = sum(sum(v) for k, v in runs[target].items() if k.endswith("_failed"))
        checked = checks[target]
        verdict = "ok" if checked["ok"] else f"**{_cell(checked['problem'])}**"
        return (
            f"| {path} | {label} | {common.fmt(figures['loaded_rps'])} | {latencies} "
            f"| {failed:,.0f} | {verdict} |"
        )

    rows = []
    for name, direction in _directions(translation):
        client, backend = name.split("→")
        for role, label, path in (
            ("bare", "bare Envoy", f"{backend} → {backend}"),
            ("native", "Switchyard, native", f"{backend} → {backend}"),
            ("translated", "Switchyard, translated", f"{client} → {backend}"),
            ("litellm", "LiteLLM, translated", f"{client} → {backend}"),
        ):
            rows.append(row(path, label, direction[role]))
    signed = translation.get("signed")
    if signed is not None:
        rows.append(row("Anthropic → Bedrock", "Switchyard, signed (SigV4)", SIGNED))
    bullets = []
    if signed is not None:
        added = signed["added_over_native_ms"]
        bullets.append(
            f"- **Signed, Claude on Bedrock**: each attempt signed with SigV4 in the data plane "
            f"(the body's SHA-256 and the HMAC chain, in Lua) keeps "
            f"**{common.fmt(signed['vs_native_rps'], 2, '×')}** of the native Anthropic "
            f"request's throughput and adds **{common.fmt(added['single_p99'], 2, ' ms')}** at "
            f"p99 on 1 connection, {common.fmt(added['loaded_p99'], 2, ' ms')} at "
            f"{CONNECTIONS} (p50: {common.fmt(added['single_p50'], 2, ' ms')}, "
            f"{common.fmt(added['loaded_p50'], 2, ' ms')})."
        )
    for name, direction in _directions(translation):
        added = direction["added_over_native_ms"]
        bullets.append(
            f"- **{name}**: Switchyard translating keeps "
            f"**{common.fmt(direction['vs_bare_rps'], 2, '×')}** of bare Envoy's throughput and "
            f"{common.fmt(direction['vs_native_rps'], 2, '×')} of the native request's; it adds "
            f"**{common.fmt(added['single_p99'], 2, ' ms')}** at p99 over native on 1 "
            f"connection, **{common.fmt(added['loaded_p99'], 2, ' ms')}** at {CONNECTIONS} "
            f"(p50: {common.fmt(added['single_p50'], 2, ' ms')}, "
            f"{common.fmt(added['loaded_p50'], 2, ' ms')}); Switchyard / LiteLLM, both "
            f"translating: **{common.fmt(direction['vs_litellm_rps'], 0, '×')}**."
        )
    names = list(TRANSLATION_TARGETS)
    plot = common.bars(
        "dataplane-translation.png",
        f"Translation: throughput at {CONNECTIONS} connections (log scale)",
        "requests/s",
        [name.replace(" ", "\n", 1) for name in names],
        {"requests/s": [summary[n]["loaded_rps"] for n in names]},
        log=True,
    )
    rounds = translation["rounds"]
    when = (
        f"In {rounds} interleaved round{'s' if rounds > 1 else ''} with the targets above"
        if not translation.get("apart")
        else f"Measured apart ({translation['date']}), in {rounds} interleaved "
        f"round{'s' if rounds > 1 else ''} of its own targets"
    )
    return f"""
### API translation

A client of either API reaches backends of the other: the gateway's Envoy translates OpenAI's
Chat Completions to Anthropic's Messages and back, request and reply, per attempt.
{when}, the same load ({CONNECTIONS} connections for {translation["seconds"]} s, then 1
connection for half as long; LiteLLM and the bare Envoy in front of Anthropic under load
only). Every request is a valid one in the
client's API, `max_tokens` 64 (Messages with `anthropic-version: 2023-06-01`); every reply that
is not 2xx counts as failed. Before the load, each target answered 4 requests that were
checked: a 2xx completion in the client's API, and what reached the fakes in the backend's own
API (`/v1/messages` at Anthropic's, `/v1/chat/completions` at OpenAI's), so that a request
passed on untranslated, or translated wrong, does not pass.

- **translated**: `POST /v1/chat/completions` for `bench-claude`, whose only backend is the
  Anthropic fake; `POST /v1/messages` for `bench-chat`, the three OpenAI fakes (50/30/20);
- **native**: the same two endpoints in their backends' API, through Switchyard: what a
  translated request costs more is the translation, the fakes doing the same work for both;
- **bare Envoy**: the same fakes behind the plain route, in their own API;
- **signed**: `POST /v1/messages` for `bench-bedrock`, Claude on the Bedrock fake, which
  checks each SigV4 signature with botocore (the Bedrock fake answers as the Anthropic one
  does, in Bedrock's InvokeModel);
- **LiteLLM**: the proxy above doing the same translations, `anthropic/{ANTHROPIC_MODEL}`
  behind its `/v1/chat/completions`, the OpenAI deployments behind its `/v1/messages` (through
  Chat Completions, `use_chat_completions_url_for_anthropic_messages`).

| Client → backend | Target | req/s ({CONNECTIONS} conn.) | p50 ms | p99 ms | p50 ms (1 conn.) \
| p99 ms (1 conn.) | failed | check |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{chr(10).join(bullets)}

{plot}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, to try the harness")
    parser.add_argument(
        "--only",
        choices=["translation"],
        help="measure API translation alone (its targets, and the native and bare Envoy ones "
        "it is compared with); the saved results keep the rest",
    )
    args = parser.parse_args()
    data = run(args.quick, args.only)
    shown = {
        "checks": {
            name: checked
            for part in ("throughput", "translation")
            for name, checked in data.get(part, {}).get("checks", {}).items()
        },
        "summary": data["translation"]["summary"] | data.get("throughput", {}).get("summary", {}),
        "translation": data["translation"]["directions"],
    }
    if args.only is None:
        shown |= {
            "ratios": data["throughput"]["ratios"],
            "rss": data["throughput"]["peak_rss_mb"],
            "split": data["split"],
        }
    print(json.dumps(shown, indent=1))
    print(section(data))


if __name__ == "__main__":
    main()
