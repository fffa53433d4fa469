"""`make demo`: the local cluster, the operator installed by Helm, the examples, end to end.

Starts the local cluster with its node, builds the operator's image from the Dockerfile and
installs the chart with it, so the operator and every gateway run as Pods. Waits until every
example endpoint is Ready, shows what a user sees with kubectl (Pods, splits, owned objects,
bad input refused or reported), sends real traffic through a gateway's Service to fake
providers, and stops again, unless --keep leaves it running to explore.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import defaultdict
from pathlib import Path

import anthropic
import openai
from prometheus_client.parser import text_string_to_metric_families

import images
import localcluster
import localnode
from gatewaylab import FakeProcess, Outcome, chart_image_values, chat, send_sync
from pins import CACHE_ROOT

ROOT = Path(__file__).resolve().parents[1]
STATE = CACHE_ROOT / "demo"

# The API key of the example client team-a/checkout (examples/40-client.yaml).
CHECKOUT = {"authorization": "Bearer sk-demo-checkout-key"}
# USD per million input and output tokens of the openai, azure and anthropic backends.
PRICES = (("2.50", "10.00"), ("2.50", "10.00"), ("3.00", "15.00"))

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


def install(kubectl: Kubectl) -> None:
    """The operator as users install it: its image, built from the Dockerfile, and Helm."""
    print("building the operator's image from the Dockerfile (cached after the first run)")
    built = images.chart_images()
    operator = built[0]
    images.import_images("ctr", str(localnode.Layout(STATE).containerd_socket), built)
    helm = str(localcluster.build_helm())
    # The examples' gateway namespace: the operator writes only where gatewayNamespaces says,
    # through a Role there, so the namespace exists first.
    kubectl.run("apply", "-f", "-", stdin=json.dumps(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ai-gateway"}}))  # fmt: skip
    subprocess.run(
        [helm, "upgrade", "--install", "switchyard", str(ROOT / "charts" / "switchyard"),
         "-n", "switchyard-system", "--create-namespace", "--wait", "--timeout", "180s",
         "--set", "gatewayNamespaces={ai-gateway}",
         *chart_image_values(*(image.reference for image in built))],
        env=kubectl.env, check=True, capture_output=True,
    )  # fmt: skip
    print(f"\n$ helm install switchyard charts/switchyard -n switchyard-system "
          f"--set gatewayNamespaces={{ai-gateway}} "
          f"--set image.repository=... --set image.tag=...   # {operator.reference}")  # fmt: skip
    kubectl.show("the operator, a Pod under its ServiceAccount",
                 "get", "pods", "-n", "switchyard-system", "-o", "wide")  # fmt: skip


def demo(kubectl: Kubectl) -> None:
    kubectl.run("apply", "-f", str(ROOT / "examples"))
    endpoints = json.loads(kubectl.run("get", "modelendpoints", "-A", "-o", "json"))["items"]
    for endpoint in endpoints:
        metadata = endpoint["metadata"]
        kubectl.run(
            "wait", "--for=condition=Ready", "--timeout=60s",
            "-n", metadata["namespace"], f"modelendpoint/{metadata['name']}",
        )  # fmt: skip
    # Endpoints are Ready once their routes are planned; the gateway's objects follow.
    kubectl.run("wait", "--for=create", "--timeout=60s", "-n", "ai-gateway",
                "deployment/shared-switchyard-envoy")  # fmt: skip
    kubectl.run("rollout", "status", "deployment/shared-switchyard-envoy", "-n", "ai-gateway",
                "--timeout=180s")  # fmt: skip
    kubectl.run("wait", "--for=condition=Ready", "--timeout=60s", "-n", "team-a",
                "modelclient/checkout")  # fmt: skip
    kubectl.show(
        "the gateway and its endpoints, Ready with their splits",
        "get", "modelgateways,modelendpoints", "-A",
    )  # fmt: skip
    kubectl.show(
        "who may call the gateway: ModelClients, and the models each may call",
        "get", "modelclients", "-A",
    )  # fmt: skip
    kubectl.show(
        "what the gateway runs: Envoy Pods fed by the operator over xDS, behind a Service",
        "get", "pods,services", "-n", "ai-gateway", "-o", "wide",
    )  # fmt: skip
    kubectl.show(
        "what the gateway owns besides: credentials (a Secret) and its routing plan",
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
    """Real requests through the gateway's Service and Envoy Pods to fake providers on the
    host: a split and a failover."""
    fakes = {
        "openai": FakeProcess("OpenAI", f"demo-{uuid.uuid4().hex}", "gpt-4o",
                              host=localnode.HOST_IP),
        "azure": FakeProcess("AzureOpenAI", f"demo-{uuid.uuid4().hex}", "gpt-4o-deployment",
                             host=localnode.HOST_IP),
        "anthropic": FakeProcess("Anthropic", f"demo-{uuid.uuid4().hex}", "claude-sonnet-4-5",
                                 host=localnode.HOST_IP),
    }  # fmt: skip
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
        for backend, prices in zip(backends, PRICES, strict=True):
            backend["pricing"] = {"currency": "USD", "inputPerMillion": prices[0],
                                  "outputPerMillion": prices[1]}  # fmt: skip
        # Claude and GPT, half each: the endpoint both SDKs call.
        assistant = [{**b, "weight": 1} for b in backends if b["name"] in ("openai", "anthropic")]
        endpoints = [
            {
                "apiVersion": "switchyard.dev/v1alpha1", "kind": "ModelEndpoint",
                "metadata": {"name": name, "namespace": "team-a"},
                "spec": {"gatewayRef": {"name": "shared", "namespace": "ai-gateway"},
                         "model": name, "backends": spec},
            }
            for name, spec in (("demo-chat", backends), ("assistant", assistant))
        ]  # fmt: skip
        kubectl.run(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [secret, *endpoints]}),
        )
        kubectl.run("wait", "--for=condition=Ready", "--timeout=60s", "-n", "team-a",
                    "modelendpoint/demo-chat", "modelendpoint/assistant")  # fmt: skip
        address = kubectl.run("get", "service", "shared-switchyard", "-n", "ai-gateway",
                              "-o", "jsonpath={.spec.clusterIP}")  # fmt: skip
        url = f"http://{address}:8080/v1/chat/completions"
        deadline = time.monotonic() + 30
        while send_sync(url, chat("demo-chat"), 20, 2, CHECKOUT).statuses[200] != 20:
            if time.monotonic() > deadline:
                raise RuntimeError("the gateway's Service does not serve demo-chat")
            time.sleep(0.2)
        print(
            "\n# Real traffic through the gateway's Service (ClusterIP "
            f"{address}) to its Envoy Pods, in front of three fake providers on the host"
            " (OpenAI, Azure OpenAI, Anthropic)."
        )
        print("# Without a key, the gateway answers itself; no provider is asked:")
        _curl(url, {})
        print("# With the key of ModelClient team-a/checkout:")
        _curl(url, CHECKOUT)
        _both_sdks(address)
        names = {fake.port: name for name, fake in fakes.items()}
        print("\n# 1,000 requests, spec weights openai=50 azure=30 anthropic=20:")
        print("  " + _describe(send_sync(url, chat("demo-chat"), 1000, 16, CHECKOUT), names))
        fakes["anthropic"].fault(refuse=True)
        print("# Anthropic goes down (connections refused). 1,000 more requests:")
        print("  " + _describe(send_sync(url, chat("demo-chat"), 1000, 16, CHECKOUT), names))
        fakes["anthropic"].heal()
        _usage_report(kubectl)
    finally:
        for fake in fakes.values():
            fake.stop()


def _usage_report(kubectl: Kubectl) -> None:
    """Tokens and cost per client and per vendor, as the operator's /metrics counts them
    from the answers its gateways report (within a second of each answer)."""
    time.sleep(2)
    addresses = kubectl.run(
        "get", "pods", "-n", "switchyard-system", "-l", "app.kubernetes.io/name=switchyard",
        "-o", "jsonpath={.items[*].status.podIP}",
    ).split()  # fmt: skip
    tokens: dict[tuple[str, str], float] = defaultdict(float)
    cost: dict[tuple[str, str], float] = defaultdict(float)
    for address in addresses:  # the leader counts; a standby has no gateway's answers
        with urllib.request.urlopen(f"http://{address}:8000/metrics", timeout=10) as reply:
            text = reply.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = sample.labels
                if sample.name == "gen_ai_client_token_usage_sum":
                    kind = labels["gen_ai_token_type"]
                    tokens[("client " + labels["client"], kind)] += sample.value
                    tokens[("vendor " + labels["provider"], kind)] += sample.value
                elif sample.name == "switchyard_cost_total":
                    cost[("client " + labels["client"], labels["currency"])] += sample.value
                    cost[("vendor " + labels["provider"], labels["currency"])] += sample.value
    print("\n# Tokens and cost, from the operator's /metrics (gen_ai_client_token_usage,")
    print("# switchyard_cost_total), counted from every answer the gateway served:")
    print(f"  {'':<26}{'input':>10}{'output':>10}{'cost':>14}")
    for who in sorted({who for who, _ in tokens}):
        spent = ", ".join(f"{amount:.6f} {currency}" for (w, currency), amount in cost.items()
                          if w == who)  # fmt: skip
        print(f"  {who:<26}{tokens[(who, 'input')]:>10.0f}{tokens[(who, 'output')]:>10.0f}"
              f"{spent:>14}")  # fmt: skip


def _both_sdks(address: str) -> None:
    """One endpoint (Claude and GPT, half each), called by apps written against either
    vendor's SDK: each request is answered by whichever provider the split picks, translated
    when it speaks the other API."""
    key = CHECKOUT["authorization"].removeprefix("Bearer ")
    gpt_app = openai.OpenAI(base_url=f"http://{address}:8080/v1", api_key=key, max_retries=0)
    claude_app = anthropic.Anthropic(base_url=f"http://{address}:8080", api_key=key, max_retries=0)
    question = [{"role": "user", "content": "Who are you?"}]
    print("\n# Model 'assistant' (Anthropic and OpenAI, half each), called with both SDKs.")
    print("# The openai SDK (Chat Completions):")
    for _ in range(6):
        reply = gpt_app.chat.completions.create(model="assistant", messages=question)  # type: ignore[arg-type]
        print(f"  {reply.choices[0].message.content}")
    print("# The anthropic SDK (Messages), streamed:")
    for _ in range(6):
        with claude_app.messages.stream(
            model="assistant",
            max_tokens=64,
            messages=question,  # type: ignore[arg-type]
        ) as stream:
            print(f"  {''.join(stream.text_stream)}")


def _curl(url: str, headers: dict[str, str]) -> None:
    shown = "".join(f" -H '{k}: {v}'" for k, v in headers.items())
    print(f'$ curl -s {url}{shown} -d \'{{"model": "demo-chat", "messages": [...]}}\'')
    reply = subprocess.run(
        ["curl", "-s", "-w", "\n(HTTP %{http_code})", url, "-H", "content-type: application/json",
         *(f"-H{k}: {v}" for k, v in headers.items()), "-d", json.dumps(chat("demo-chat"))],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(reply.stdout.strip()[-400:])


def _describe(outcome: Outcome, names: dict[int, str]) -> str:
    shares = " ".join(
        f"{names[port]}={share:.1%}" for port, share in sorted(outcome.shares().items())
    )
    return f"observed split {shares}; failed requests: {outcome.failed}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--down", action="store_true", help="stop a demo left running")
    args = parser.parse_args()
    if args.down:
        localcluster.stop(STATE)
        print("demo stopped")
        return 0

    print("starting the local cluster: control plane, node, cluster DNS")
    cluster = localcluster.start(STATE, node=True)
    print(f"cluster up; export KUBECONFIG={cluster.kubeconfig}")
    kubectl = Kubectl(cluster.kubeconfig)
    keep = False
    try:
        kubectl.show("a real node runs the Pods", "get", "nodes", "-o", "wide")
        install(kubectl)
        demo(kubectl)
        traffic(kubectl)
        keep = args.keep
    finally:
        if keep:
            print(
                f"\nleft running: export KUBECONFIG={cluster.kubeconfig}; `make demo-down` stops it"
            )
        else:
            localcluster.stop(STATE)
            print("\ndemo stopped (`make demo KEEP=1` leaves it running)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
