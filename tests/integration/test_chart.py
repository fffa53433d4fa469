"""The Helm chart: linted, rendered, dry-run and installed on the real API server, and its
RBAC proven by running the operator with nothing but its ServiceAccount's token."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests_support.backends import openai_backend
from tests_support.cluster import Cluster, condition, eventually
from tests_support.helm import CHART, helm
from tests_support.scenario import API_VERSION, Operator

pytestmark = pytest.mark.integration

ALL_ON = CHART / "ci" / "all-on-values.yaml"


def rendered(release: str, namespace: str, *values: Path) -> str:
    flags = [arg for path in values for arg in ("-f", str(path))]
    return helm("template", release, str(CHART), "-n", namespace, *flags).stdout


def kinds(manifests: str) -> set[str]:
    return {doc["kind"] for doc in yaml.safe_load_all(manifests) if doc}


def test_lint_and_render_with_default_and_all_on_values() -> None:
    helm("lint", str(CHART), "--strict")
    helm("lint", str(CHART), "--strict", "-f", str(ALL_ON))
    base = {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "Deployment", "Service", "PodDisruptionBudget",
    }  # fmt: skip
    assert kinds(rendered("sy", "switchyard-system")) == base
    assert kinds(rendered("sy", "switchyard-system", ALL_ON)) == base | {
        "ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap", "NetworkPolicy",
    }  # fmt: skip


def test_the_values_schema_names_the_wrong_value() -> None:
    unknown = helm("template", "sy", str(CHART), "--set", "replicas=3", check=False)
    assert unknown.returncode != 0
    assert "additional properties 'replicas' not allowed" in unknown.stderr
    wrong = helm("template", "sy", str(CHART), "--set", "metrics.port=high", check=False)
    assert wrong.returncode != 0
    assert "/metrics/port" in wrong.stderr


def test_the_rbac_has_no_wildcards() -> None:
    for doc in yaml.safe_load_all(rendered("sy", "switchyard-system", ALL_ON)):
        if doc and doc["kind"] == "ClusterRole":
            for rule in doc["rules"]:
                named = ("verbs", "resources", "apiGroups", "nonResourceURLs")
                assert not [v for key in named for v in rule.get(key, []) if "*" in v], rule


@pytest.fixture
def release(cluster: Cluster) -> Iterator[tuple[str, str]]:
    name = f"sy-{uuid.uuid4().hex[:6]}"
    namespace = f"{name}-system"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield name, namespace
    finally:
        helm("uninstall", name, "-n", namespace, "--kubeconfig", cluster.kubeconfig, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def install_monitoring_crds(cluster: Cluster) -> None:
    """The Prometheus Operator's kinds, as schemaless CRDs: enough for the API server to
    accept the chart's optional objects."""
    for kind, plural in (
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
        ("PrometheusRule", "prometheusrules"),
    ):
        cluster.apply(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.monitoring.coreos.com"},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "names": {"kind": kind, "plural": plural},
                    "scope": "Namespaced",
                    "versions": [{
                        "name": "v1", "served": True, "storage": True,
                        "schema": {"openAPIV3Schema": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                        }},
                    }],
                },
            }
        )  # fmt: skip
    for plural in ("servicemonitors", "podmonitors", "prometheusrules"):
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{plural}.monitoring.coreos.com",
        )  # fmt: skip


def test_dry_run_then_install(cluster: Cluster, release: tuple[str, str]) -> None:
    name, namespace = release
    install_monitoring_crds(cluster)
    for values in ((), (ALL_ON,)):
        manifests = rendered(name, namespace, *values)
        cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests)
    helm(
        "install", name, str(CHART), "-n", namespace, "--kubeconfig", cluster.kubeconfig,
        "-f", str(ALL_ON),
    )  # fmt: skip
    fullname = f"{name}-switchyard"
    deployment = cluster.get("deployments", fullname, namespace)
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert cluster.get("servicemonitors", fullname, namespace) is not None


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig that authenticates with nothing but the ServiceAccount's token."""
    config = json.loads(cluster.kubectl("config", "view", "--raw", "-o", "json"))
    server = config["clusters"][0]["cluster"]
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))  # fmt: skip
    return str(path)


def test_the_operator_runs_with_only_the_charts_service_account(
    cluster: Cluster, release: tuple[str, str], tmp_path: Path
) -> None:
    name, namespace = release
    helm("install", name, str(CHART), "-n", namespace, "--kubeconfig", cluster.kubeconfig)
    fullname = f"{name}-switchyard"
    account = f"system:serviceaccount:{namespace}:{fullname}"
    listing = cluster.kubectl("auth", "can-i", "--list", f"--as={account}")
    rows = [line.split() for line in listing.splitlines()[1:] if not line.startswith(" ")]
    granted = {row[0]: " ".join(row[3:]) for row in rows}
    assert "secrets" in granted
    wildcards = {r: v for r, v in granted.items() if "*" in r or "*" in v}
    assert not wildcards, f"wildcard resources or verbs: {wildcards}"

    app = f"{name}-app"
    key = f"sk-test-{uuid.uuid4().hex}"
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": app}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys", "namespace": app},
         "data": {"api-key": base64.b64encode(key.encode()).decode()}},
    )  # fmt: skip
    kubeconfig = os.environ["KUBECONFIG"]
    os.environ["KUBECONFIG"] = token_kubeconfig(cluster, namespace, fullname, tmp_path / "sa.json")
    # As the chart runs it: electing a leader on a Lease in the release's namespace.
    os.environ.update(SWITCHYARD_LEADER_ELECT="1", POD_NAMESPACE=namespace, POD_NAME="test-0")
    operator = Operator()
    try:
        operator.start()
        cluster.apply(
            {"apiVersion": API_VERSION, "kind": "ModelGateway",
             "metadata": {"name": "gw", "namespace": app}, "spec": {}},
            {"apiVersion": API_VERSION, "kind": "ModelEndpoint",
             "metadata": {"name": "chat", "namespace": app},
             "spec": {"gatewayRef": {"name": "gw"}, "model": "chat",
                      "backends": [openai_backend("oai", "keys")]}},
        )  # fmt: skip
        eventually(
            lambda: (
                (c := condition(cluster.get("modelendpoints", "chat", app), "Ready"))
                and c["status"] == "True"
            )
        )
        eventually(
            lambda: (
                (c := condition(cluster.get("modelgateways", "gw", app), "Ready"))
                and c["status"] == "True"
            )
        )
        assert cluster.get("deployments", "gw-switchyard-envoy", app) is not None
        lease = cluster.get("leases", "switchyard-leader", namespace)
        assert lease is not None
        assert lease["spec"]["holderIdentity"] == "test-0"
        events = [e["reason"] for e in cluster.list("events", app)]
        assert "Ready" in events
    finally:
        operator.stop()
        os.environ["KUBECONFIG"] = kubeconfig
        for variable in ("SWITCHYARD_LEADER_ELECT", "POD_NAMESPACE", "POD_NAME"):
            del os.environ[variable]
        cluster.kubectl("delete", "namespace", app, "--wait=false", "--ignore-not-found")
    # RBAC's refusal names the ServiceAccount ("... cannot create resource ..."); a namespace
    # another test is deleting refuses Events too, for its own reason.
    refused = [
        line for line in operator.log.splitlines() if "Forbidden" in line and " cannot " in line
    ]
    assert not refused, f"the operator needed a permission the chart lacks: {refused[:3]}"
    assert key not in operator.log
