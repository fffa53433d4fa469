"""Real Pods on the local node: the operator from its image, installed by Helm, feeding the
Envoy Pods it runs over xDS through its Service; clients through the gateway's Service.

The tests run in file order and share one install: later ones roll, kill and finally
uninstall what the earlier ones set up.
"""

from __future__ import annotations

import base64
import json
import re
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import AuthenticationError, OpenAI, RateLimitError

from tests_support.cluster import Cluster, condition, eventually
from tests_support.helm import CHART, helm
from tests_support.scenario import API_VERSION, without_probe_times

from .conftest import (
    APP_NAMESPACE,
    ENVOY_DEPLOYMENT,
    GATEWAY,
    GATEWAY_NAMESPACE,
    MODEL,
    OPERATOR_NAMESPACE,
    RELEASE,
    SPLIT,
    Gateway,
    Load,
    PodImages,
    install_values,
)

pytestmark = [pytest.mark.integration, pytest.mark.pods]

ROOT = Path(__file__).resolve().parents[2]


def operator_pods(cluster: Cluster) -> list[dict]:  # type: ignore[type-arg]
    return [
        pod
        for pod in cluster.list("pods", OPERATOR_NAMESPACE)
        if pod["metadata"]["labels"].get("app.kubernetes.io/name") == "switchyard"
        and not pod["metadata"].get("deletionTimestamp")
    ]


def ready(pod: dict) -> bool:  # type: ignore[type-arg]
    return bool((c := condition(pod, "Ready")) and c["status"] == "True")


def leader(cluster: Cluster) -> str:
    lease = cluster.get("leases", "switchyard-leader", OPERATOR_NAMESPACE) or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def test_the_operator_runs_from_its_image_under_its_service_account(
    cluster: Cluster, operator_release: str, pod_images: PodImages
) -> None:
    pods = operator_pods(cluster)
    assert len(pods) == 2, "the chart runs two replicas"
    for pod in pods:
        assert ready(pod), "every replica is Ready once /healthz answers: both serve xDS"
        spec = pod["spec"]
        assert spec["serviceAccountName"] == RELEASE
        [container] = spec["containers"]
        assert container["image"] == pod_images.operator
        assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    eventually(lambda: leader(cluster) in {p["metadata"]["name"] for p in pods}, timeout=30)


def test_the_examples_run_as_envoy_pods_fed_over_the_operators_service(
    cluster: Cluster, operator_release: str
) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "examples"))
    try:
        cluster.rollout("shared-switchyard-envoy", "ai-gateway")
        eventually(
            lambda: (
                (c := condition(cluster.get("modelgateways", "shared", "ai-gateway"), "Programmed"))
                and c["status"] == "True"
            ),
            timeout=60,
        )
        gateway = cluster.get("modelgateways", "shared", "ai-gateway")
        assert gateway is not None
        assert gateway["status"]["attachedEndpoints"] == 2
        pods = [
            pod for pod in cluster.list("pods", "ai-gateway")
            if pod["metadata"]["labels"].get("switchyard.dev/gateway") == "shared"
        ]  # fmt: skip
        assert len(pods) == 2
        assert all(ready(pod) for pod in pods)
    finally:
        # All but the namespaces: the chart's Roles live there until it is uninstalled.
        documents = [
            d for path in sorted((ROOT / "examples").glob("*.yaml"))
            for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] != "Namespace"
        ]  # fmt: skip
        cluster.kubectl("delete", "-f", "-", "--wait=false", stdin=yaml.safe_dump_all(documents))


def test_the_split_holds_through_the_gateway_service(gateway: Gateway) -> None:
    client = gateway.client()
    served = Counter(gateway.ask(client) for _ in range(600))
    assert sum(served.values()) == 600
    for name, (_, _, weight) in SPLIT.items():
        assert abs(served[name] / 600 - weight / 100) < 0.07, served


def test_the_envoy_pods_count_requests_per_client_on_their_metrics_port(
    gateway: Gateway,
) -> None:
    """Prometheus reads each gateway Pod's stats on the port named "metrics": requests by
    ModelClient, model and status. Nothing else of Envoy's admin API is there."""
    client = gateway.client()
    for _ in range(20):
        gateway.ask(client)
    stranger = OpenAI(base_url=gateway.base_url, api_key="sk-stranger", max_retries=0)
    with pytest.raises(AuthenticationError):
        stranger.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    counted: Counter[tuple[str, str]] = Counter()
    for pod in gateway.envoy_pods():
        [port] = [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]
                  if p["name"] == "metrics"]  # fmt: skip
        base = f"http://{pod['status']['podIP']}:{port}"
        with urllib.request.urlopen(f"{base}/stats/prometheus", timeout=10) as reply:
            text = reply.read().decode()
        for line in text.splitlines():
            if line.startswith("envoy_switchyard_client_requests{"):
                labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
                counted[(labels["client"], labels["code"])] += int(float(line.rsplit(" ", 1)[1]))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/config_dump", timeout=10)
        assert refused.value.code == 404
    assert counted[(f"{APP_NAMESPACE}/lab", "200")] >= 20, counted
    assert counted[("", "401")] >= 1, counted  # a stranger is no client


# An app in the cluster: it reads its projected ServiceAccount token and calls the gateway
# with it, as an SDK would with a key; it prints the status it got.
APP_SCRIPT = """
import json, sys, urllib.error, urllib.request
token = open("/var/run/secrets/switchyard/token").read().strip()
body = {"model": sys.argv[2], "messages": [{"role": "user", "content": "hi"}]}
request = urllib.request.Request(
    sys.argv[1], data=json.dumps(body).encode(),
    headers={"content-type": "application/json", "authorization": "Bearer " + token},
)
try:
    print(urllib.request.urlopen(request, timeout=20).status)
except urllib.error.HTTPError as error:
    print(error.code)
"""


def test_an_app_in_the_cluster_calls_with_its_service_account_token_and_no_key(
    cluster: Cluster, gateway: Gateway, pod_images: PodImages
) -> None:
    def app_pod(name: str, account: str, audience: str) -> dict[str, Any]:
        token = {"audience": audience, "expirationSeconds": 600, "path": "token"}
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": APP_NAMESPACE},
            "spec": {
                "serviceAccountName": account, "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [{
                    "name": "app", "image": pod_images.operator, "command": ["python3", "-c"],
                    "args": [APP_SCRIPT, f"{gateway.base_url}/chat/completions", MODEL],
                    "volumeMounts": [{"name": "token", "mountPath": "/var/run/secrets/switchyard"}],
                }],
                "volumes": [{"name": "token",
                             "projected": {"sources": [{"serviceAccountToken": token}]}}],
            },
        }  # fmt: skip

    def status_of(name: str) -> str:
        def finished() -> dict[str, Any] | None:
            pod = cluster.get("pods", name, APP_NAMESPACE)
            phase = (pod or {}).get("status", {}).get("phase")
            return pod if phase in ("Succeeded", "Failed") else None

        eventually(finished, timeout=90)
        return cluster.kubectl("logs", name, "-n", APP_NAMESPACE).strip()

    cluster.apply(
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "checkout", "namespace": APP_NAMESPACE}},
        {"apiVersion": API_VERSION, "kind": "ModelClient",
         "metadata": {"name": "checkout", "namespace": APP_NAMESPACE},
         "spec": {"gatewayRef": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
                  "serviceAccounts": ["checkout"]}},
    )  # fmt: skip
    eventually(
        lambda: condition(cluster.get("modelclients", "checkout", APP_NAMESPACE), "Ready"),
        timeout=30,
    )
    try:
        cluster.apply(app_pod("app-right", "checkout", "switchyard"))
        cluster.apply(app_pod("app-for-kubernetes", "checkout", "https://kubernetes.default"))
        assert status_of("app-right") == "200"
        assert status_of("app-for-kubernetes") == "401"
    finally:
        cluster.kubectl("delete", "pods", "app-right", "app-for-kubernetes", "-n", APP_NAMESPACE,
                        "--wait=false", "--ignore-not-found")  # fmt: skip
        cluster.kubectl("delete", "modelclients,serviceaccounts", "checkout", "-n",
                        APP_NAMESPACE, "--ignore-not-found")  # fmt: skip


def test_a_client_limit_holds_across_the_envoy_pods_and_shows_in_its_status(
    cluster: Cluster, gateway: Gateway
) -> None:
    """The chart's rate limit service and Redis, as Pods: both Envoy Pods (behind the
    gateway's Service) share the client's count, and the operator reads it into status."""
    key = "sk-pods-limited-0c5e"
    cluster.apply(
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": "limited-key", "namespace": APP_NAMESPACE},
         "stringData": {"api-key": key}},
        {"apiVersion": API_VERSION, "kind": "ModelClient",
         "metadata": {"name": "limited", "namespace": APP_NAMESPACE},
         "spec": {"gatewayRef": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
                  "apiKeyRef": {"name": "limited-key", "key": "api-key"},
                  "limits": {"requestsPerMinute": 6}}},
    )  # fmt: skip
    client = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)

    def known() -> bool:
        try:
            return bool(client.models.list().data)
        except AuthenticationError:
            return False

    try:
        eventually(known, timeout=60)
        # A fresh minute: the service counts in calendar minutes.
        if (left := 60 - time.time() % 60) < 25:
            time.sleep(left + 0.5)
        statuses: Counter[int] = Counter()
        refusals: list[RateLimitError] = []
        for _ in range(12):
            # A client (and so a connection) each: the Service spreads them over the Pods.
            each = OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)
            try:
                gateway.ask(each)
                statuses[200] += 1
            except RateLimitError as refused:
                statuses[429] += 1
                refusals.append(refused)
        assert statuses == {200: 6, 429: 6}, statuses
        assert {r.response.headers["x-ratelimit-limit-requests"] for r in refusals} == {"6"}

        def shown() -> dict[str, Any] | None:
            body = cluster.get("modelclients", "limited", APP_NAMESPACE) or {}
            use = (body.get("status") or {}).get("currentMinute") or {}
            return use if use.get("requests", 0) >= 12 else None

        use = eventually(shown, timeout=40, interval=1)
        assert set(use) == {"start", "requests"}
    finally:
        cluster.kubectl("delete", "modelclients,secrets", "limited", "limited-key", "-n",
                        APP_NAMESPACE, "--ignore-not-found")  # fmt: skip


def test_failover_through_the_pods_costs_no_request(gateway: Gateway) -> None:
    gateway.fakes["azure"].fault(refuse=True)
    try:
        with Load(gateway) as load:
            time.sleep(8)
        assert load.total > 100
        assert not load.failures, load.failures[:3]
        # Once ejected, it gets nothing; the others carry its share.
        assert load.served["openai"]
        assert load.served["anthropic"]
    finally:
        gateway.fakes["azure"].heal()
    eventually(lambda: Counter(gateway.ask(gateway.client()) for _ in range(100))["azure"] > 0,
               timeout=60)  # fmt: skip


def test_a_rotated_key_reaches_envoy_through_the_secret_volume(gateway: Gateway) -> None:
    """The provider revokes the old key the moment the new one exists (the worst case):
    while Envoy still reads the old file, that backend's attempts fail over to the others."""
    cluster, fake = gateway.cluster, gateway.fakes["openai"]
    new_key = f"sk-pods-rotated-{time.time_ns()}"
    with Load(gateway) as load:
        time.sleep(1)
        rotated_at = time.monotonic()
        fake.rotate_key(new_key)
        cluster.kubectl(
            "patch", "secret", "providers", "-n", APP_NAMESPACE, "--type=merge", "-p",
            json.dumps({"data": {"openai": base64.b64encode(new_key.encode()).decode()}}),
        )  # fmt: skip
        before = load.served["openai"]
        # The kubelet's periodic sync alone takes 60-90 s to update a mounted Secret; the
        # operator asks it for an early sync, so the new key is in use within seconds.
        eventually(lambda: load.served["openai"] > before + 5, timeout=30, interval=0.5)
        delay = time.monotonic() - rotated_at
    print(f"rotated key in use after {delay:.1f} s")
    assert not load.failures, load.failures[:3]
    openai_requests = [r for r in fake.traffic() if r.get("headers", {}).get("authorization")]
    assert openai_requests[-1]["headers"]["authorization"] == f"Bearer {new_key}"


def test_deleting_and_rolling_envoy_pods_costs_no_request(gateway: Gateway) -> None:
    cluster = gateway.cluster
    with Load(gateway) as load:
        time.sleep(1)
        victim = gateway.envoy_pods()[0]["metadata"]["name"]
        cluster.kubectl("delete", "pod", victim, "-n", GATEWAY_NAMESPACE, "--wait=false")
        time.sleep(3)
        cluster.kubectl("rollout", "restart", f"deployment/{ENVOY_DEPLOYMENT}", "-n",
                        GATEWAY_NAMESPACE)  # fmt: skip
        cluster.rollout(ENVOY_DEPLOYMENT, GATEWAY_NAMESPACE)
        # The replaced Pods drain for a while after the rollout reports done.
        eventually(lambda: len(gateway.envoy_pods()) == 2, timeout=60, interval=1)
    assert load.total > 200
    assert not load.failures, f"{len(load.failures)} of {load.total}: {load.failures[:3]}"


def test_a_killed_leader_is_replaced_by_the_standby_with_envoy_serving_and_nothing_written(
    gateway: Gateway,
) -> None:
    cluster = gateway.cluster
    namespaces = (GATEWAY_NAMESPACE, APP_NAMESPACE)
    time.sleep(2)
    before = cluster.versions(namespaces)
    endpoint_before = (cluster.get("modelendpoints", "chat", APP_NAMESPACE) or {}).get("status")
    killed = leader(cluster)
    standby = {p["metadata"]["name"] for p in operator_pods(cluster)} - {killed}
    with Load(gateway) as load:
        cluster.kubectl(
            "delete", "pod", killed, "-n", OPERATOR_NAMESPACE, "--grace-period=0", "--force",
        )  # fmt: skip
        died = time.monotonic()
        eventually(lambda: leader(cluster) in standby, timeout=20, interval=0.2)
        takeover = time.monotonic() - died
        time.sleep(5)  # the new leader's passes over everything, its Envoys reconnected
        after = cluster.versions(namespaces)
        endpoint_after = (cluster.get("modelendpoints", "chat", APP_NAMESPACE) or {}).get("status")
        # The Deployment replaces the killed Pod.
        eventually(lambda: len([p for p in operator_pods(cluster) if ready(p)]) == 2,
                   timeout=120, interval=1)  # fmt: skip
    print(f"standby took over {takeover:.1f} s after the leader was killed")
    assert takeover < 15
    assert load.total > 100
    assert not load.failures, load.failures[:3]
    # Nothing written but, at most, the endpoint's regular refresh of its probe times.
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed <= {("modelendpoints", APP_NAMESPACE, "chat")}, changed
    assert without_probe_times(endpoint_after) == without_probe_times(endpoint_before)


def test_helm_upgrade_rolls_the_operator_and_uninstall_leaves_gateways_serving(
    cluster: Cluster, gateway: Gateway, pod_images: PodImages
) -> None:
    old = {p["metadata"]["uid"] for p in operator_pods(cluster)}
    with Load(gateway) as load:
        helm(
            "upgrade", RELEASE, str(CHART), "-n", OPERATOR_NAMESPACE, "--kubeconfig",
            cluster.kubeconfig, *install_values(pod_images),
            "--set", "podAnnotations.switchyard\\.test/upgraded=yes", "--wait", "--timeout", "180s",
            timeout=240,
        )  # fmt: skip
        eventually(lambda: len(operator_pods(cluster)) == 2, timeout=60, interval=1)
        for new in operator_pods(cluster):
            assert new["metadata"]["uid"] not in old
            assert new["metadata"]["annotations"]["switchyard.test/upgraded"] == "yes"
        helm("uninstall", RELEASE, "-n", OPERATOR_NAMESPACE, "--kubeconfig",
             cluster.kubeconfig, "--wait")  # fmt: skip
        eventually(lambda: not operator_pods(cluster), timeout=60, interval=1)
        time.sleep(3)
    assert not load.failures, load.failures[:3]
    # What the README promises: the CRDs, the custom resources and the gateways' own objects
    # stay, and Envoy keeps serving its last config.
    kept = cluster.kubectl("get", "crd", "-o", "name")
    assert "modelendpoints.switchyard.dev" in kept
    assert cluster.get("modelgateways", GATEWAY, GATEWAY_NAMESPACE) is not None
    assert cluster.get("deployments", ENVOY_DEPLOYMENT, GATEWAY_NAMESPACE) is not None
    roles = cluster.kubectl("get", "clusterroles", "-o", "name")
    assert f"clusterrole.rbac.authorization.k8s.io/{RELEASE}\n" not in roles
    assert gateway.serves()
