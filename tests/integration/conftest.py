"""Per-test scenarios: fresh namespaces and the operator under KopfRunner."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests_support.cluster import Cluster
from tests_support.scenario import Operator, Scenario


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace for a test that needs no operator."""
    name = f"sy-test-{uuid.uuid4().hex[:6]}"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


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
