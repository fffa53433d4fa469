"""A gateway lab: the operator on the real control plane, serving xDS to a real Envoy that
sends real HTTP to fake providers on loopback."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from e2e.cloudlab import SECRET, GatewayLab, gateway_lab
from fuzz.envoy_check import fetch_snapshot
from gatewaylab import FakeProcess, LocalEnvoy, RateLimiter, chat, send_sync
from tests_support.cluster import Cluster, condition, eventually
from tests_support.scenario import API_VERSION
from tests_support.tls import make_ca_and_server
from tests_support.xds_tls import gateway_credentials

# name -> (provider, model it serves, seconds between streamed chunks); one key each, all
# in the Secret "keys".
FAKES = {
    "openai": ("OpenAI", "gpt-4o", 0.0),
    "azure": ("AzureOpenAI", "chat-deploy", 0.0),
    "anthropic": ("Anthropic", "claude-x", 0.0),
    "local-a": ("OpenAICompatible", "llama", 0.0),
    "local-b": ("OpenAICompatible", "llama", 0.0),
    "local-c": ("OpenAICompatible", "llama", 0.0),
    "slow": ("OpenAICompatible", "llama", 0.2),
}
# An https backend whose certificate a CA made by the test signs.
SECURE = "secure"


@dataclass
class Lab(GatewayLab):
    fakes: dict[str, FakeProcess]

    def backend(self, fake: str, weight: int = 1, priority: int = 0) -> dict[str, Any]:
        process = self.fakes[fake]
        backend: dict[str, Any] = {
            "name": fake,
            "provider": process.provider,
            "model": process.model,
            "url": process.url,
            "weight": weight,
            "priority": priority,
            "credentialsRef": {"name": SECRET, "key": fake},
        }
        if process.provider == "AzureOpenAI":
            backend["apiVersion"] = "2024-10-21"
        return backend

    def endpoint_manifest(
        self, model: str, backends: list[dict[str, Any]], **spec: Any
    ) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "ModelEndpoint",
            "metadata": {"name": model, "namespace": self.namespace},
            "spec": {"gatewayRef": {"name": "gw"}, "model": model, "backends": backends, **spec},
        }

    def serve(self, model: str, backends: list[dict[str, Any]], **spec: Any) -> None:
        """Apply an endpoint and wait until the gateway answers for its model."""
        self.cluster.apply(self.endpoint_manifest(model, backends, **spec))
        eventually(
            lambda: condition(self.cluster.get("modelendpoints", model, self.namespace), "Ready")
        )
        # Served once every backend's key has reached Envoy (KUBELET_DELAY after it is
        # written): until then a backend without its key is refused and its attempts go to
        # the others. So: clean answers, from every backend that carries traffic.
        carrying = {
            self.fakes[b["name"]].port
            for b in backends
            if b.get("weight", 1) and not b.get("priority")
        }

        def steady() -> bool:
            outcome = send_sync(self.url, chat(model), 40, 2)
            return outcome.statuses[200] == 40 and carrying <= set(outcome.ports)

        eventually(steady, timeout=20)

    @property
    def url(self) -> str:
        return f"{self.envoy.url}/v1/chat/completions"

    def port(self, fake: str) -> int:
        return self.fakes[fake].port

    def gateway(self) -> dict[str, Any] | None:
        return self.cluster.get("modelgateways", "gw", self.namespace)

    def new_client(
        self, envoys: list[LocalEnvoy] | None = None, name: str = "", **spec: Any
    ) -> str:
        """A new ModelClient of the gateway (`name`, else a fresh one) with `spec` and an API
        key of its own, once `envoys` (the lab's by default) serve it; its API key."""
        name = name or f"app-{uuid.uuid4().hex[:6]}"
        key = f"sk-client-{uuid.uuid4().hex}"
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": self.namespace},
                "stringData": {"api-key": key},
            },
            {
                "apiVersion": API_VERSION,
                "kind": "ModelClient",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {
                    "gatewayRef": {"name": "gw"},
                    "apiKeyRef": {"name": name, "key": "api-key"},
                    **spec,
                },
            },
        )
        for envoy in envoys or [self.envoy]:
            eventually(partial(_knows, envoy, key))
        return key

    def xds_as_sent(self) -> str:
        """Every resource the operator serves the gateway, as an Envoy of it receives them."""
        credentials = gateway_credentials(self.cluster, self.namespace, "gw")
        assert credentials is not None, "the gateway has no control-channel certificate"
        node = f"{self.namespace}/gw"
        return json.dumps(fetch_snapshot(self.operator.xds_address, node, credentials))


def _knows(envoy: LocalEnvoy, key: str) -> bool:
    """Whether `envoy` serves the client of `key` (its client table has come)."""
    request = urllib.request.Request(
        f"{envoy.url}/v1/models", headers={"authorization": f"Bearer {key}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return bool(reply.status == 200)
    except urllib.error.HTTPError:
        return False


@pytest.fixture(scope="module")
def lab(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    fakes = {
        name: FakeProcess(provider, f"sk-test-{name}-{uuid.uuid4().hex[:8]}", model, delay)
        for name, (provider, model, delay) in FAKES.items()
    }
    ca, certificate, key = make_ca_and_server(tmp_path_factory.mktemp("tls"), "localhost")
    fakes[SECURE] = FakeProcess(
        "OpenAICompatible", f"sk-test-secure-{uuid.uuid4().hex[:8]}", "llama",
        tls=(certificate, key),
    )  # fmt: skip
    keys = {name: fake.api_key for name, fake in fakes.items()}
    spec = {"backendTLS": {"caBundle": ca.read_text(), "hostnames": ["localhost"]}}
    limiter = RateLimiter(tmp_path_factory.mktemp("ratelimit"))
    try:
        with gateway_lab(
            cluster, tmp_path_factory, "sy-e2e", keys, spec, limiter=limiter
        ) as gateway:
            yield Lab(gateway.cluster, gateway.operator, gateway.namespace, gateway.envoy, fakes)
    finally:
        for fake in fakes.values():
            fake.stop()
        limiter.stop()
