"""The chaos world: a control plane of its own (its components are killed and restarted, so
it is never the session's cluster, nor one KUBECONFIG names), two operator replicas as
processes with leader election, each reaching the API server through a partition it can be
cut off by, the real Envoy carrying clients' traffic to fake providers, and endpoints that
churn while it all happens.

CHAOS_KILLS sets how many times the leader is killed (`make chaos`: 50; `make test`: 3).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

import localcluster
from gatewaylab import CLIENT_KEY, SWITCHYARD, FakeProcess, LocalEnvoy, lab_client
from ports import free_port
from switchyard.handlers.leadership import LEASE_NAME
from switchyard.plan.routing import credentials_key
from tests_support.cluster import Cluster, KubectlError, condition, eventually
from tests_support.partition import Partition
from tests_support.scenario import API_VERSION

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("CHAOS_KILLS", "3"))
OPERATOR_NAMESPACE = "sy-chaos-system"
GATEWAY = "gw"
FAKES = ("a", "b", "c")
# Endpoints that live through everything and carry the clients' traffic: two healthy
# backends each, so a client request has no excuse to fail.
STEADY = {"steady-1": ("a", "b"), "steady-2": ("b", "c")}
# Churned endpoints at most at a time.
CHURN_LIMIT = 8
PASSES = re.compile(
    r'^switchyard_gateway_reconcile_duration_seconds_count\{[^}]*gateway="gw"[^}]*\} (\S+)$',
    re.MULTILINE,
)


class Replica:
    """`switchyard run --leader-elect`, as one Pod of the chart's Deployment would run it."""

    def __init__(self, name: str, kubeconfig: Path, xds_address: str, logs: Path) -> None:
        self.name = name
        self.metrics_port = free_port()
        self.log = logs / f"{name}.log"
        self.process = subprocess.Popen(
            [SWITCHYARD, "run", "--leader-elect", "--verbose", "--xds-address", xds_address,
             "--metrics-port", str(self.metrics_port)],
            stdout=self.log.open("wb"), stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAME": name,
                 "POD_NAMESPACE": OPERATOR_NAMESPACE},
        )  # fmt: skip

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """`kill -9`: no lease handed back, no stream closed cleanly."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def passes(self) -> float:
        """Passes this replica made over the gateway, from its own /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return sum(float(value) for value in PASSES.findall(text))


class Load:
    """Clients calling the steady endpoints through the gateway without pause, with the
    official OpenAI SDK (no retries of its own), until stopped."""

    def __init__(self, base_url: str, threads: int = 2) -> None:
        self.base_url = base_url
        self.served = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, args=(model,), daemon=True)
                         for model in list(STEADY)[:threads]]  # fmt: skip
        for worker in self._workers:
            worker.start()

    def _run(self, model: str) -> None:
        client = openai.OpenAI(base_url=self.base_url, api_key=CLIENT_KEY, max_retries=0)
        while not self._stop.is_set():
            try:
                client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": "hello"}], timeout=30
                )
                self.served += 1
            except Exception as error:  # every kind of failure counts, and is shown
                self.failures.append(f"{time.strftime('%H:%M:%S')} {model}: {error!r}")

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)


class Churn:
    """Endpoints created, reweighted and deleted, with Secrets of their own, from a thread.

    Writes the API server refuses while a component is down are counted, not retried: the
    end state is whatever the API server holds, and the operator must converge on it."""

    def __init__(self, world: ChaosWorld, interval: float = 0.5) -> None:
        self.world = world
        self.interval = interval
        self.writes: Counter[str] = Counter()
        self._random = random.Random(0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.step()
                self.writes["applied"] += 1
            except Exception:  # the API server is away: the next step tries again
                self.writes["refused"] += 1

    def step(self) -> None:
        world, pick = self.world, self._random
        names = [
            e["metadata"]["name"] for e in world.cluster.list("modelendpoints", world.namespace)
        ]
        present = [name for name in names if name.startswith("churn-")]
        if present and (len(present) >= CHURN_LIMIT or pick.random() < 0.3):
            name = pick.choice(present)
            world.cluster.delete("modelendpoints", name, world.namespace, wait=False)
            world.cluster.delete("secrets", name, world.namespace, wait=False)
        else:
            name = f"churn-{pick.randrange(12)}"
            fakes = pick.sample(FAKES, pick.randint(1, 2))
            world.apply_endpoint(name, fakes, weights=[pick.randint(1, 9) for _ in fakes],
                                 secret=name)  # fmt: skip

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@dataclass
class ChaosWorld:
    directory: Path
    cluster: Cluster
    namespace: str
    fakes: dict[str, FakeProcess]
    xds_address: str
    logs: Path
    replicas: list[Replica] = field(default_factory=list)
    partitions: dict[str, Partition] = field(default_factory=dict)
    envoy: LocalEnvoy | None = None
    # What the gateway owns once converged: one of each object, the same after every act.
    expected_owned: Counter[tuple[str, str]] = field(default_factory=Counter)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def server(self) -> tuple[str, int]:
        state = json.loads((self.directory / "state.json").read_text())
        host, _, port = state["server"].removeprefix("https://").rpartition(":")
        return host, int(port)

    # --- objects

    def apply_endpoint(
        self, name: str, fakes: tuple[str, ...] | list[str], weights: list[int] | None = None,
        secret: str = "keys",
    ) -> None:  # fmt: skip
        weights = weights or [1] * len(fakes)
        documents: list[dict[str, Any]] = []
        if secret != "keys":
            documents.append(self.secret(secret, fakes))
        documents.append({
            "apiVersion": API_VERSION, "kind": "ModelEndpoint",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "gatewayRef": {"name": GATEWAY}, "model": name,
                "backends": [
                    {"name": fake, "provider": "OpenAICompatible", "model": "llama",
                     "url": self.fakes[fake].url, "weight": weight,
                     "credentialsRef": {"name": secret, "key": fake}}
                    for fake, weight in zip(fakes, weights, strict=True)
                ],
            },
        })  # fmt: skip
        self.cluster.apply(*documents)

    def secret(self, name: str, fakes: tuple[str, ...] | list[str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": name, "namespace": self.namespace},
                "stringData": {fake: self.fakes[fake].api_key for fake in fakes}}  # fmt: skip

    @property
    def key_material(self) -> list[str]:
        return [CLIENT_KEY, *(fake.api_key for fake in self.fakes.values())]

    # --- the replicas

    def start_replica(self) -> Replica:
        name = f"operator-{len(self.replicas)}"
        partition = self.partitions[name] = Partition(*self.server)
        kubeconfig = self.logs / f"{name}.kubeconfig"
        config = yaml.safe_load((self.directory / "kubeconfig").read_text())
        for entry in config["clusters"]:
            entry["cluster"]["server"] = f"https://127.0.0.1:{partition.port}"
        kubeconfig.write_text(yaml.safe_dump(config))
        replica = Replica(name, kubeconfig, self.xds_address, self.logs)
        self.replicas.append(replica)
        return replica

    def live_replicas(self) -> list[Replica]:
        return [r for r in self.replicas if r.alive()]

    def leader(self) -> Replica | None:
        """The live replica that holds the lease, if any."""
        lease = self.cluster.get("leases", LEASE_NAME, OPERATOR_NAMESPACE) or {}
        holder = (lease.get("spec") or {}).get("holderIdentity")
        return next((r for r in self.live_replicas() if r.name == holder), None)

    def wait_leader(self, other_than: Replica | None = None, timeout: float = 30) -> Replica:
        return eventually(
            lambda: ((leader := self.leader()) is not other_than and leader) or None,
            timeout=timeout,
            interval=0.1,
        )

    def operator_log(self) -> str:
        return "\n".join(r.log.read_text(errors="replace") for r in self.replicas)

    # --- what must hold after every act of chaos

    def converged(self) -> str | None:
        """None once the operator has caught up with everything the API server holds, or
        what it has not caught up with yet."""
        try:
            return self._lag()
        except KubectlError as error:
            return f"the API server does not answer: {error}"

    def _lag(self) -> str | None:
        endpoints = self.cluster.list("modelendpoints", self.namespace)
        for endpoint in endpoints:
            metadata, status = endpoint["metadata"], endpoint.get("status") or {}
            ready = condition(endpoint, "Ready")
            if status.get("observedGeneration") != metadata["generation"]:
                return f"{metadata['name']} not reported at generation {metadata['generation']}"
            if not ready or ready["status"] != "True":
                return f"{metadata['name']} not Ready: {ready}"
        plan = self.cluster.get("configmaps", f"{GATEWAY}-switchyard-plan", self.namespace)
        document = json.loads(plan["data"]["plan.json"]) if plan else {"endpoints": []}
        planned = {e["name"] for e in document["endpoints"]}
        names = {e["metadata"]["name"] for e in endpoints}
        if planned != names:
            return f"the plan holds {sorted(planned ^ names)} wrongly"
        secrets = {s["metadata"]["name"] for s in self.cluster.list("secrets", self.namespace)}
        references = [b["credentialsRef"] for e in endpoints for b in e["spec"]["backends"]]
        wanted = {credentials_key(self.namespace, ref["name"], ref["key"])
                  for ref in references if ref["name"] in secrets}  # fmt: skip
        copied = self.cluster.get("secrets", f"{GATEWAY}-switchyard-credentials", self.namespace)
        held = set((copied or {}).get("data") or {})
        if held != wanted:
            return f"the credentials Secret holds {sorted(held ^ wanted)} wrongly"
        return None

    def wait_converged(self, timeout: float = 120) -> float:
        """Seconds until the operator has caught up; fails with what it has not."""
        started = time.monotonic()
        lag = self.converged()
        while lag is not None:
            assert time.monotonic() - started < timeout, f"not converged in {timeout:.0f} s: {lag}"
            time.sleep(0.5)
            lag = self.converged()
        return time.monotonic() - started

    def owned(self) -> Counter[tuple[str, str]]:
        """Every object the gateway owns, by kind and name."""
        gateway = self.cluster.get("modelgateways", GATEWAY, self.namespace)
        assert gateway is not None
        uid = gateway["metadata"]["uid"]
        return Counter(
            (kind, item["metadata"]["name"])
            for kind in ("secrets", "configmaps", "services", "deployments", "poddisruptionbudgets")
            for item in self.cluster.list(kind, self.namespace)
            if any(ref["uid"] == uid for ref in item["metadata"].get("ownerReferences") or [])
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosWorld]:
    directory = tmp_path_factory.mktemp("chaos-cluster")
    logs = tmp_path_factory.mktemp("chaos-logs")
    localcluster.start(directory)
    cluster = Cluster(localcluster.binary("kubectl"), str(directory / "kubeconfig"))
    fakes = {name: FakeProcess("OpenAICompatible", f"sk-chaos-{name}-{uuid.uuid4().hex}", "llama")
             for name in FAKES}  # fmt: skip
    world = ChaosWorld(directory, cluster, "sy-chaos", fakes, f"127.0.0.1:{free_port()}", logs)
    try:
        cluster.install_crds(ROOT / "crds")
        cluster.apply(
            *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
              for name in (OPERATOR_NAMESPACE, world.namespace)),
            world.secret("keys", FAKES),
            {"apiVersion": API_VERSION, "kind": "ModelGateway",
             "metadata": {"name": GATEWAY, "namespace": world.namespace},
             "spec": {"listener": {"port": 8080}}},
            *lab_client(world.namespace, GATEWAY),
        )  # fmt: skip
        for name, fakes_of in STEADY.items():
            world.apply_endpoint(name, fakes_of)
        world.start_replica()
        world.start_replica()
        world.wait_leader()
        world.envoy = LocalEnvoy(
            f"{world.namespace}/{GATEWAY}", free_port(), world.xds_address,
            logs / "envoy.log", kubeconfig=str(directory / "kubeconfig"), secret_delay=2.0,
        )  # fmt: skip
        world.envoy.wait_listening()
        world.figures["seconds to converge at start"] = round(world.wait_converged(), 1)
        world.expected_owned = world.owned()
        assert {kind for kind, _ in world.expected_owned} >= {
            "secrets",
            "configmaps",
            "services",
            "deployments",
        }, world.expected_owned
        assert set(world.expected_owned.values()) == {1}, world.expected_owned
        yield world
        FIGURES.append(world.figures)
    finally:
        if world.envoy is not None:
            world.envoy.stop()
        for replica in world.replicas:
            replica.stop()
        for partition in world.partitions.values():
            partition.close()
        for fake in fakes.values():
            fake.stop()
        localcluster.stop(directory)


FIGURES: list[dict[str, Any]] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for figures in FIGURES:
        terminalreporter.write_sep("-", "chaos figures")
        for name, value in figures.items():
            terminalreporter.write_line(f"{name}: {value}")


@pytest.fixture
def load(world: ChaosWorld) -> Iterator[Load]:
    assert world.envoy is not None
    running = Load(f"{world.envoy.url}/v1")
    try:
        yield running
    finally:
        running.stop()
