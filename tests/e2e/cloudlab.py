"""A gateway of its own for one test module: the operator on the real control plane, a real
Envoy fed by it, and a namespace with one Secret of the module's credentials. The lab of
conftest and the modules that reach clouds (Vertex AI, Azure OpenAI with Entra ID) build
on it."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from gatewaylab import CLIENT_KEY, LocalEnvoy, RateLimiter, chat, lab_client, send_sync
from ports import free_port
from tests_support import hygiene
from tests_support.cluster import Cluster, condition, eventually
from tests_support.scenario import API_VERSION, Operator

# Seconds between a credentials change and the Envoy seeing it, as through a kubelet.
KUBELET_DELAY = 2.0
SECRET = "keys"


@dataclass
class GatewayLab:
    cluster: Cluster
    operator: Operator
    namespace: str
    envoy: LocalEnvoy

    @property
    def chat_url(self) -> str:
        return f"{self.envoy.url}/v1/chat/completions"

    def apply_endpoint(self, model: str, backends: list[dict[str, Any]]) -> None:
        self.cluster.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelEndpoint",
                "metadata": {"name": model, "namespace": self.namespace},
                "spec": {"gatewayRef": {"name": "gw"}, "model": model, "backends": backends},
            }
        )

    def run_gateway_as(self, service_account: str | None) -> None:
        """The lab's gateway with its data plane's ServiceAccount (its workload identity)."""
        data_plane = {"serviceAccountName": service_account} if service_account else {}
        self.cluster.apply(
            {
                "apiVersion": API_VERSION,
                "kind": "ModelGateway",
                "metadata": {"name": "gw", "namespace": self.namespace},
                "spec": {"listener": {"port": 8080}, "dataPlane": data_plane},
            }
        )

    def serve(self, model: str, backends: list[dict[str, Any]]) -> None:
        """Apply an endpoint and wait until the gateway answers for its model."""
        self.apply_endpoint(model, backends)
        eventually(lambda: condition(self.endpoint(model), "Ready"))
        eventually(lambda: send_sync(self.chat_url, chat(model), 10, 2).statuses[200] == 10)

    def endpoint(self, model: str) -> dict[str, Any] | None:
        return self.cluster.get("modelendpoints", model, self.namespace)

    def backend_reported(self, model: str, backend: str, reason: str) -> dict[str, Any]:
        """The backend's status once it shows `reason`."""

        def shown() -> dict[str, Any] | None:
            endpoint = self.endpoint(model) or {}
            for entry in (endpoint.get("status") or {}).get("backends") or []:
                if entry.get("name") == backend and entry.get("reason") == reason:
                    return dict(entry)
            return None

        found: dict[str, Any] = eventually(shown, timeout=30)
        return found

    def assert_served_only_by(self, model: str, port: int) -> None:
        """Once the backends' keys have reached Envoy (KUBELET_DELAY), every request for
        `model` is answered, and by the fake on `port`."""
        eventually(lambda: send_sync(self.chat_url, chat(model), 10, 2).statuses[200] == 10)
        outcome = send_sync(self.chat_url, chat(model), 40, 4)
        assert outcome.statuses == {200: 40}, outcome.statuses
        assert set(outcome.ports) == {port}

    def statuses_under_load(self, model: str, seconds: float) -> dict[int, int]:
        """Steady load on `model` for `seconds`: how many answers of each status."""
        ends = time.monotonic() + seconds
        statuses: dict[int, int] = {}
        while time.monotonic() < ends:
            outcome = send_sync(self.chat_url, chat(model), 20, 4)
            assert not outcome.errors, outcome.errors[:3]
            for status, count in outcome.statuses.items():
                statuses[status] = statuses.get(status, 0) + count
        return statuses

    def assert_no_secret_readable(self, known: list[str]) -> None:
        """The operator's log and metrics, Envoy's config and log, and what the API server
        shows of the namespace hold none of `known` (nor any secret by its shape)."""
        with urllib.request.urlopen(
            f"http://{self.operator.metrics_address}/metrics", timeout=5
        ) as reply:
            metrics = reply.read().decode()
        places = {
            "operator log": self.operator.log,
            "operator metrics": metrics,
            "Envoy's config dump": self.envoy.config_dump(),
            "Envoy's log": self.envoy.log.read_text(errors="replace"),
            **hygiene.cluster_places(self.cluster, [self.namespace]),
        }
        hygiene.assert_clean(places, [CLIENT_KEY, *known])


@contextmanager
def gateway_lab(
    cluster: Cluster,
    tmp_path_factory: pytest.TempPathFactory,
    prefix: str,
    credentials: Mapping[str, str],
    gateway_spec: Mapping[str, Any] | None = None,
    limiter: RateLimiter | None = None,
) -> Iterator[GatewayLab]:
    """A namespace `<prefix>-<random>` with the Secret SECRET holding `credentials`, the
    gateway "gw" on port 8080 (and `gateway_spec`) with the lab's ModelClient, the operator
    (holding clients' limits with `limiter`) and an Envoy."""
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    operator = Operator(
        xds_address=f"127.0.0.1:{free_port()}",
        metrics_address=f"127.0.0.1:{free_port()}",
        limiter=limiter,
    )
    envoy: LocalEnvoy | None = None
    try:
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": namespace},
                "stringData": dict(credentials),
            },
            {
                "apiVersion": API_VERSION,
                "kind": "ModelGateway",
                "metadata": {"name": "gw", "namespace": namespace},
                "spec": {"listener": {"port": 8080}, **(gateway_spec or {})},
            },
            *lab_client(namespace, "gw"),
        )
        operator.start()
        log = tmp_path_factory.mktemp("envoy") / "envoy.log"
        envoy = LocalEnvoy(
            f"{namespace}/gw", free_port(), operator.xds_address, log, secret_delay=KUBELET_DELAY
        )
        envoy.wait_listening()
        yield GatewayLab(cluster, operator, namespace, envoy)
    finally:
        if envoy is not None:
            envoy.stop()
        operator.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def bearer(record: dict[str, Any]) -> str:
    """The bearer token a recorded request carried."""
    return str(record["headers"].get("authorization", "")).removeprefix("Bearer ")
