"""Session fixtures shared by the suites that need a Kubernetes API server.

With KUBECONFIG set, the tests run against that cluster; otherwise they start the local
cluster (built once, cached outside the repository) for the session: the control plane and a
node that runs Pods (hack/localnode.py; it needs root, as `make test` does).
"""

from __future__ import annotations

# Before anything imports google-auth, which reads the metadata server's address once.
import tests_support.metadata  # noqa: F401  # isort: skip

import os
from collections.abc import Iterator

import pytest

import localcluster
from tests_support.cluster import Cluster, cluster_of, node_cluster


@pytest.fixture(scope="session")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[localcluster.Cluster | None]:
    """The local cluster this session started, or None when KUBECONFIG names another."""
    if os.environ.get("KUBECONFIG"):
        yield None
        return
    with node_cluster(tmp_path_factory.mktemp("cluster")) as local:
        os.environ["KUBECONFIG"] = str(local.kubeconfig)
        try:
            yield local
        finally:
            del os.environ["KUBECONFIG"]


@pytest.fixture(scope="session")
def kubeconfig(local_cluster: localcluster.Cluster | None) -> str:
    return str(local_cluster.kubeconfig) if local_cluster else os.environ["KUBECONFIG"]


@pytest.fixture(scope="session")
def cluster(kubeconfig: str) -> Cluster:
    return cluster_of(kubeconfig)
