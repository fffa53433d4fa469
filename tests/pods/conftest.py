"""The Pod tier: the operator installed by Helm from the project's own image, and gateways
served by the Envoy Pods it runs, on the local cluster's node.

Fake providers run on the host, at the address the node's Pods reach it by; the tests call
the gateways' ClusterIP Services from the host with the official `openai` SDK.
"""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from openai import OpenAI, OpenAIError

import images
import localcluster
import localnode
from gatewaylab import CLIENT_KEY, FakeProcess, chart_image_values, lab_client
from tests_support.cluster import Cluster, cluster_of, condition, eventually, node_cluster
from tests_support.helm import CHART, helm
from tests_support.scenario import API_VERSION

OPERATOR_NAMESPACE = "switchyard-system"
RELEASE = "switchyard"
GATEWAY_NAMESPACE = "sy-pods-gw"
APP_NAMESPACE = "sy-pods-app"
# examples/ puts its gateway and endpoints here.
EXAMPLE_NAMESPACES = ("ai-gateway", "team-a")
# The chart puts a Role in each namespace it watches or writes in: they exist before it
# is installed, and stay until it is uninstalled (a `helm upgrade` recreates those Roles).
WATCHED_NAMESPACES = (GATEWAY_NAMESPACE, APP_NAMESPACE, *EXAMPLE_NAMESPACES)
GATEWAY_NAMESPACES = (GATEWAY_NAMESPACE, "ai-gateway")
GATEWAY = "pods"
MODEL = "pods-chat"
ENVOY_DEPLOYMENT = f"{GATEWAY}-switchyard-envoy"
SPLIT = {"openai": ("OpenAI", "gpt-4o", 50), "azure": ("AzureOpenAI", "gpt-4o-dep", 30),
         "anthropic": ("Anthropic", "claude-x", 20)}  # fmt: skip


@dataclass(frozen=True)
class PodImages:
    operator: str
    envoy: str
    ratelimit: str
    redis: str


@dataclass
class Gateway:
    """The gateway under test: its fake providers on the host and its Service's address."""

    cluster: Cluster
    fakes: dict[str, FakeProcess]
    address: str

    @property
    def base_url(self) -> str:
        return f"http://{self.address}:8080/v1"

    def client(self) -> OpenAI:
        # No retries in the client: a request the gateway fails counts as failed.
        return OpenAI(base_url=self.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=30)

    def backend_of(self, reply_text: str) -> str:
        for name, fake in self.fakes.items():
            if f"on port {fake.port}." in reply_text:
                return name
        raise AssertionError(f"no fake provider wrote {reply_text!r}")

    def ask(self, client: OpenAI) -> str:
        """One chat completion; returns the name of the backend that answered."""
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello"}]
        )
        return self.backend_of(reply.choices[0].message.content or "")

    def serves(self) -> bool:
        try:
            self.ask(self.client())
        except OpenAIError:
            return False
        return True

    def envoy_pods(self) -> list[dict[str, Any]]:
        return [
            pod
            for pod in self.cluster.list("pods", GATEWAY_NAMESPACE)
            if pod["metadata"]["labels"].get("switchyard.dev/gateway") == GATEWAY
        ]


@dataclass
class Load:
    """Clients calling the gateway without pause from threads, until stopped; each thread
    keeps its connections alive between requests, as an app's SDK client does."""

    gateway: Gateway
    threads: int = 4
    served: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    @property
    def total(self) -> int:
        return sum(self.served.values()) + len(self.failures)

    def _run(self) -> None:
        client = self.gateway.client()
        while not self._stop.is_set():
            try:
                self.served[self.gateway.ask(client)] += 1
            except Exception as error:  # every kind of failure counts, and is shown
                self.failures.append(repr(error))


@pytest.fixture(scope="package")
def pod_cluster(
    local_cluster: localcluster.Cluster | None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[localcluster.Cluster]:
    """The local cluster with its node: the session's, or, when KUBECONFIG names another
    cluster (whose nodes could not get the images without a registry), one of the tier's
    own."""
    if local_cluster is not None:
        yield local_cluster
        return
    with node_cluster(tmp_path_factory.mktemp("pod-cluster")) as own:
        yield own


@pytest.fixture(scope="package")
def cluster(pod_cluster: localcluster.Cluster) -> Cluster:
    """The Pod tier's cluster, in place of the session's."""
    return cluster_of(str(pod_cluster.kubeconfig))


@pytest.fixture(scope="package")
def pod_images(pod_cluster: localcluster.Cluster) -> PodImages:
    """The operator image built from the project's Dockerfile, the Envoy image and the rate
    limit service's and Redis', imported into the node's container runtime (there is no
    registry)."""
    built = images.chart_images()
    socket = localnode.Layout(pod_cluster.directory).containerd_socket
    images.import_images("ctr", str(socket), built)
    return PodImages(*(image.reference for image in built))


def install_values(pod_images: PodImages) -> list[str]:
    # Only the tier's namespaces: the suite's other tests run operators of their own.
    watched = ",".join(WATCHED_NAMESPACES)
    return [
        *chart_image_values(
            pod_images.operator, pod_images.envoy, pod_images.ratelimit, pod_images.redis
        ),
        "--set", f"watchNamespaces={{{watched}}}",
        "--set", f"gatewayNamespaces={{{','.join(GATEWAY_NAMESPACES)}}}",
    ]  # fmt: skip


@pytest.fixture(scope="package")
def operator_release(cluster: Cluster, pod_images: PodImages) -> Iterator[str]:
    """`helm install` of the chart with the project's image; yields the release name."""
    cluster.apply(
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
          for namespace in WATCHED_NAMESPACES)
    )  # fmt: skip
    helm(
        "upgrade", "--install", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE,
        "--create-namespace", "--kubeconfig", cluster.kubeconfig,
        *install_values(pod_images), "--wait", "--timeout", "180s", timeout=240,
    )  # fmt: skip
    try:
        yield RELEASE
    finally:
        helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--kubeconfig", cluster.kubeconfig,
             "--wait", check=False)  # fmt: skip
        for namespace in (OPERATOR_NAMESPACE, *WATCHED_NAMESPACES):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false",
                            "--ignore-not-found")  # fmt: skip


@pytest.fixture(scope="package")
def gateway(cluster: Cluster, operator_release: str) -> Iterator[Gateway]:
    """A gateway of two Envoy replicas in front of three fake providers on the host."""
    fakes = {
        name: FakeProcess(provider, f"sk-pods-{uuid.uuid4().hex}", model, host=localnode.HOST_IP)
        for name, (provider, model, _) in SPLIT.items()
    }
    try:
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": APP_NAMESPACE}},
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "providers", "namespace": APP_NAMESPACE},
             "stringData": {name: fake.api_key for name, fake in fakes.items()}},
            *lab_client(APP_NAMESPACE, GATEWAY, GATEWAY_NAMESPACE),
            {"apiVersion": API_VERSION, "kind": "ModelGateway",
             "metadata": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
             "spec": {"dataPlane": {"replicas": 2}, "listener": {"port": 8080},
                      "allowedEndpoints": {"namespaces": {"from": "All"}}}},
            {"apiVersion": API_VERSION, "kind": "ModelEndpoint",
             "metadata": {"name": "chat", "namespace": APP_NAMESPACE},
             "spec": {
                 "gatewayRef": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
                 "model": MODEL,
                 "healthCheck": {"interval": "2s", "timeout": "1s"},
                 "backends": [
                     {"name": name, "provider": fake.provider, "model": fake.model,
                      "url": fake.url, "weight": SPLIT[name][2],
                      "credentialsRef": {"name": "providers", "key": name},
                      **({"apiVersion": "2024-10-21"} if name == "azure" else {})}
                     for name, fake in fakes.items()
                 ],
             }},
        )  # fmt: skip
        cluster.rollout(ENVOY_DEPLOYMENT, GATEWAY_NAMESPACE)
        eventually(
            lambda: (
                (c := condition(cluster.get("modelgateways", GATEWAY, GATEWAY_NAMESPACE),
                                "Programmed"))
                and c["status"] == "True"
            ),
            timeout=60,
        )  # fmt: skip
        service = cluster.get("services", f"{GATEWAY}-switchyard", GATEWAY_NAMESPACE)
        assert service is not None
        found = Gateway(cluster, fakes, service["spec"]["clusterIP"])
        # Both Envoys have the routes once Programmed; the first request proves the path.
        eventually(found.serves, timeout=30)
        yield found
    finally:
        for namespace in (GATEWAY_NAMESPACE, APP_NAMESPACE):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")
        for fake in fakes.values():
            fake.stop()
