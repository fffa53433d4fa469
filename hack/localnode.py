"""A real Kubernetes node for the local control plane: containerd, kubelet and kube-proxy.

The node lives in namespaces of its own (network, mount and PID), joined to the host by a
veth pair, the way a VM joins a network:

    host  198.18.0.1 ──veth── 198.18.0.2  node ── cni0 bridge ── Pods (198.18.1.0/24)

So everything the node does to the machine (the bridge, kube-proxy's iptables chains, the
kubelet's tmpfs mounts, containerd's overlay mounts and network namespaces) happens inside
namespaces that vanish with the node's last process: stopping the node restores the machine
by construction. What is global (cgroups, a few kernel sysctls the kubelet sets) is undone
explicitly. The node has no default route, so nothing on it can reach past this machine: an
image pull of something not imported fails at once instead of leaving the host.

Addresses come from 198.18.0.0/15, the range set aside for network tests, so they collide with
no real network. The host reaches Pods and ClusterIPs through routes via the node.

Runtime pieces, and why:
- containerd: Debian's 1.6 package (security-maintained, installs in seconds). The kubelet logs
  that 1.6 lacks the RuntimeConfig call and falls back to its own cgroupDriver setting; that
  fallback ends with kubelet 1.37, which will need containerd 2.
- runc and the CNI plugins (bridge, host-local, portmap): Debian's packages.
- kubelet and kube-proxy: built from the control plane's pinned module (hack/localcluster.py).

Development tooling, run as root: the operator never imports this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NODE_NAME = "switchyard-node"
HOST_IP = "198.18.0.1"  # the host's end of the node's link; the API server listens here
NODE_IP = "198.18.0.2"
LINK_PREFIX = 30
HOST_LINK = "sy-node0"  # the host's end of the veth pair (the node's end is its eth0)
POD_CIDR = "198.18.1.0/24"
SERVICE_CIDR = "198.18.128.0/17"
KUBERNETES_SERVICE_IP = "198.18.128.1"  # the first address of SERVICE_CIDR
DNS_SERVICE_IP = "198.18.128.10"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = "switchyard-node"  # every Pod's cgroup sits below this, in each hierarchy
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
# Global settings the kubelet changes on start (protectKernelDefaults off); put back on stop.
KERNEL_SETTINGS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
)  # fmt: skip
PACKAGES = ("containerd", "runc", "containernetworking-plugins", "iptables", "conntrack")
# One node per machine (it owns the link's name and addresses): which cluster's it is.
OWNER = Path("/run/switchyard-node")


class Layout:
    """Where a node keeps its state: all of it below `<cluster dir>/node`."""

    def __init__(self, cluster_directory: Path) -> None:
        self.root = cluster_directory / "node"
        self.logs = cluster_directory / "logs"
        self.pki = cluster_directory / "pki"

    @property
    def state_file(self) -> Path:
        return self.root / "state.json"

    @property
    def containerd_socket(self) -> Path:
        return self.root / "containerd.sock"

    @property
    def link_ready(self) -> Path:
        return self.root / "link-ready"

    @property
    def kubeconfigs(self) -> Path:
        return self.root / "kubeconfigs"


def check_host() -> None:
    """Fail early, with what to do, on a machine that cannot run the node."""
    if os.geteuid() != 0:
        raise SystemExit("the local node needs root (the kubelet, containerd and the network)")
    missing = [
        name
        for name, path in (
            ("containerd", "/usr/bin/containerd"),
            ("runc", "/usr/sbin/runc"),
            ("containernetworking-plugins", f"{CNI_BIN_DIR}/bridge"),
            ("iptables", "/usr/sbin/iptables"),
            ("conntrack", "/usr/sbin/conntrack"),
        )
        if not Path(path).exists()
    ]
    if missing:
        raise SystemExit(
            f"the local node needs Debian's {', '.join(missing)}: run `make tools` "
            f"(apt-get install {' '.join(PACKAGES)})"
        )


# --- on the host -------------------------------------------------------------------------


def start(layout: Path | Layout, binaries: Path, pause_image: str) -> int:
    """Create the node's namespaces and link, and start its supervisor, which starts
    containerd, the kubelet and kube-proxy (they wait for the API server by themselves).
    Returns the supervisor's process id on the host."""
    node = layout if isinstance(layout, Layout) else Layout(layout)
    check_host()
    _claim(node)
    node.root.mkdir(parents=True, exist_ok=True)
    node.logs.mkdir(parents=True, exist_ok=True)
    _save_kernel_settings(node)
    _make_cgroup_root()
    _write_configs(node, binaries, pause_image)
    log = (node.logs / "node.log").open("ab")
    # unshare makes the network and mount namespaces for itself and forks the supervisor as
    # PID 1 of a new PID namespace: when the supervisor ends, so does every process on the node.
    holder = subprocess.Popen(
        [
            "unshare", "--net", "--mount", "--propagation", "private", "--pid", "--fork",
            "--mount-proc", "--kill-child=SIGTERM",
            sys.executable, __file__, "supervise", str(node.root.parent),
        ],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    supervisor = _child_of(holder.pid)
    node.state_file.write_text(json.dumps({"holder": holder.pid, "supervisor": supervisor}))
    try:
        _link(holder.pid)
    except BaseException:
        stop(node)
        raise
    node.link_ready.touch()
    return supervisor


def _claim(node: Layout) -> None:
    """Take the machine's one node for this cluster. A node left by a run that died is
    stopped first; one that still runs is another cluster's, and stays."""
    if OWNER.exists():
        other = Layout(Path(OWNER.read_text().strip()))
        if other.root != node.root:
            running = other.state_file.exists() and alive(
                json.loads(other.state_file.read_text())["supervisor"]
            )
            if running:
                raise SystemExit(
                    f"a local node already runs for the cluster in {other.root.parent}; stop it "
                    f"with: python hack/localcluster.py stop --dir {other.root.parent}"
                )
            stop(other)
    OWNER.write_text(str(node.root.parent))


def _child_of(pid: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            found = children.read_text().split()
            if found:
                return int(found[0])
        time.sleep(0.02)
    raise RuntimeError("the node's supervisor did not start; see logs/node.log")


def _link(holder: int) -> None:
    """The veth pair between the host and the node, and the host's routes to Pods and
    Services through it. Both ends go away with the node's network namespace."""
    _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", "eth0", "netns", str(holder))
    _ip("addr", "add", f"{HOST_IP}/{LINK_PREFIX}", "dev", HOST_LINK)
    _ip("link", "set", HOST_LINK, "up")
    for cidr in (POD_CIDR, SERVICE_CIDR):
        _ip("route", "add", cidr, "via", NODE_IP, "dev", HOST_LINK)


def _remove_host_link() -> None:
    """The kernel tears a network namespace down after its last process has exited, in the
    background, and the veth pair (with the host's routes through it) goes only then: delete
    the host's end now, which deletes both, rather than leave it for a moment or longer."""
    try:
        _ip("link", "delete", HOST_LINK)
    except RuntimeError:
        if _link_exists(HOST_LINK):
            raise  # not merely gone with the namespace already


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", "dev", name], capture_output=True).returncode == 0


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def wait_for_runtime(layout: Path | Layout, timeout: float = 60.0) -> None:
    node = layout if isinstance(layout, Layout) else Layout(layout)
    deadline = time.monotonic() + timeout
    while not node.containerd_socket.exists():
        if time.monotonic() > deadline:
            tail = (node.logs / "containerd.log").read_text()[-3000:]
            raise TimeoutError(f"containerd did not start:\n{tail}")
        state = json.loads(node.state_file.read_text())
        if not alive(state["supervisor"]):
            tail = (node.logs / "node.log").read_text()[-3000:]
            raise RuntimeError(f"the node's supervisor exited:\n{tail}")
        time.sleep(0.1)


def stop(layout: Path | Layout) -> None:
    """Stop the node and put the machine back as it was. No error when none runs."""
    node = layout if isinstance(layout, Layout) else Layout(layout)
    if not node.root.exists():
        return  # this cluster never had a node: the machine's node, if any, is another's
    if node.state_file.exists():
        state = json.loads(node.state_file.read_text())
        for key in ("supervisor", "holder"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state[key], signal.SIGTERM)
        deadline = time.monotonic() + 30
        while alive(state["supervisor"]) and time.monotonic() < deadline:
            time.sleep(0.1)
        for key in ("supervisor", "holder"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(state[key], signal.SIGKILL)
            # The holder exits last, once the kernel has torn its network namespace down.
            deadline = time.monotonic() + 30
            while alive(state[key]) and time.monotonic() < deadline:
                _reap(state[key])
                time.sleep(0.05)
            _reap(state[key])
        node.state_file.unlink()
    # The namespaces are gone with their processes, and so are the bridge, the iptables
    # chains and every mount. Cgroups, kernel settings and the host's end of the link are the
    # machine's: put back only by the node that holds the machine (a stale one's run could
    # not clean up).
    owner = Path(OWNER.read_text().strip()) if OWNER.exists() else None
    if owner in (None, node.root.parent):
        _remove_host_link()
        _remove_cgroup_root()
        _restore_kernel_settings(node)
        OWNER.unlink(missing_ok=True)
    node.link_ready.unlink(missing_ok=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is gone for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _cgroup_hierarchies() -> list[Path]:
    return [path for path in Path("/sys/fs/cgroup").iterdir() if path.is_dir()]


def _make_cgroup_root() -> None:
    """The kubelet wants its cgroup root to exist in every hierarchy; cpuset needs its
    cpus and mems filled in before anything can join it."""
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        root.mkdir(exist_ok=True)
        for name in ("cpuset.cpus", "cpuset.mems"):
            if (hierarchy / name).exists() and not (root / name).read_text().strip():
                (root / name).write_text((hierarchy / name).read_text())


def _remove_cgroup_root(timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    for hierarchy in _cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.exists():
            continue
        # Deepest first: a cgroup can only be removed once it has no children or tasks.
        for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            _rmdir(path, deadline)
        _rmdir(root, deadline)


def _rmdir(path: Path, deadline: float) -> None:
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _save_kernel_settings(node: Layout) -> None:
    saved = node.root / "kernel-settings.json"
    if saved.exists():  # a node that was not stopped: keep what the machine had before it
        return
    values = {
        name: (Path("/proc/sys") / name).read_text().strip()
        for name in KERNEL_SETTINGS
        if (Path("/proc/sys") / name).exists()
    }
    saved.write_text(json.dumps(values))


def _restore_kernel_settings(node: Layout) -> None:
    saved = node.root / "kernel-settings.json"
    if not saved.exists():
        return
    for name, value in json.loads(saved.read_text()).items():
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(value)
    saved.unlink()


def _write_configs(node: Layout, binaries: Path, pause_image: str) -> None:
    root = node.root
    for sub in ("cni/net.d", "cni/ipam", "pod-logs", "kubelet"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "containerd.toml").write_text(
        f"""version = 2
root = "{root / "containerd/root"}"
state = "{root / "containerd/state"}"

[grpc]
  address = "{node.containerd_socket}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # Root on this kind of VM lacks CAP_SYS_RESOURCE, so a negative oom_score_adj is refused
  # and every sandbox would fail to start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{root / "cni/net.d"}"
"""
    )
    (root / "cni/net.d/10-switchyard.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "switchyard",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": "cni0",
                        "isGateway": True,
                        # No masquerade: the host routes Pod addresses back through the node.
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "ranges": [[{"subnet": POD_CIDR}]],
                            "routes": [{"dst": "0.0.0.0/0"}],
                            "dataDir": str(root / "cni/ipam"),
                        },
                    },
                    {"type": "portmap", "capabilities": {"portMappings": True}},
                ],
            },
            indent=2,
        )
    )
    # Pods resolve through the cluster DNS only: the node passes on no upstream resolver.
    (root / "resolv.conf").write_text("# the node has no upstream DNS\n")
    pki = node.pki
    (root / "kubelet.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": NODE_IP,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "authentication": {
                    "anonymous": {"enabled": False},
                    "webhook": {"enabled": True},
                    "x509": {"clientCAFile": str(pki / "ca.crt")},
                },
                "authorization": {"mode": "Webhook"},
                "tlsCertFile": str(pki / "kubelet-serving.crt"),
                "tlsPrivateKeyFile": str(pki / "kubelet-serving.key"),
                "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
                "cgroupDriver": "cgroupfs",
                "cgroupRoot": f"/{CGROUP_ROOT}",
                "failCgroupV1": False,  # this kind of machine has cgroup v1
                "failSwapOn": False,
                "clusterDNS": [DNS_SERVICE_IP],
                "clusterDomain": CLUSTER_DOMAIN,
                "resolvConf": str(root / "resolv.conf"),
                "podLogsDir": str(root / "pod-logs"),
                # No registry to pull from again: images are never garbage collected.
                "imageGCHighThresholdPercent": 100,
                "imageGCLowThresholdPercent": 99,
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                },
                "protectKernelDefaults": False,
            },
            indent=2,
        )
    )
    (root / "kube-proxy.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "mode": "iptables",
                "clientConnection": {"kubeconfig": str(node.kubeconfigs / "kube-proxy")},
                "hostnameOverride": NODE_NAME,
                "clusterCIDR": POD_CIDR,
                "metricsBindAddress": "127.0.0.1:10249",
                "healthzBindAddress": "127.0.0.1:10256",
                # Leave the kernel's conntrack settings alone (some are machine-wide).
                "conntrack": {
                    "maxPerCore": 0,
                    "min": 0,
                    "tcpEstablishedTimeout": "0s",
                    "tcpCloseWaitTimeout": "0s",
                },
                "iptables": {"localhostNodePorts": False},
            },
            indent=2,
        )
    )
    (root / "commands.json").write_text(
        json.dumps(
            {
                "containerd": ["containerd", "--config", str(root / "containerd.toml")],
                "kubelet": [
                    str(binaries / "kubelet"),
                    f"--config={root / 'kubelet.yaml'}",
                    f"--kubeconfig={node.kubeconfigs / 'kubelet'}",
                    f"--root-dir={root / 'kubelet'}",
                    f"--node-ip={NODE_IP}",
                    f"--hostname-override={NODE_NAME}",
                    "--v=1",
                ],
                "kube-proxy": [
                    str(binaries / "kube-proxy"),
                    f"--config={root / 'kube-proxy.yaml'}",
                    "--v=1",
                ],
            }
        )
    )


def host_state() -> dict[str, Any]:
    """What a node could leave behind on the host, to compare before and after one ran:
    processes of its programs, network links and routes, iptables rules, mounts, cgroups,
    the kernel settings the kubelet changes, and the host directories runtimes default to."""
    # The node's own programs (Pods' processes die with its PID namespace, and the host may
    # run Envoys of its own, such as the tests' local ones).
    programs = {"containerd", "containerd-shim-runc-v2", "kubelet", "kube-proxy", "pause",
                "coredns", "unshare"}  # fmt: skip
    processes = sorted(
        comm
        for stat in Path("/proc").glob("[0-9]*/comm")
        if (comm := _read(stat)) in programs and alive(int(stat.parent.name))
    )
    return {
        "processes": processes,
        "links": _run("ip", "-o", "link", "show"),
        "routes": _run("ip", "route", "show", "table", "all"),
        "iptables": _run("iptables-save") if Path("/usr/sbin/iptables-save").exists() else "",
        "mounts": sorted(
            line.split()[4] for line in _read(Path("/proc/self/mountinfo")).splitlines()
        ),
        "cgroups": sorted(str(p) for p in Path("/sys/fs/cgroup").glob(f"*/{CGROUP_ROOT}")),
        "kernel": {name: _read(Path("/proc/sys") / name) for name in KERNEL_SETTINGS},
        "directories": sorted(
            path
            for path in ("/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/run/netns")
            if Path(path).exists()
        ),
    }


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _run(*command: str) -> str:
    done = subprocess.run(command, capture_output=True, text=True)
    # iptables-save stamps its output with the time; that is not state.
    return "\n".join(line for line in done.stdout.splitlines() if not line.startswith("#"))


# --- inside the node's namespaces ----------------------------------------------------------


def supervise(cluster_directory: Path) -> int:
    """PID 1 of the node: set up its network, run containerd, the kubelet and kube-proxy,
    and stop them on SIGTERM. Its exit ends every process on the node."""
    node = Layout(cluster_directory)
    stopping = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    deadline = time.monotonic() + 30
    while not node.link_ready.exists():
        if stopping or time.monotonic() > deadline:
            return 1
        time.sleep(0.02)
    _ip("link", "set", "lo", "up")
    _ip("addr", "add", f"{NODE_IP}/{LINK_PREFIX}", "dev", "eth0")
    _ip("link", "set", "eth0", "up")
    # Forwarding between the link and the Pod bridge, and iptables on bridged traffic (for
    # Services between Pods): both settings belong to this network namespace alone.
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1")
    Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text("1")
    # A private /run: containerd's state, the Pods' network namespaces, the iptables lock.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", "/run"], check=True)
    # A copy-on-write /var/lib: what the node writes there despite its own directories (the
    # CNI result cache, the kubelet's device-plugin socket directory) stays in the node.
    scratch = Path("/run/switchyard-node/var-lib")
    (scratch / "upper").mkdir(parents=True)
    (scratch / "work").mkdir()
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir=/var/lib,upperdir={scratch / 'upper'},workdir={scratch / 'work'}",
         "/var/lib"],
        check=True,
    )  # fmt: skip

    commands: dict[str, list[str]] = json.loads((node.root / "commands.json").read_text())
    processes: dict[str, subprocess.Popen[bytes]] = {}
    for name, command in commands.items():
        log = (node.logs / f"{name}.log").open("ab")
        processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        # The kubelet checks the runtime once at start and exits if it is not there yet.
        deadline = time.monotonic() + 30
        while name == "containerd" and not node.containerd_socket.exists():
            if stopping or processes[name].poll() is not None or time.monotonic() > deadline:
                print("containerd did not start; see logs/containerd.log", flush=True)
                processes[name].kill()
                return 1
            time.sleep(0.05)
    while not stopping:
        time.sleep(0.2)
        # PID 1 inherits every orphan: reap them, and notice a component that died.
        with contextlib.suppress(ChildProcessError):
            while (pid := os.waitpid(-1, os.WNOHANG)[0]) != 0:
                for name, process in processes.items():
                    if process.pid == pid:
                        process.returncode = -1
                        print(f"{name} exited; see logs/{name}.log", flush=True)
    for name in ("kube-proxy", "kubelet", "containerd"):
        processes[name].terminate()
        try:
            processes[name].wait(10)
        except subprocess.TimeoutExpired:
            processes[name].kill()
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(Path(sys.argv[2])))
    print(f"usage: {sys.argv[0]} supervise CLUSTER_DIR (started by localcluster)", file=sys.stderr)
    sys.exit(2)
