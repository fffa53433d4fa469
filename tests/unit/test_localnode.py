"""hack/localnode.py's clean-up of the host, in network and mount namespaces of the test's
own (the session's node holds the machine's link name and owner file meanwhile)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import localnode

HACK = Path(localnode.__file__).parent

# The host's end of a node's link, left behind as the kernel leaves it until it has torn the
# node's network namespace down: both ends on this side, with the node's address and routes.
STOP_WITH_A_LINGERING_LINK = f"""
import subprocess, sys
sys.path.insert(0, {str(HACK)!r})
import localnode

def ip(*args):
    subprocess.run(["ip", *args], check=True)

ip("link", "add", localnode.HOST_LINK, "type", "veth", "peer", "name", "node-end")
ip("addr", "add", f"{{localnode.HOST_IP}}/{{localnode.LINK_PREFIX}}", "dev", localnode.HOST_LINK)
ip("link", "set", localnode.HOST_LINK, "up")
ip("link", "set", "node-end", "up")
for cidr in (localnode.POD_CIDR, localnode.SERVICE_CIDR):
    ip("route", "add", cidr, "via", localnode.NODE_IP, "dev", localnode.HOST_LINK)
localnode.stop(localnode.Layout(__import__("pathlib").Path(sys.argv[1])))
print(subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout)
print(subprocess.run(["ip", "route", "show"], capture_output=True, text=True).stdout)
"""


def test_stopping_a_node_removes_the_host_link_the_kernel_has_not_torn_down_yet(
    tmp_path: Path,
) -> None:
    (tmp_path / "node").mkdir()  # a node that ran for this cluster, its processes gone
    left = _in_namespaces_of_its_own(STOP_WITH_A_LINGERING_LINK, tmp_path)
    assert localnode.HOST_LINK not in left
    assert "node-end" not in left  # a veth pair goes as one
    assert localnode.NODE_IP not in left  # and the routes through it


def test_stopping_a_node_whose_link_is_already_gone_is_no_error(tmp_path: Path) -> None:
    (tmp_path / "node").mkdir()
    stop = (
        f"import sys, pathlib; sys.path.insert(0, {str(HACK)!r}); import localnode; "
        "localnode.stop(localnode.Layout(pathlib.Path(sys.argv[1])))"
    )
    _in_namespaces_of_its_own(stop, tmp_path)


def _in_namespaces_of_its_own(script: str, cluster_directory: Path) -> str:
    """Run `script` with a network of its own, and an empty /run and /sys/fs/cgroup: no node
    owns its machine, and the cgroups the session's node uses are out of its reach."""
    done = subprocess.run(
        [
            "unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
            "mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /sys/fs/cgroup"
            ' && exec "$0" -c "$1" "$2"',
            sys.executable, script, str(cluster_directory),
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout
