"""`make demo`: the local control plane, the CRDs, the operator and the examples, end to end.

Starts everything, waits until every example endpoint is Ready, shows what a user sees with
kubectl, and stops again, unless --keep leaves it running to explore.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import localcluster

ROOT = Path(__file__).resolve().parents[1]
STATE = localcluster.CACHE_ROOT / "demo"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--down", action="store_true", help="stop a demo left running")
    args = parser.parse_args()
    if args.down:
        _stop_operator()
        localcluster.stop(STATE)
        print("demo stopped")
        return 0

    cluster = localcluster.start(STATE)
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    kubectl_path = str(localcluster.binary("kubectl"))

    def kubectl(*command: str) -> str:
        done = subprocess.run(
            [kubectl_path, *command], env=env, check=True, capture_output=True, text=True
        )
        return done.stdout

    def show(title: str, *command: str) -> None:
        print(f"\n$ kubectl {' '.join(command)}   # {title}")
        print(kubectl(*command).rstrip())

    print(f"control plane up; export KUBECONFIG={cluster.kubeconfig}")
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/modelendpoints.switchyard.dev",
        "crd/modelgateways.switchyard.dev",
    )

    _stop_operator()
    log = (STATE / "operator.log").open("w")
    switchyard = shutil.which("switchyard", path=str(Path(sys.executable).parent)) or "switchyard"
    operator = subprocess.Popen([switchyard, "run"], env=env, stdout=log, stderr=subprocess.STDOUT)
    (STATE / "operator.pid").write_text(str(operator.pid))
    print(f"operator running (pid {operator.pid}), logging to {STATE / 'operator.log'}")

    kubectl("apply", "-f", str(ROOT / "examples"))
    endpoints = json.loads(kubectl("get", "modelendpoints", "-A", "-o", "json"))["items"]
    for endpoint in endpoints:
        metadata = endpoint["metadata"]
        kubectl(
            "wait",
            "--for=condition=Ready",
            "--timeout=60s",
            "-n",
            metadata["namespace"],
            f"modelendpoint/{metadata['name']}",
        )
    show(
        "the gateway and its endpoints, Ready with their splits",
        "get",
        "modelgateways,modelendpoints",
        "-A",
    )
    show(
        "why an endpoint is Ready, and its transitions",
        "describe",
        "modelendpoint",
        "chat",
        "-n",
        "team-a",
    )
    show(
        "what the gateway owns: credentials (a Secret) and its routing plan (a ConfigMap)",
        "get",
        "secrets,configmaps",
        "-n",
        "ai-gateway",
        "-l",
        "app.kubernetes.io/managed-by=switchyard",
    )

    if args.keep:
        print(f"\nleft running. export KUBECONFIG={cluster.kubeconfig}; `make demo-down` stops it.")
        return 0
    operator.terminate()
    operator.wait(timeout=30)
    (STATE / "operator.pid").unlink()
    localcluster.stop(STATE)
    print("\ndemo done and stopped (`make demo KEEP=1` leaves it running)")
    return 0


def _stop_operator() -> None:
    pid_file = STATE / "operator.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 15)
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    pid_file.unlink()


if __name__ == "__main__":
    sys.exit(main())
