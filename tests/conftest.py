"""Session fixtures shared by the suites that need a Kubernetes API server.

With KUBECONFIG set, the tests run against that cluster; otherwise they start the local
cluster (built once, cached outside the repository) for the session: the control plane and a
node that runs Pods (hack/localnode.py; it needs root, as `make test` does).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import localcluster
import localnode
from tests_support.cluster import Cluster

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[localcluster.Cluster | None]:
    """The local cluster this session started, or None when KUBECONFIG names another."""
    if os.environ.get("KUBECONFIG"):
        yield None
        return
    directory = tmp_path_factory.mktemp("cluster")
    before = localnode.host_state()
    local = localcluster.start(directory, node=True)
    os.environ["KUBECONFIG"] = str(local.kubeconfig)
    try:
        yield local
    finally:
        del os.environ["KUBECONFIG"]
        localcluster.stop(directory)
    # The node ran Pods, a bridge, kube-proxy's chains and the kubelet's mounts: stopping it
    # must leave the machine exactly as it was.
    after = localnode.host_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the local cluster left the machine changed: {changed}"


@pytest.fixture(scope="session")
def kubeconfig(local_cluster: localcluster.Cluster | None) -> str:
    return str(local_cluster.kubeconfig) if local_cluster else os.environ["KUBECONFIG"]


@pytest.fixture(scope="session")
def cluster(kubeconfig: str) -> Cluster:
    kube = Cluster(localcluster.build() / "kubectl", kubeconfig)
    kube.install_crds(ROOT / "crds")
    return kube
