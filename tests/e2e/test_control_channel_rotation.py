"""The control channel's certificates and CA rotating under load, with seconds for lifetimes:
the gateway serves every request meanwhile, and its Envoy, which read each renewed
certificate over SDS, connects to a restarted operator with what it holds now (the
certificate it started with has long expired, and its CA is gone)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from gatewaylab import FakeProcess, LocalEnvoy, chat, lab_client, send_sync
from ports import free_port
from tests_support.cluster import Cluster, condition, eventually
from tests_support.scenario import API_VERSION, Operator
from tests_support.xds_tls import gateway_secret

pytestmark = pytest.mark.e2e

CERT_SECONDS = 4.0
CA_SECONDS = 16.0  # staged 4 s after its half-life minus 4 s: a new CA every 8 s
LOAD_SECONDS = 30.0


def test_certificates_and_ca_rotate_under_load_with_no_failed_request(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace = f"sy-rot-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("SWITCHYARD_CERT_LIFETIME", str(CERT_SECONDS))
    monkeypatch.setenv("SWITCHYARD_CA_LIFETIME", str(CA_SECONDS))
    fakes = [FakeProcess("OpenAICompatible", f"sk-{n}-{uuid.uuid4().hex[:6]}", "llama")
             for n in ("a", "b")]  # fmt: skip
    operator = Operator(xds_address=f"127.0.0.1:{free_port()}")
    envoy: LocalEnvoy | None = None

    def endpoint(*names: str) -> dict[str, object]:
        backends = [
            {"name": n, "provider": "OpenAICompatible", "model": "llama", "url": fakes[i].url,
             "credentialsRef": {"name": "keys", "key": n}}
            for i, n in enumerate(("a", "b")) if n in names
        ]  # fmt: skip
        return {
            "apiVersion": API_VERSION, "kind": "ModelEndpoint",
            "metadata": {"name": "chat", "namespace": namespace},
            "spec": {"gatewayRef": {"name": "gw"}, "model": "chat", "backends": backends},
        }  # fmt: skip

    try:
        cluster.apply(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "keys", "namespace": namespace},
             "stringData": {"a": fakes[0].api_key, "b": fakes[1].api_key}},
            {"apiVersion": API_VERSION, "kind": "ModelGateway",
             "metadata": {"name": "gw", "namespace": namespace},
             "spec": {"listener": {"port": 8080}}},
            *lab_client(namespace, "gw"),
            endpoint("a"),
        )  # fmt: skip
        operator.start()
        envoy = LocalEnvoy(
            f"{namespace}/gw", free_port(), operator.xds_address, tmp_path / "envoy.log",
            secret_delay=0.5,
        )  # fmt: skip
        envoy.wait_listening()
        url = f"{envoy.url}/v1/chat/completions"
        eventually(lambda: send_sync(url, chat("chat"), 4, 2).statuses[200] == 4, timeout=30)

        failures: list[str] = []
        served = [0]
        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                outcome = send_sync(url, chat("chat"), 8, 2)
                served[0] += outcome.statuses[200]
                if outcome.failed:
                    failures.append(f"{dict(outcome.statuses)} {outcome.errors[:2]}")

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        seen_cas: set[bytes] = set()
        seen_certificates: set[bytes] = set()
        deadline = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < deadline:
            data = gateway_secret(cluster, namespace, "gw") or {}
            seen_cas.add(data.get("ca.crt", b""))
            seen_certificates.add(data.get("tls.crt", b""))
            time.sleep(1)
        stop.set()
        worker.join(timeout=30)
        assert not failures, failures[:5]
        assert served[0] > 100
        assert len(seen_certificates) >= 4, "the gateway's certificate was not renewed"
        assert len(seen_cas) >= 3, "the trust bundle did not change with the CA"

        # A restarted operator: the Envoy connects anew with its current certificate.
        operator.stop()
        operator.start()
        cluster.apply(endpoint("a", "b"))

        def both_serve() -> bool:
            outcome = send_sync(url, chat("chat"), 40, 4)
            return outcome.statuses[200] == 40 and len(set(outcome.ports)) == 2

        eventually(both_serve, timeout=30)
        eventually(
            lambda: (
                (condition(cluster.get("modelgateways", "gw", namespace), "Programmed") or {}).get(
                    "status"
                )
                == "True"
            )
        )
    finally:
        if envoy is not None:
            envoy.stop()
        operator.stop()
        for fake in fakes:
            fake.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")
        os.environ.pop("SWITCHYARD_CA_SECRET", None)
