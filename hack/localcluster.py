"""A real Kubernetes control plane on loopback, with no container runtime.

etcd, kube-apiserver and kube-controller-manager are built from the Go module proxy at the
release pinned in hack/controlplane/go.mod, cached outside the repository and reused. No
kubelet runs: objects are stored, validated (schemas, CEL), authorized (RBAC) and garbage
collected exactly as in a cluster, but no Pod ever starts.

    python hack/localcluster.py build            # once; later calls find the cache
    python hack/localcluster.py start --dir DIR  # prints the kubeconfig path
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
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl")
MODULE_DIR = Path(__file__).resolve().parent / "controlplane"
CACHE_ROOT = Path(os.environ.get("SWITCHYARD_CACHE", Path.home() / ".cache" / "switchyard"))
BIN_DIR = CACHE_ROOT / f"k8s-{KUBERNETES_VERSION}"
SERVICE_CIDR = "10.96.0.0/16"


HELM_VERSION = "v4.3.1"
HELM = CACHE_ROOT / f"helm-{HELM_VERSION}" / "helm"


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
        f"building Kubernetes {KUBERNETES_VERSION} control plane into {BIN_DIR} "
        "(about 6 minutes on 2 cores, once)",
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_pki(pki: Path) -> None:
    """A CA, the API server's serving certificate, an admin client certificate and the
    service-account signing key. Imported here so only `start` needs `cryptography`."""
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
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        ],
    )
    issue("admin", subject("switchyard-admin", "system:masters"), ExtendedKeyUsageOID.CLIENT_AUTH)
    write_key("sa.key", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def _kubeconfig(server: str, pki: Path) -> str:
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
                    "name": "admin",
                    "user": {
                        "client-certificate-data": b64("admin.crt"),
                        "client-key-data": b64("admin.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "switchyard-local",
                    "context": {"cluster": "switchyard-local", "user": "admin"},
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


def start(directory: Path) -> Cluster:
    """Start etcd, kube-apiserver and kube-controller-manager; write `DIR/kubeconfig`."""
    cluster = Cluster(directory)
    if cluster.running():
        return cluster
    stop(directory)
    build()
    shutil.rmtree(directory, ignore_errors=True)
    pki, logs, data = directory / "pki", directory / "logs", directory / "etcd"
    for path in (logs, data):
        path.mkdir(parents=True)
    _write_pki(pki)

    etcd_port, etcd_peer_port, api_port = _free_port(), _free_port(), _free_port()
    server = f"https://127.0.0.1:{api_port}"
    cluster.kubeconfig.write_text(_kubeconfig(server, pki))
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
        "kube-apiserver": [
            str(binary("kube-apiserver")),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.key'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc.cluster.local",
            "--allow-privileged=true",
            "--enable-priority-and-fairness=false",
            "--v=1",
        ],
        "kube-controller-manager": [
            str(binary("kube-controller-manager")),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--authentication-kubeconfig={cluster.kubeconfig}",
            f"--authorization-kubeconfig={cluster.kubeconfig}",
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
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for name, command in commands.items():
            log = (logs / f"{name}.log").open("wb")
            # Own session: the control plane outlives the shell that started it, and a
            # Ctrl-C meant for a test run does not reach it.
            processes[name] = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            cluster.state_file.write_text(
                json.dumps({"server": server, "pids": {n: p.pid for n, p in processes.items()}})
            )
            if name == "kube-apiserver":
                _wait_ready(server, pki, processes, logs)
    except BaseException:
        stop(directory)
        raise
    return cluster


def stop(directory: Path) -> None:
    """Stop a control plane started with `start` (no error when none runs)."""
    state_file = Cluster(directory).state_file
    if not state_file.exists():
        return
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


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build and cache the control-plane binaries and Helm")
    for name in ("start", "stop"):
        sub = commands.add_parser(name)
        sub.add_argument("--dir", type=Path, required=True, help="state directory")
    commands.add_parser("bin-dir", help="print where the binaries are cached")
    args = parser.parse_args(argv)
    if args.command == "build":
        print(build())
        print(build_helm())
    elif args.command == "bin-dir":
        print(BIN_DIR)
    elif args.command == "start":
        print(start(args.dir.resolve()).kubeconfig)
    else:
        stop(args.dir.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
