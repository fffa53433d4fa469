"""A real local Kubernetes cluster: a control plane, and (as root) a node that runs Pods.

etcd, kube-apiserver, kube-controller-manager, kube-scheduler, the kubelet, kube-proxy and
kubectl are built from the Go module proxy at the release pinned in hack/controlplane/go.mod,
CoreDNS and Helm from theirs, all cached outside the repository and reused.

Without a node (`start(dir)`), objects are stored, validated (schemas, CEL), authorized (RBAC)
and garbage collected exactly as in a cluster, but no Pod ever starts. With one
(`start(dir, node=True)`, hack/localnode.py), a kubelet on containerd runs Pods from images
imported without a registry (hack/images.py), kube-proxy routes Services, and CoreDNS answers
for `*.svc.cluster.local`.

    python hack/localcluster.py build                   # once; later calls find the cache
    python hack/localcluster.py start --dir DIR [--node]  # prints the kubeconfig path
    python hack/localcluster.py stop --dir DIR

Development tooling: the operator never imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localnode
import ratelimit
from pins import CACHE_ROOT, KUBERNETES_VERSION
from ports import free_port

BINARIES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet",
    "kube-proxy", "kubectl",
)  # fmt: skip
MODULE_DIR = Path(__file__).resolve().parent / "controlplane"
BIN_DIR = CACHE_ROOT / f"k8s-{KUBERNETES_VERSION}"
SERVICE_CIDR = localnode.SERVICE_CIDR


HELM_VERSION = "v4.3.1"
HELM = CACHE_ROOT / f"helm-{HELM_VERSION}" / "helm"
COREDNS_VERSION = "v1.15.0"
COREDNS = CACHE_ROOT / f"coredns-{COREDNS_VERSION}" / "coredns"


def binary(name: str) -> Path:
    return BIN_DIR / name


def build_helm() -> Path:
    """Helm from its Go module at a pinned release, cached like the control plane."""
    if not HELM.is_file():
        print(
            f"building Helm {HELM_VERSION} into {HELM.parent} (about 2 minutes, once)",
            file=sys.stderr,
            flush=True,
        )
        subprocess.run(
            ["go", "install", f"helm.sh/helm/v4/cmd/helm@{HELM_VERSION}"],
            check=True,
            env={**os.environ, "GOBIN": str(HELM.parent), "CGO_ENABLED": "0"},
        )
    return HELM


def build_coredns() -> Path:
    """CoreDNS, the cluster DNS of the local node, from its Go module at a pinned release."""
    if not COREDNS.is_file():
        print(f"building CoreDNS {COREDNS_VERSION} into {COREDNS.parent} (once)", file=sys.stderr)
        subprocess.run(
            ["go", "install", "-trimpath", "-ldflags=-s -w",
             f"github.com/coredns/coredns@{COREDNS_VERSION}"],
            check=True,
            env={**os.environ, "GOBIN": str(COREDNS.parent), "CGO_ENABLED": "0"},
        )  # fmt: skip
    return COREDNS


def build() -> Path:
    """Build the binaries unless the cache has them. Returns the directory that holds them."""
    if all(binary(name).is_file() for name in BINARIES):
        return BIN_DIR
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    # Without the stamp the server calls itself v0.0.0-master, which breaks kubectl and Helm.
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {package}.gitVersion={KUBERNETES_VERSION}",
            f"-X {package}.gitMajor={major}",
            f"-X {package}.gitMinor={minor}",
            f"-X {package}.gitTreeState=clean",
        ]
    partial = BIN_DIR.with_name(BIN_DIR.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    print(
        f"building Kubernetes {KUBERNETES_VERSION} (control plane and node) into {BIN_DIR} "
        "(about 10 minutes on 2 cores, once)",
        file=sys.stderr,
        flush=True,
    )
    subprocess.run(
        [
            "go",
            "build",
            "-trimpath",
            "-ldflags",
            " ".join(flags),
            "-o",
            f"{partial}/",
            "./etcd",
            "k8s.io/kubernetes/cmd/kube-apiserver",
            "k8s.io/kubernetes/cmd/kube-controller-manager",
            "k8s.io/kubernetes/cmd/kube-scheduler",
            "k8s.io/kubernetes/cmd/kubelet",
            "k8s.io/kubernetes/cmd/kube-proxy",
            "k8s.io/kubernetes/cmd/kubectl",
        ],
        cwd=MODULE_DIR,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
    )
    shutil.rmtree(BIN_DIR, ignore_errors=True)
    partial.rename(BIN_DIR)
    return BIN_DIR


@dataclass
class Cluster:
    directory: Path

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    def running(self) -> bool:
        if not self.state_file.exists():
            return False
        state = json.loads(self.state_file.read_text())
        return all(_alive(pid) for pid in state["pids"].values())

    def has_node(self) -> bool:
        return self.state_file.exists() and bool(json.loads(self.state_file.read_text())["node"])


def _alive(pid: int) -> bool:
    return localnode.alive(pid)


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, the client certificates of the admin and
    of each component, the kubelet's serving certificate and the service-account signing
    key. Imported here so only `start` needs `cryptography`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    pki.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    lifetime = datetime.timedelta(days=365)

    def write_key(name: str, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
        (pki / name).write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def subject(common_name: str, organization: str | None = None) -> x509.Name:
        parts = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        return x509.Name(parts)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = subject("switchyard-local-ca")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_key("ca.key", ca_key)
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        name: str,
        subj: x509.Name,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName] | None = None,
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subj)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + lifetime)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        write_key(f"{name}.key", key)
        (pki / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    issue(
        "apiserver",
        subject("kube-apiserver"),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(localnode.HOST_IP)),
            x509.IPAddress(ipaddress.ip_address(localnode.KUBERNETES_SERVICE_IP)),
        ],
    )
    client = ExtendedKeyUsageOID.CLIENT_AUTH
    issue("admin", subject("switchyard-admin", "system:masters"), client)
    # The node's identities, named as the built-in RBAC roles and the Node authorizer expect.
    issue("kubelet", subject(f"system:node:{localnode.NODE_NAME}", "system:nodes"), client)
    issue("kube-proxy", subject("system:kube-proxy"), client)
    issue("kube-scheduler", subject("system:kube-scheduler"), client)
    issue("apiserver-kubelet-client", subject("kube-apiserver-kubelet-client"), client)
    issue(
        "kubelet-serving",
        subject(localnode.NODE_NAME),
        ExtendedKeyUsageOID.SERVER_AUTH,
        [
            x509.DNSName(localnode.NODE_NAME),
            x509.IPAddress(ipaddress.ip_address(localnode.NODE_IP)),
        ],
    )
    write_key("sa.key", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _kubeconfig(server: str, pki: Path, user: str = "admin") -> str:
    """A kubeconfig that authenticates with the client certificate `pki/<user>.crt`."""
    import base64

    def b64(name: str) -> str:
        return base64.b64encode((pki / name).read_bytes()).decode()

    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "switchyard-local",
                    "cluster": {"server": server, "certificate-authority-data": b64("ca.crt")},
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate-data": b64(f"{user}.crt"),
                        "client-key-data": b64(f"{user}.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "switchyard-local",
                    "context": {"cluster": "switchyard-local", "user": user},
                }
            ],
            "current-context": "switchyard-local",
        },
        indent=2,
    )


def _wait_ready(
    server: str,
    pki: Path,
    processes: dict[str, subprocess.Popen[bytes]],
    logs: Path,
    timeout: float = 90.0,
) -> None:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                tail = (logs / f"{name}.log").read_text()[-3000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(f"{server}/readyz", context=context, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"kube-apiserver not ready after {timeout:.0f}s; logs in {logs}")


def start(directory: Path, node: bool = False) -> Cluster:
    """Start etcd, kube-apiserver and kube-controller-manager, and with `node` the
    scheduler, a node (hack/localnode.py) and CoreDNS; write `DIR/kubeconfig`."""
    cluster = Cluster(directory)
    if cluster.running() and cluster.has_node() == node:
        return cluster
    stop(directory)
    build()
    if node:
        localnode.check_host()
        import images  # only a node needs images, and images need the venv's Envoy

        node_images = [images.pause_image(), images.coredns_image(build_coredns(), COREDNS_VERSION)]
    shutil.rmtree(directory, ignore_errors=True)
    pki, logs, data = directory / "pki", directory / "logs", directory / "etcd"
    for path in (logs, data):
        path.mkdir(parents=True)
    _write_pki(pki)

    etcd_port, etcd_peer_port, api_port = free_port(), free_port(), free_port()
    # With a node, the API server listens on the host's end of the node's link, which Pods
    # and the kubelet reach; without one, on loopback only.
    address = localnode.HOST_IP if node else "127.0.0.1"
    server = f"https://{address}:{api_port}"
    cluster.kubeconfig.write_text(_kubeconfig(server, pki))
    processes: dict[str, subprocess.Popen[bytes]] = {}
    state: dict[str, Any] = {
        "server": server,
        "etcd": f"http://127.0.0.1:{etcd_port}",
        "pids": {},
        "commands": {},
        "node": node,
    }

    def record() -> None:
        state["pids"] = {n: p.pid for n, p in processes.items()}
        state["commands"] = {n: p.args for n, p in processes.items()}
        cluster.state_file.write_text(json.dumps(state))

    try:
        if node:
            layout = localnode.Layout(directory)
            layout.kubeconfigs.mkdir(parents=True, exist_ok=True)
            for user in ("kubelet", "kube-proxy", "kube-scheduler"):
                (layout.kubeconfigs / user).write_text(_kubeconfig(server, pki, user))
            state["node_supervisor"] = localnode.start(layout, BIN_DIR, node_images[0].reference)
            record()
        for name, command in _control_plane(directory, address, api_port, etcd_port,
                                            etcd_peer_port, node).items():  # fmt: skip
            log = (logs / f"{name}.log").open("wb")
            # Own session: the control plane outlives the shell that started it, and a
            # Ctrl-C meant for a test run does not reach it.
            processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            record()
            if name == "kube-apiserver":
                _wait_ready(server, pki, processes, logs)
        if node:
            localnode.wait_for_runtime(directory)
            images.import_images(
                "ctr", str(localnode.Layout(directory).containerd_socket), node_images
            )
            _install_addons(cluster, node_images[1].reference)
    except BaseException:
        stop(directory)
        raise
    return cluster


def restart(directory: Path, component: str, down_seconds: float = 0.0) -> None:
    """Kill one control-plane component without warning (`kill -9`), leave it down for
    `down_seconds`, and start it again as it was: same flags, data and port. For chaos tests."""
    cluster = Cluster(directory)
    state = json.loads(cluster.state_file.read_text())
    pid = state["pids"][component]
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while _alive(pid):
        _reap(pid)
        time.sleep(0.05)
    time.sleep(down_seconds)
    logs = directory / "logs"
    # Its port is free once it is dead, and in the ephemeral range: until it listens again,
    # a client's connection attempt to it (the readiness poll's, the controller manager's)
    # can be given that very port as its own and connect to itself, holding it for a
    # moment. Start again until it binds, as a kubelet would restart a crashed Pod.
    deadline = time.monotonic() + 60
    log = logs / f"{component}.log"
    while True:
        written = log.stat().st_size if log.exists() else 0
        process = subprocess.Popen(
            state["commands"][component],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        state["pids"][component] = process.pid
        cluster.state_file.write_text(json.dumps(state))
        if component != "kube-apiserver":
            return
        try:
            _wait_ready(state["server"], directory / "pki", {component: process}, logs)
            return
        except RuntimeError:
            this_start = log.read_bytes()[written:]
            if b"address already in use" not in this_start or time.monotonic() > deadline:
                raise
            time.sleep(1)


def compact_etcd(directory: Path) -> int:
    """Compact etcd's history up to its current revision, as the API server does every five
    minutes: a watch that resumes from an older resourceVersion then gets 410 Gone. Returns
    that revision."""
    etcd = json.loads(Cluster(directory).state_file.read_text())["etcd"]

    def call(path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{etcd}/v3/{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            answer: dict[str, Any] = json.loads(reply.read())
            return answer

    revision = int(call("kv/range", {"key": "AA=="})["header"]["revision"])  # any key
    call("kv/compaction", {"revision": revision, "physical": True})
    return revision


def _control_plane(
    directory: Path, address: str, api_port: int, etcd_port: int, etcd_peer_port: int, node: bool
) -> dict[str, list[str]]:
    pki, data = directory / "pki", directory / "etcd"
    kubeconfig = directory / "kubeconfig"
    apiserver = [
        str(binary("kube-apiserver")),
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--bind-address={address}",
        f"--advertise-address={address}",
        f"--secure-port={api_port}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        # As clusters that guard owner references do: setting blockOwnerDeletion needs
        # `update` on the owner's finalizers.
        "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki / 'sa.key'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        "--api-audiences=https://kubernetes.default.svc.cluster.local",
        "--allow-privileged=true",
        "--enable-priority-and-fairness=false",
        "--v=1",
    ]
    if node:
        # `kubectl exec`/`logs` and the kubelet's own API: the API server proves who it is
        # with a client certificate and checks the kubelet's; no anonymous kubelet access.
        apiserver += [
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={pki / 'ca.crt'}",
            "--kubelet-preferred-address-types=InternalIP",
        ]
    commands = {
        "etcd": [
            str(binary("etcd")),
            f"--data-dir={data}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync",  # throwaway data: durability only costs time here
            "--log-level=warn",
        ],
        "kube-apiserver": apiserver,
        "kube-controller-manager": [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--leader-elect=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--use-service-account-credentials=true",
            "--v=1",
        ],
    }
    if node:
        scheduler = localnode.Layout(directory).kubeconfigs / "kube-scheduler"
        commands["kube-scheduler"] = [
            str(binary("kube-scheduler")),
            f"--kubeconfig={scheduler}",
            f"--authentication-kubeconfig={scheduler}",
            f"--authorization-kubeconfig={scheduler}",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--leader-elect=false",
            "--v=1",
        ]
    return commands


def _install_addons(cluster: Cluster, coredns_image: str) -> None:
    """What every cluster has besides its components: the API server's access to the
    kubelet's API, and cluster DNS."""
    kubectl = [str(binary("kubectl")), "--kubeconfig", str(cluster.kubeconfig)]
    subprocess.run(
        [*kubectl, "apply", "-f", "-"],
        input=json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": _addon_objects(coredns_image)}
        ),
        check=True,
        capture_output=True,
        text=True,
    )
    for what in ("node/" + localnode.NODE_NAME, "-n kube-system deployment/coredns"):
        condition = "Ready" if what.startswith("node") else "Available"
        subprocess.run(
            [*kubectl, "wait", f"--for=condition={condition}", "--timeout=120s", *what.split()],
            check=True, capture_output=True, text=True,
        )  # fmt: skip


def _addon_objects(coredns_image: str) -> list[dict[str, Any]]:
    system = {"namespace": "kube-system"}
    labels = {"k8s-app": "kube-dns"}
    corefile = f"""\
.:1053 {{
    errors
    health :8080
    ready :8181
    kubernetes {localnode.CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    reload
}}
"""  # no `forward`: the cluster's DNS answers for the cluster only, nothing leaves the machine
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "switchyard-local:apiserver-kubelet-client"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                          "name": "kube-apiserver-kubelet-client"}],
        },
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "coredns", **system}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "switchyard-local:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["services", "pods", "namespaces"],
                 "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                 "verbs": ["list", "watch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "switchyard-local:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                        "name": "switchyard-local:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", **system}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", **system},
         "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "coredns", **system, "labels": labels},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": "coredns",
                        "dnsPolicy": "Default",
                        "securityContext": {"runAsNonRoot": True, "runAsUser": 65532},
                        "containers": [{
                            "name": "coredns",
                            "image": coredns_image,
                            "imagePullPolicy": "Never",
                            "args": ["-conf", "/etc/coredns/Corefile"],
                            "ports": [{"name": "dns", "containerPort": 1053, "protocol": "UDP"},
                                      {"name": "dns-tcp", "containerPort": 1053,
                                       "protocol": "TCP"}],
                            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181},
                                               "periodSeconds": 2},
                            "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}},
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                        }],
                        "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", **system, "labels": labels},
            "spec": {
                "clusterIP": localnode.DNS_SERVICE_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]  # fmt: skip


def stop(directory: Path) -> None:
    """Stop a cluster started with `start` (no error when none runs), its node included,
    and put the machine back as it was."""
    state_file = Cluster(directory).state_file
    if state_file.exists():
        pids = json.loads(state_file.read_text())["pids"]
        for pid in reversed(list(pids.values())):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + 15
        for pid in pids.values():
            while _alive(pid) and time.monotonic() < deadline:
                _reap(pid)
                time.sleep(0.1)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
                _reap(pid)
        state_file.unlink()
    localnode.stop(directory)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "build", help="build and cache the control-plane binaries, Helm and the rate limit service"
    )
    for name in ("start", "stop"):
        sub = commands.add_parser(name)
        sub.add_argument("--dir", type=Path, required=True, help="state directory")
        if name == "start":
            sub.add_argument("--node", action="store_true", help="with a node that runs Pods")
    commands.add_parser("bin-dir", help="print where the binaries are cached")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
        print(build_helm())
        print(build_coredns())
        print(ratelimit.build())
    elif args.command == "bin-dir":
        print(BIN_DIR)
    elif args.command == "start":
        print(start(args.dir.resolve(), node=args.node).kubeconfig)
    else:
        stop(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
