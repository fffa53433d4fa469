"""The real control plane, the operator under KopfRunner, and per-test scenarios.

With KUBECONFIG set, the tests run against that cluster; otherwise they start the local
control plane (built once, cached outside the repository) for the session.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import localcluster
from tests_support.cluster import Cluster, KubectlError, eventually
from tests_support.scenario import Operator, Scenario

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def kubeconfig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    existing = os.environ.get("KUBECONFIG")
    if existing:
        yield existing
        return
    directory = tmp_path_factory.mktemp("control-plane")
    local = localcluster.start(directory)
    os.environ["KUBECONFIG"] = str(local.kubeconfig)
    try:
        yield str(local.kubeconfig)
    finally:
        del os.environ["KUBECONFIG"]
        localcluster.stop(directory)


@pytest.fixture(scope="session")
def cluster(kubeconfig: str) -> Cluster:
    kube = Cluster(localcluster.build() / "kubectl", kubeconfig)
    kube.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/modelendpoints.switchyard.dev",
        "crd/modelgateways.switchyard.dev",
    )
    # Established is not yet servable: new CRD storage answers 429 while it initialises.
    eventually(lambda: _servable(kube))
    return kube


def _servable(kube: Cluster) -> bool:
    try:
        kube.kubectl("get", "modelendpoints,modelgateways", "-A")
    except KubectlError:
        return False
    return True


@pytest.fixture
def scenario(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[Scenario]:
    suffix = uuid.uuid4().hex[:6]
    gateway_namespace, app_namespace = f"sy-gw-{suffix}", f"sy-app-{suffix}"
    for namespace in (gateway_namespace, app_namespace):
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {"switchyard.test/access": app_namespace},
                },
            }
        )
    operator = Operator()
    operator.start()
    scene = Scenario(cluster, operator, gateway_namespace, app_namespace)
    try:
        yield scene
        # Every integration test ends with the three proofs, unless it already failed.
        if not _failed(request):
            scene.prove_no_write_on_resync()
            operator.stop()
            scene.prove_no_key_material_outside_secrets()
            scene.prove_owned_objects_cascade()
    finally:
        operator.stop()
        for namespace in (gateway_namespace, app_namespace):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "rep_call", None)
    return report is None or report.failed


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report
