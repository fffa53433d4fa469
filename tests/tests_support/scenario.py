"""An operator under KopfRunner and a scenario of fresh namespaces, with the three proofs
every integration test ends with."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kopf.testing import KopfRunner
from prometheus_client import REGISTRY

from tests_support import hygiene
from tests_support.cluster import Cluster, condition, eventually

if TYPE_CHECKING:
    from gatewaylab import RateLimiter

API_VERSION = "switchyard.dev/v1alpha1"
# What a ModelGateway owns, by kind.
OWNED_KINDS = ("secrets", "configmaps", "services", "deployments", "poddisruptionbudgets")


def without_probe_times(status: dict[str, Any] | None) -> dict[str, Any]:
    """A status less what the once-a-minute refresh of probe times moves."""
    status = dict(status or {})
    status["backends"] = [
        {k: v for k, v in b.items() if k not in ("lastProbeTime", "lastProbeLatencyMs")}
        for b in status.get("backends") or []
    ]
    return status


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def sync_passes(namespace: str, gateway: str) -> float:
    """Passes the operator made over one gateway, from its own Prometheus histogram."""
    value = REGISTRY.get_sample_value(
        "switchyard_gateway_reconcile_duration_seconds_count",
        {"namespace": namespace, "gateway": gateway},
    )
    return value or 0.0


class Operator:
    """`switchyard.handlers.operator` under KopfRunner, restartable, with every log line kept."""

    def __init__(
        self,
        xds_address: str = "127.0.0.1:0",
        metrics_address: str = "127.0.0.1:0",
        limiter: RateLimiter | None = None,
    ) -> None:
        # Any free port unless a test runs Envoys against this operator or scrapes it.
        self.xds_address = xds_address
        self.metrics_address = metrics_address
        self.limiter = limiter
        # The control channel's CA, the same across this operator's restarts, in a namespace
        # every cluster has (a Pod's operator keeps it in its own).
        self.ca_secret = f"default/switchyard-ca-{uuid.uuid4().hex[:8]}"
        self.runner: KopfRunner | None = None
        self._saved_environment: dict[str, str | None] = {}
        self.records = _Records()
        self.outputs: list[str] = []

    def start(self) -> None:
        limiter = self.limiter
        settings = {
            "SWITCHYARD_XDS_ADDRESS": self.xds_address,
            "SWITCHYARD_METRICS_ADDRESS": self.metrics_address,
            "SWITCHYARD_CA_SECRET": self.ca_secret,
            # The rate limit service that holds clients' limits, and its Redis.
            "SWITCHYARD_RATE_LIMIT_SERVICE": limiter.address if limiter else "",
            "SWITCHYARD_RATE_LIMIT_REDIS": limiter.redis_address if limiter else "",
            "SWITCHYARD_RATE_LIMIT_REDIS_PASSWORD": limiter.password if limiter else "",
        }
        # Put back at stop(): the settings are this operator's, not the next test's.
        self._saved_environment = {name: os.environ.get(name) for name in settings}
        os.environ.update(settings)
        logging.getLogger().addHandler(self.records)
        self.runner = KopfRunner(
            [
                "run",
                "--all-namespaces",
                "--standalone",
                "--verbose",
                "-m",
                "switchyard.handlers.operator",
            ],
            timeout=60,
        )
        self.runner.__enter__()

    def stop(self) -> None:
        if self.runner is None:
            return
        runner, self.runner = self.runner, None
        runner.__exit__(None, None, None)
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        logging.getLogger().removeHandler(self.records)
        self.outputs.append(runner.output)
        assert runner.exit_code == 0, runner.output[-3000:]

    @property
    def log(self) -> str:
        return "\n".join([*self.outputs, *self.records.lines])


@dataclass
class Scenario:
    """Two fresh namespaces, a gateway admitting the app namespace, and the operator."""

    cluster: Cluster
    operator: Operator
    gateway_namespace: str
    app_namespace: str
    key_material: list[str] = field(default_factory=list)

    # --- objects

    def secret(self, name: str, data: dict[str, str], namespace: str | None = None) -> None:
        self.key_material += [v for v in data.values() if v]
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": namespace or self.app_namespace},
                "stringData": data,
            }
        )

    def new_key(self) -> str:
        value = f"sk-test-{uuid.uuid4().hex}"
        self.key_material.append(value)
        return value

    def gateway_manifest(self, name: str = "shared", **spec: Any) -> dict[str, Any]:
        spec.setdefault(
            "allowedEndpoints",
            {
                "namespaces": {
                    "from": "Selector",
                    "selector": {"matchLabels": {"switchyard.test/access": self.app_namespace}},
                }
            },
        )
        return {
            "apiVersion": API_VERSION,
            "kind": "ModelGateway",
            "metadata": {"name": name, "namespace": self.gateway_namespace},
            "spec": spec,
        }

    def endpoint_manifest(
        self,
        name: str,
        backends: list[dict[str, Any]],
        model: str | None = None,
        gateway: str = "shared",
        namespace: str | None = None,
    ) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": "ModelEndpoint",
            "metadata": {"name": name, "namespace": namespace or self.app_namespace},
            "spec": {
                "gatewayRef": {"name": gateway, "namespace": self.gateway_namespace},
                "model": model or name,
                "backends": backends,
            },
        }

    def endpoint(self, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        return self.cluster.get("modelendpoints", name, namespace or self.app_namespace)

    def gateway(self, name: str = "shared") -> dict[str, Any] | None:
        return self.cluster.get("modelgateways", name, self.gateway_namespace)

    def wait_condition(
        self,
        name: str,
        type_: str,
        status: str,
        reason: str | None = None,
        namespace: str | None = None,
        timeout: float = 20,
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            found = condition(self.endpoint(name, namespace), type_)
            if found and found["status"] == status and reason in (None, found["reason"]):
                return found
            return None

        return eventually(check, timeout=timeout)

    def credentials(self, gateway: str = "shared") -> dict[str, str]:
        secret = self.cluster.get(
            "secrets", f"{gateway}-switchyard-credentials", self.gateway_namespace
        )
        assert secret is not None, "the gateway has no credentials Secret"
        return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}

    def plan(self, gateway: str = "shared") -> dict[str, Any]:
        configmap = self.cluster.get(
            "configmaps", f"{gateway}-switchyard-plan", self.gateway_namespace
        )
        assert configmap is not None, "the gateway has no plan ConfigMap"
        document: dict[str, Any] = json.loads(configmap["data"]["plan.json"])
        return document

    def events(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.cluster.list("events", namespace or self.app_namespace)

    @property
    def namespaces(self) -> list[str]:
        return [self.gateway_namespace, self.app_namespace]

    # --- the three proofs every integration test ends with

    def prove_no_write_on_resync(self) -> None:
        """A restarted operator reconciles everything again and writes nothing."""
        # Let the last pass's writes land, and the first probes (spread over a second) publish.
        time.sleep(2.5)
        before = self.cluster.versions(self.namespaces)
        self.operator.stop()
        passes = sync_passes(self.gateway_namespace, "shared")
        self.operator.start()
        eventually(lambda: sync_passes(self.gateway_namespace, "shared") > passes, timeout=30)
        time.sleep(1.5)
        after = self.cluster.versions(self.namespaces)
        changed = {
            k: (before.get(k), after.get(k))
            for k in before.keys() | after.keys()
            if before.get(k) != after.get(k)
        }
        assert not changed, f"a reconcile of unchanged objects wrote: {changed}"

    def prove_no_key_material_outside_secrets(self) -> None:
        assert "primed with" in self.operator.log, "the operator's log was not captured"
        places = {"operator log": self.operator.log}
        places.update(hygiene.cluster_places(self.cluster, self.namespaces))
        hygiene.assert_clean(places, self.key_material)

    def prove_owned_objects_cascade(self) -> None:
        """Deleting each gateway deletes what it owns, through the garbage collector."""
        for gateway in self.cluster.list("modelgateways", self.gateway_namespace):
            uid = gateway["metadata"]["uid"]
            owned = [
                (kind, item["metadata"]["name"])
                for kind in OWNED_KINDS
                for item in self.cluster.list(kind, self.gateway_namespace)
                if any(ref["uid"] == uid for ref in item["metadata"].get("ownerReferences") or [])
            ]
            assert owned, f"gateway {gateway['metadata']['name']} owns nothing"
            self.cluster.delete(
                "modelgateways", gateway["metadata"]["name"], self.gateway_namespace
            )
            for kind, name in owned:
                self._wait_deleted(kind, name)

    def _wait_deleted(self, kind: str, name: str) -> None:
        eventually(lambda: self.cluster.get(kind, name, self.gateway_namespace) is None, timeout=30)
