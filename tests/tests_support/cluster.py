"""Talking to the test cluster the way a user does: kubectl, with JSON in and out."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

import localcluster
import localnode

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]

# Kinds whose every object a no-write check snapshots in the test namespaces.
SNAPSHOT_KINDS = (
    "modelendpoints", "modelgateways", "secrets", "configmaps", "events", "services",
    "deployments", "poddisruptionbudgets",
)  # fmt: skip


class KubectlError(Exception):
    def __init__(self, command: list[str], stderr: str) -> None:
        super().__init__(f"kubectl {' '.join(command)}: {stderr}")
        self.stderr = stderr


class Cluster:
    def __init__(self, kubectl: Path, kubeconfig: str) -> None:
        self.kubectl_path = kubectl
        self.kubeconfig = kubeconfig

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
    ) -> str:
        command = [str(self.kubectl_path), "--kubeconfig", self.kubeconfig, *args]
        done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise KubectlError(list(args), done.stderr.strip())
        return done.stdout

    def install_crds(self, directory: Path) -> None:
        """Apply the CRDs and wait until the API server serves them."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(directory))
        self.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/modelendpoints.switchyard.dev", "crd/modelgateways.switchyard.dev",
        )  # fmt: skip
        # Established is not yet servable: new CRD storage answers 429 while it initialises.
        eventually(self.servable)

    def servable(self) -> bool:
        try:
            self.kubectl("get", "modelendpoints,modelgateways", "-A")
        except KubectlError:
            return False
        return True

    def apply(self, *documents: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(documents))

    def apply_rejected(self, document: dict[str, Any]) -> str:
        """Apply a document the API server must refuse; returns its error text."""
        try:
            self.apply(document)
        except KubectlError as error:
            return error.stderr
        raise AssertionError(f"the API server accepted {document['metadata']['name']}")

    def rollout(self, deployment: str, namespace: str, timeout: float = 180) -> None:
        """Wait until the Deployment exists and has rolled out."""
        eventually(lambda: self.get("deployments", deployment, namespace), timeout=60)
        try:
            self.kubectl(
                "rollout", "status", f"deployment/{deployment}", "-n", namespace,
                f"--timeout={timeout:.0f}s", timeout=timeout + 30,
            )  # fmt: skip
        except KubectlError as stuck:
            # What held it back: the Pods' conditions and events, and what they logged.
            described = self.kubectl("describe", "pods", "-n", namespace, check=False)
            logs = self.kubectl(
                "logs", f"deployment/{deployment}", "-n", namespace, "--all-containers",
                "--tail=40", check=False,
            )  # fmt: skip
            raise AssertionError(
                f"{stuck}\n--- pods:\n{described[-6000:]}\n--- logs:\n{logs[-4000:]}"
            ) from stuck

    def get(self, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
        out = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def list(self, kind: str, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = json.loads(
            self.kubectl("get", kind, "-n", namespace, "-o", "json")
        )["items"]
        return items

    def delete(self, kind: str, name: str, namespace: str, wait: bool = True) -> None:
        self.kubectl(
            "delete",
            kind,
            name,
            "-n",
            namespace,
            "--ignore-not-found",
            f"--wait={str(wait).lower()}",
        )

    def versions(self, namespaces: Iterable[str]) -> dict[tuple[str, str, str], str]:
        """resourceVersion of every object of SNAPSHOT_KINDS: equal snapshots mean no writes.

        A Deployment counts by its generation, which only spec writes move: its status is
        the deployment controller's to write.
        """
        snapshot = {}
        for namespace in namespaces:
            for kind in SNAPSHOT_KINDS:
                for item in self.list(kind, namespace):
                    if kind == "events" and not _reported_by_the_operator(item):
                        continue  # the kubelet's, about the gateway's Pods
                    metadata = item["metadata"]
                    version = metadata["generation"] if kind == "deployments" else None
                    snapshot[(kind, namespace, metadata["name"])] = str(
                        version or metadata["resourceVersion"]
                    )
        return snapshot


def _reported_by_the_operator(event: dict[str, Any]) -> bool:
    source = (event.get("source") or {}).get("component")
    return "switchyard" in (event.get("reportingComponent"), source)


def eventually(check: Callable[[], T | None], timeout: float = 20.0, interval: float = 0.2) -> T:
    """Poll until `check` returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        try:
            last = check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            last = None
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
        time.sleep(interval)


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for entry in ((obj or {}).get("status") or {}).get("conditions") or []:
        if entry["type"] == type_:
            return dict(entry)
    return None


@contextlib.contextmanager
def node_cluster(directory: Path) -> Iterator[localcluster.Cluster]:
    """The local cluster with its node, stopped afterwards; the node ran Pods, a bridge,
    kube-proxy's chains and the kubelet's mounts, and stopping it must leave the machine
    exactly as it was."""
    before = localnode.host_state()
    try:
        yield localcluster.start(directory, node=True)
    finally:
        localcluster.stop(directory)
    after = localnode.host_state()
    changed = {k: (before[k], after[k]) for k in before if before[k] != after[k]}
    assert not changed, f"the local cluster left the machine changed: {changed}"


def cluster_of(kubeconfig: str) -> Cluster:
    """kubectl on the cluster `kubeconfig` names, with the CRDs installed."""
    kube = Cluster(localcluster.build() / "kubectl", kubeconfig)
    kube.install_crds(ROOT / "crds")
    return kube
