"""Data plane: what a request pays to go through Switchyard's Envoy gateway, against calling a
provider directly, a bare Envoy with a plain weighted route (the limit), and LiteLLM's proxy
(the peer), all in one run against the same fake providers, which answer at once.

Rounds are interleaved (each round runs every target once, in a rotating order), so that a
noisy neighbour on this shared machine hits every target alike; ratios are taken within a
round, then summarised.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from common import WORK, OperatorProcess, control_plane, spread
from gatewaylab import (
    CLIENT_HEADERS,
    FakeProcess,
    LocalEnvoy,
    chat,
    free_port,
    lab_client,
    send_sync,
    wait_for_port,
)
from litellm_proxy import LITELLM_VERSION, Deployment, LiteLLMProxy
from switchyard.api.models import API_VERSION
from switchyard.local_envoy import envoy_binary
from tests_support.cluster import Cluster, condition, eventually

NAMESPACE = "bench-data"
# Three OpenAI-wire fakes share the load in every throughput run; the mixed endpoint adds
# Azure OpenAI and Anthropic, for the split-accuracy run.
SPLIT = {"a": 50, "b": 30, "c": 20}
MIXED = {"a": 50, "azure": 30, "anthropic": 20}
UPSTREAM_MODEL = "gpt-4o"
CONNECTIONS = 8


@dataclass
class Target:
    """One way to reach the providers, as wrk sees it."""

    name: str
    url: str
    model: str
    headers: dict[str, str]
    pids: Callable[[], list[int]]  # the processes whose memory counts

    def wrk_script(self) -> Path:
        body = json.dumps(chat(self.model)).replace("'", "\\'")
        lines = ['wrk.method = "POST"', f"wrk.body = '{body}'"]
        for name, value in {"Content-Type": "application/json", **self.headers}.items():
            lines.append(f'wrk.headers["{name}"] = "{value}"')
        # wrk's own summary, as JSON on the last line: latencies in microseconds.
        lines.append(WRK_DONE)
        path = WORK / f"wrk-{self.name.replace(' ', '-')}.lua"
        path.write_text("\n".join(lines) + "\n")
        return path


WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "failed": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk(target: Target, connections: int, seconds: int) -> dict[str, float]:
    """One wrk run; requests per second, p50 and p99 in ms, and failed requests."""
    threads = min(2, connections)
    done = subprocess.run(
        [
            "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(target.wrk_script()), f"{target.url}/v1/chat/completions",
        ],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "rps": summary["requests"] / (summary["duration_us"] / 1e6),
        "p50_ms": summary["p50_us"] / 1000,
        "p99_ms": summary["p99_us"] / 1000,
        "failed": summary["failed"],
    }


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
    port: int, admin_port: int, backends: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """backends: name -> (port, weight)."""
    types = "type.googleapis.com/envoy.extensions.filters"
    route = {
        "weighted_clusters": {
            "clusters": [{"name": name, "weight": weight} for name, (_, weight) in backends.items()]
        }
    }
    manager = {
        "@type": f"{types}.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "bare",
        "route_config": {
            "virtual_hosts": [
                {
                    "name": "all",
                    "domains": ["*"],
                    "routes": [{"match": {"prefix": "/"}, "route": route}],
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
    def __init__(self, backends: dict[str, tuple[int, int]], log: Path) -> None:
        self.port = free_port()
        config = log.with_suffix(".json")
        config.write_text(json.dumps(bare_envoy_config(self.port, free_port(), backends)))
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

    def envoy_pids(self) -> list[int]:
        """The gateway's Envoy alone, without the `switchyard envoy` wrapper around it,
        which a Pod does not run."""
        return [pid for pid in common.tree_pids(self.gateway.process.pid) if _comm(pid) == "envoy"]

    def targets(self) -> list[Target]:
        bearer = {"Authorization": f"Bearer {self.api_key}"}
        return [
            Target("direct", self.fakes["a"].url, UPSTREAM_MODEL, bearer, lambda: []),
            Target(
                "bare Envoy", self.bare.url, UPSTREAM_MODEL, bearer, lambda: [self.bare.process.pid]
            ),
            # The client names the endpoint's model and sends its own key, which the gateway
            # checks (a ModelClient's): Switchyard rewrites the model and injects the
            # provider's key.
            Target("Switchyard", self.gateway.url, "bench-chat", CLIENT_HEADERS, self.envoy_pids),
            Target(
                "LiteLLM",
                self.litellm.url,
                "bench-chat",
                {"Authorization": f"Bearer {self.litellm.master_key}"},
                self.litellm.pids,
            ),
        ]


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


@contextmanager
def stage(
    name: str, litellm_router: dict[str, Any] | None = None, spec: dict[str, Any] | None = None
) -> Iterator[Stage]:
    """The local control plane, the operator, Switchyard's gateway Envoy, a bare Envoy and
    LiteLLM, all in front of the same fake providers."""
    logs = WORK / name / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    api_key = f"sk-bench-{uuid.uuid4().hex}"
    with ExitStack() as stack:
        cluster = stack.enter_context(control_plane(f"{name}/control-plane"))
        fakes = {
            "a": FakeProcess("OpenAI", api_key, UPSTREAM_MODEL, keep_requests=1000),
            "b": FakeProcess("OpenAI", api_key, UPSTREAM_MODEL, keep_requests=1000),
            "c": FakeProcess("OpenAI", api_key, UPSTREAM_MODEL, keep_requests=1000),
            "azure": FakeProcess("AzureOpenAI", api_key, "gpt-4o-deployment", keep_requests=1000),
            "anthropic": FakeProcess("Anthropic", api_key, "claude-sonnet-4-5", keep_requests=1000),
        }
        for fake in fakes.values():
            stack.callback(fake.stop)
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "keys", "namespace": NAMESPACE},
                "stringData": {name: fake.api_key for name, fake in fakes.items()},
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
        )
        operator = OperatorProcess(cluster.kubeconfig, logs / "operator.log")
        operator.start()
        stack.callback(operator.stop)
        for model in ("bench-chat", "bench-mixed"):
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
        for model in ("bench-chat", "bench-mixed"):
            eventually(
                lambda m=model: (
                    send_sync(f"{gateway.url}/v1/chat/completions", chat(m), 20, 2).statuses[200]
                    == 20
                ),  # type: ignore[misc]
                timeout=30,
            )
        bare = BareEnvoy({n: (fakes[n].port, w) for n, w in SPLIT.items()}, logs / "bare-envoy.log")
        stack.callback(bare.stop)
        litellm = LiteLLMProxy(
            "bench-chat",
            deployments(fakes, SPLIT),
            logs / "litellm.log",
            router_settings=litellm_router,
        )
        stack.callback(litellm.stop)
        litellm.start()
        yield Stage(cluster, operator, fakes, gateway, bare, litellm, api_key, logs)


# --- the measurements


def throughput(stage: Stage, rounds: int, seconds: int) -> dict[str, Any]:
    targets = stage.targets()
    for target in targets:  # warm connection pools and caches; not counted
        wrk(target, CONNECTIONS, 2)
    runs: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}
    with MemoryWatch(targets) as memory:
        for round_ in range(rounds):
            order = targets[round_ % len(targets) :] + targets[: round_ % len(targets)]
            for target in order:
                for connections, label in ((CONNECTIONS, "loaded"), (1, "single")):
                    result = wrk(
                        target, connections, seconds if connections > 1 else max(1, seconds // 2)
                    )
                    for key, value in result.items():
                        runs[target.name].setdefault(f"{label}_{key}", []).append(value)
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
    return {
        "rounds": rounds,
        "seconds": seconds,
        "connections": CONNECTIONS,
        "runs": runs,
        "summary": {
            name: {k: spread(v) for k, v in figures.items()} for name, figures in runs.items()
        },
        "ratios": {k: spread(v) for k, v in ratios.items()},
        "added_ms": {k: spread(v) for k, v in added.items()},
        "peak_rss_mb": {
            **memory.peaks,
            "Switchyard (VmHWM)": max(common.peak_rss_mb(p) for p in stage.envoy_pids()),
            "bare Envoy (VmHWM)": common.peak_rss_mb(stage.bare.process.pid),
        },
    }


def _ratios(runs: dict[str, dict[str, list[float]]], a: str, b: str, key: str) -> list[float]:
    return [x / y for x, y in zip(runs[a][key], runs[b][key], strict=True)]


def _differences(runs: dict[str, dict[str, list[float]]], a: str, b: str, key: str) -> list[float]:
    return [x - y for x, y in zip(runs[a][key], runs[b][key], strict=True)]


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
                f"{url}/v1/chat/completions", chat("bench-mixed"), count, 16, headers
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


def run(quick: bool = False) -> dict[str, Any]:
    started = time.monotonic()
    with stage("dataplane") as running:
        data: dict[str, Any] = {
            "throughput": throughput(running, rounds=1 if quick else 3, seconds=3 if quick else 10),
            "split": split_accuracy(running, *((1000, 500) if quick else (10_000, 2_000))),
        }
    data["machine"] = common.machine()
    data["elapsed_s"] = time.monotonic() - started
    common.save("dataplane", data)
    return data


# --- the report


TARGETS = ("direct", "bare Envoy", "Switchyard", "LiteLLM")


def stage_name(fake: str) -> str:
    """The provider a fake of the stage plays, for the report."""
    return {"a": "OpenAI", "azure": "Azure OpenAI", "anthropic": "Anthropic"}.get(fake, fake)


def targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    ratios, added = data["throughput"]["ratios"], data["throughput"]["added_ms"]
    kept = ratios["switchyard_vs_bare_rps"]
    rows = [
        common.target(
            "Data plane: Switchyard, checking client keys, keeps ≥ 70% of bare Envoy's throughput",
            f"{kept['median']:.0%} ({kept['min']:.0%}–{kept['max']:.0%})",
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
    return rows


def section(data: dict[str, Any]) -> str:
    throughput, split = data["throughput"], data["split"]
    summary = throughput["summary"]
    rss = throughput["peak_rss_mb"]
    rows = []
    for name in TARGETS:
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
        TARGETS,
        {"requests/s": [summary[n]["loaded_rps"] for n in TARGETS]},
        log=True,
    )
    latency_plot = common.bars(
        "dataplane-latency.png",
        "Latency, 1 connection (log scale)",
        "ms",
        TARGETS,
        {p: [summary[n][f"single_{p}_ms"] for n in TARGETS] for p in ("p50", "p99")},
        log=True,
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
(Debian's, {CONNECTIONS} connections, 2 threads) sends a chat completion to each target for
{throughput["seconds"]} s, then again on 1 connection for half as long; {throughput["rounds"]}
interleaved rounds. The targets:

- **direct**: one OpenAI-wire fake, the client sending the provider's model and key;
- **bare Envoy**: the same Envoy build and worker count as Switchyard's gateway, with a static
  plain weighted route 50/30/20 over three such fakes, the client sending model and key;
- **Switchyard**: the gateway's Envoy as the operator configures it over xDS, the same
  50/30/20 split: the client names the public model `bench-chat` and sends its ModelClient's
  key, which the gateway checks (its SHA-256 digest, in Lua) before it picks a backend,
  rewrites the body's model and injects that backend's key from the mounted Secret;
- **LiteLLM**: `litellm` {LITELLM_VERSION} proxy, one worker, the same three deployments
  with weights 50/30/20, the client sending the proxy's master key.

All four share this machine's 2 cores with wrk and the fake providers (Python), which bounds
every figure; ratios within a round are what carries over to other machines.

{header}
{chr(10).join(rows)}

- Switchyard / bare Envoy throughput: **{common.fmt(ratios["switchyard_vs_bare_rps"], 2, "×")}**;
  Switchyard / LiteLLM: **{common.fmt(ratios["switchyard_vs_litellm_rps"], 0, "×")}**;
  bare Envoy / LiteLLM: {common.fmt(ratios["bare_vs_litellm_rps"], 0, "×")}.
- Added p99 over bare Envoy: {added["single_p99_added_over_bare_ms"]} on 1 connection,
  {added["loaded_p99_added_over_bare_ms"]} at {CONNECTIONS} connections; added p50 over
  calling the provider directly: {added["single_p50_added_over_direct_ms"]} on 1 connection.
- Peak RSS is the highest resident memory sampled (every 0.25 s) during the runs; Envoy's own
  high-water mark (VmHWM): Switchyard {rss["Switchyard (VmHWM)"]:.0f} MB, bare
  {rss["bare Envoy (VmHWM)"]:.0f} MB. LiteLLM's counts its whole process tree.

{throughput_plot}

{latency_plot}

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs, to try the harness")
    args = parser.parse_args()
    data = run(args.quick)
    print(
        json.dumps(
            {k: v for k, v in data.items() if k != "throughput"}
            | {
                "summary": data["throughput"]["summary"],
                "ratios": data["throughput"]["ratios"],
                "rss": data["throughput"]["peak_rss_mb"],
            },
            indent=1,
        )
    )
    print(section(data))


if __name__ == "__main__":
    main()
