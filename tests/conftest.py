"""Session fixtures shared by the suites that need a Kubernetes API server.

With KUBECONFIG set, the tests run against that cluster; otherwise they start the local
control plane (built once, cached outside the repository) for the session.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
from tests_support.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]


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
    kube.install_crds(ROOT / "crds")
    return kube
