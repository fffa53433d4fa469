"""`make demo`: the local control plane, the CRDs, the operator and the examples, end to end.

Starts everything, waits until every example endpoint is Ready, shows what a user sees with
kubectl (splits, owned objects, bad input refused or reported), and stops again, unless
--keep leaves it running to explore.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import localcluster
from gatewaylab import FakeProcess, LocalEnvoy, Outcome, chat, free_port, send_sync

ROOT = Path(__file__).resolve().parents[1]
STATE = localcluster.CACHE_ROOT / "demo"
OPERATOR_PID = STATE / "operator.pid"

# An endpoint whose Secret does not exist: only the operator can see that.
BROKEN = """
apiVersion: switchyard.dev/v1alpha1
kind: ModelEndpoint
metadata: {name: broken, namespace: team-a}
spec:
  gatewayRef: {name: shared, namespace: ai-gateway}
  model: broken
  backends:
  - name: openai
    provider: OpenAI
    model: gpt-4o-mini
    credentialsRef: {name: missing-secret, key: api-key}
    weight: 1
"""


class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        self.path = str(localcluster.binary("kubectl"))

    def run(self, *command: str, stdin: str | None = None, check: bool = True) -> str:
        done = subprocess.run(
            [self.path, *command], input=stdin, env=self.env, capture_output=True, text=True
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(command)}: {done.stderr.strip()}")
        return done.stdout if done.returncode == 0 else done.stderr

    def show(self, title: str, *command: str) -> None:
        print(f"\n$ kubectl {' '.join(command)}   # {title}")
        print(self.run(*command).rstrip())


def demo(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(ROOT / "examples"))
    endpoints = json.loads(kubectl.run("get", "modelendpoints", "-A", "-o", "json"))["items"]
    for endpoint in endpoints:
        metadata = endpoint["metadata"]
        kubectl.run(
            "wait", "--for=condition=Ready", "--timeout=60s",
            "-n", metadata["namespace"], f"modelendpoint/{metadata['name']}",
        )  # fmt: skip
    kubectl.show(
        "the gateway and its endpoints, Ready with their splits",
        "get", "modelgateways,modelendpoints", "-A",
    )  # fmt: skip
    kubectl.show(
        "what the gateway owns: credentials (a Secret) and its routing plan (a ConfigMap)",
        "get", "secrets,configmaps", "-n", "ai-gateway",
        "-l", "app.kubernetes.io/managed-by=switchyard",
    )  # fmt: skip

    print("\n# Bad input. A weight out of range is refused at apply, naming the field:")
    bad = BROKEN.replace("missing-secret", "openai").replace("weight: 1", "weight: 5000")
    print(kubectl.run("apply", "-f", "-", stdin=bad, check=False).strip())
    print("# A Secret that does not exist is reported by the operator; the rest keeps working:")
    kubectl.run("apply", "-f", "-", stdin=BROKEN)
    kubectl.run(
        "wait", "--for=condition=ResolvedRefs=False", "--timeout=60s",
        "-n", "team-a", "modelendpoint/broken",
    )  # fmt: skip
    kubectl.show(
        "the broken endpoint beside the good ones", "get", "modelendpoints", "-n", "team-a"
    )
    described = kubectl.run("describe", "modelendpoint", "broken", "-n", "team-a")
    print("\n$ kubectl describe modelendpoint broken -n team-a   # its conditions and events")
    print(described[described.index("  Conditions:") :].rstrip())


def traffic(kubectl: Kubectl) -> None:
    """Real requests through the gateway's Envoy to fake providers, a split and a failover."""
    fakes = {
        "openai": FakeProcess("OpenAI", f"demo-{uuid.uuid4().hex}", "gpt-4o"),
        "azure": FakeProcess("AzureOpenAI", f"demo-{uuid.uuid4().hex}", "gpt-4o-deployment"),
        "anthropic": FakeProcess("Anthropic", f"demo-{uuid.uuid4().hex}", "claude-sonnet-4-5"),
    }
    envoy: LocalEnvoy | None = None
    try:
        secret = {
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "demo-providers", "namespace": "team-a"},
            "stringData": {name: fake.api_key for name, fake in fakes.items()},
        }  # fmt: skip
        backends = [
            {"name": name, "provider": fake.provider, "model": fake.model, "url": fake.url,
             "weight": weight, "credentialsRef": {"name": "demo-providers", "key": name}}
            for (name, fake), weight in zip(fakes.items(), (50, 30, 20), strict=True)
        ]  # fmt: skip
        backends[1]["apiVersion"] = "2024-10-21"
        endpoint = {
            "apiVersion": "switchyard.dev/v1alpha1", "kind": "ModelEndpoint",
            "metadata": {"name": "demo-chat", "namespace": "team-a"},
            "spec": {"gatewayRef": {"name": "shared", "namespace": "ai-gateway"},
                     "model": "demo-chat", "backends": backends},
        }  # fmt: skip
        kubectl.run(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret, endpoint]}),
        )
        kubectl.run("wait", "--for=condition=Ready", "--timeout=60s", "-n", "team-a",
                    "modelendpoint/demo-chat")  # fmt: skip
        port = free_port()
        envoy = LocalEnvoy(
            "ai-gateway/shared", port, "127.0.0.1:18000", STATE / "envoy.log",
            kubeconfig=kubectl.env["KUBECONFIG"],
        )  # fmt: skip
        envoy.wait_listening()
        url = f"{envoy.url}/v1/chat/completions"
        deadline = time.monotonic() + 30
        while send_sync(url, chat("demo-chat"), 20, 2).statuses[200] != 20:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway does not serve demo-chat; see {envoy.log}")
            time.sleep(0.2)
        print(
            f"\n# Real traffic: `switchyard envoy --gateway ai-gateway/shared --port {port}`"
            " runs the real Envoy, fed by the operator over xDS, in front of three fake"
            " providers (OpenAI, Azure OpenAI, Anthropic)."
        )
        print(f'$ curl -s {url} -d \'{{"model": "demo-chat", "messages": [...]}}\'')
        reply = subprocess.run(
            ["curl", "-s", url, "-H", "content-type: application/json",
             "-d", json.dumps(chat("demo-chat"))],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        print(reply.stdout.strip()[:300])
        names = {fake.port: name for name, fake in fakes.items()}
        print("\n# 1,000 requests, spec weights openai=50 azure=30 anthropic=20:")
        print("  " + _describe(send_sync(url, chat("demo-chat"), 1000), names))
        fakes["anthropic"].fault(refuse=True)
        print("# Anthropic goes down (connections refused). 1,000 more requests:")
        print("  " + _describe(send_sync(url, chat("demo-chat"), 1000), names))
        fakes["anthropic"].heal()
    finally:
        if envoy is not None:
            envoy.stop()
        for fake in fakes.values():
            fake.stop()


def _describe(outcome: Outcome, names: dict[int, str]) -> str:
    shares = " ".join(
        f"{names[port]}={share:.1%}" for port, share in sorted(outcome.shares().items())
    )
    return f"observed split {shares}; failed requests: {outcome.failed}"


def start_operator(kubectl: Kubectl) -> subprocess.Popen[bytes]:
    stop_operator()
    log = (STATE / "operator.log").open("wb")
    switchyard = shutil.which("switchyard", path=str(Path(sys.executable).parent)) or "switchyard"
    operator = subprocess.Popen(
        [switchyard, "run"], env=kubectl.env, stdout=log, stderr=subprocess.STDOUT
    )
    OPERATOR_PID.write_text(str(operator.pid))
    print(f"operator running (pid {operator.pid}), logging to {STATE / 'operator.log'}")
    return operator


def stop_operator() -> None:
    if not OPERATOR_PID.exists():
        return
    pid = int(OPERATOR_PID.read_text())
    OPERATOR_PID.unlink()
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, ChildProcessError):
        pass  # already gone, or not our child (a demo left running by another shell)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--down", action="store_true", help="stop a demo left running")
    args = parser.parse_args()
    if args.down:
        stop_operator()
        localcluster.stop(STATE)
        print("demo stopped")
        return 0

    cluster = localcluster.start(STATE)
    print(f"control plane up; export KUBECONFIG={cluster.kubeconfig}")
    kubectl = Kubectl(cluster.kubeconfig)
    keep = False
    try:
        kubectl.run("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        kubectl.run(
            "wait", "--for=condition=Established", "--timeout=60s",
            "crd/modelendpoints.switchyard.dev", "crd/modelgateways.switchyard.dev",
        )  # fmt: skip
        start_operator(kubectl)
        demo(kubectl)
        traffic(kubectl)
        keep = args.keep
    finally:
        if keep:
            print(
                f"\nleft running: export KUBECONFIG={cluster.kubeconfig}; `make demo-down` stops it"
            )
        else:
            stop_operator()
            localcluster.stop(STATE)
            print("\ndemo stopped (`make demo KEEP=1` leaves it running)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
