"""The Helm chart: linted, rendered, dry-run and installed on the real API server, and its
RBAC proven by running the operator with nothing but its ServiceAccount's token."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests_support.backends import openai_backend
from tests_support.cluster import Cluster, condition
from tests_support.helm import CHART, helm
from tests_support.scenario import API_VERSION

pytestmark = pytest.mark.integration

ALL_ON = CHART / "ci" / "all-on-values.yaml"


def rendered(release: str, namespace: str, *values: Path, sets: tuple[str, ...] = ()) -> str:
    flags = [arg for path in values for arg in ("-f", str(path))]
    flags += [arg for value in sets for arg in ("--set", value)]
    return helm("template", release, str(CHART), "-n", namespace, *flags).stdout


def kinds(manifests: str) -> set[str]:
    return {doc["kind"] for doc in yaml.safe_load_all(manifests) if doc}


def test_lint_and_render_with_default_and_all_on_values() -> None:
    helm("lint", str(CHART), "--strict")
    helm("lint", str(CHART), "--strict", "-f", str(ALL_ON))
    base = {
        "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding",
        "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy",
        "ConfigMap", "Secret",  # the rate limit service's config, and Redis' password
    }  # fmt: skip
    assert kinds(rendered("sy", "switchyard-system")) == base
    assert kinds(rendered("sy", "switchyard-system", ALL_ON)) == base | {
        "ServiceMonitor", "PodMonitor", "PrometheusRule",
    }  # fmt: skip


def test_rate_limits_run_a_service_and_redis_that_only_the_gateways_and_operator_reach() -> None:
    docs = [d for d in yaml.safe_load_all(rendered("sy", "switchyard-system")) if d]
    named = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    operator = named[("Deployment", "sy-switchyard")]["spec"]["template"]["spec"]
    args = operator["containers"][0]["args"]
    assert "--rate-limit-service=sy-switchyard-ratelimit.switchyard-system.svc:8081" in args
    assert "--rate-limit-redis=sy-switchyard-redis.switchyard-system.svc:6379" in args
    for name in ("sy-switchyard-ratelimit", "sy-switchyard-redis"):
        pod = named[("Deployment", name)]["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
        # Their Pods are not the operator's: its Service and policies must not select them.
        labels = named[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] != "switchyard"
    ratelimit = named[("NetworkPolicy", "sy-switchyard-ratelimit")]["spec"]["ingress"]
    assert ratelimit[0]["from"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "switchyard-envoy"
    }
    redis = named[("NetworkPolicy", "sy-switchyard-redis")]["spec"]["ingress"][0]["from"]
    assert [peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] for peer in redis] == [
        "switchyard-ratelimit", "switchyard",
    ]  # fmt: skip
    # Redis' password: from its Secret, never on a command line.
    redis_pod = named[("Deployment", "sy-switchyard-redis")]["spec"]["template"]["spec"]
    assert "/etc/redis/redis.conf" in redis_pod["containers"][0]["args"]
    password = named[("Secret", "sy-switchyard-redis")]["stringData"]["password"]
    assert len(password) == 32
    assert password not in json.dumps([d for d in docs if d["kind"] != "Secret"])
    # Off: neither runs, and the operator is told of no service (it refuses limited clients).
    without = rendered("sy", "switchyard-system", sets=("rateLimits.enabled=false",))
    off = [d for d in yaml.safe_load_all(without) if d]
    assert not [
        d for d in off if "ratelimit" in d["metadata"]["name"] or "redis" in d["metadata"]["name"]
    ]
    assert not [
        a
        for d in off
        if d["kind"] == "Deployment"
        for a in d["spec"]["template"]["spec"]["containers"][0]["args"]
        if "rate-limit" in a
    ]


def test_the_values_schema_names_the_wrong_value() -> None:
    unknown = helm("template", "sy", str(CHART), "--set", "replicas=3", check=False)
    assert unknown.returncode != 0
    assert "additional properties 'replicas' not allowed" in unknown.stderr
    wrong = helm("template", "sy", str(CHART), "--set", "metrics.port=high", check=False)
    assert wrong.returncode != 0
    assert "/metrics/port" in wrong.stderr


def test_workload_identity_grants_service_account_reads_and_tokens_only_when_asked() -> None:
    def gateway_rules(*sets: str) -> list[dict[str, Any]]:
        documents = yaml.safe_load_all(rendered("sy", "switchyard-system", sets=sets))
        [role] = [
            d for d in documents
            if d and d["kind"] == "Role" and d["metadata"]["name"] == "sy-switchyard-gateway"
        ]  # fmt: skip
        return list(role["rules"])

    token = {"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}
    read = {"apiGroups": [""], "resources": ["serviceaccounts"], "verbs": ["get"]}
    assert token not in gateway_rules()
    assert read not in gateway_rules()
    granted = gateway_rules("workloadIdentity.aws=true")
    assert token in granted
    assert read in granted
    google = gateway_rules("workloadIdentity.gcp=true")  # the annotation only, no tokens
    assert read in google
    assert token not in google
    documents = rendered("sy", "switchyard-system", sets=("workloadIdentity.aws=true",))
    [deployment] = [
        d for d in yaml.safe_load_all(documents)
        if d and d["kind"] == "Deployment" and d["metadata"]["name"] == "sy-switchyard"
    ]  # fmt: skip
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert {"name": "AWS_REGION", "value": "us-east-1"} in container["env"]


def test_the_rbac_has_no_wildcards() -> None:
    for doc in yaml.safe_load_all(rendered("sy", "switchyard-system", ALL_ON)):
        if doc and doc["kind"] == "ClusterRole":
            for rule in doc["rules"]:
                named = ("verbs", "resources", "apiGroups", "nonResourceURLs")
                assert not [v for key in named for v in rule.get(key, []) if "*" in v], rule


@pytest.fixture
def release(cluster: Cluster) -> Iterator[tuple[str, str]]:
    name = f"sy-{uuid.uuid4().hex[:6]}"
    namespace = f"{name}-system"
    cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    try:
        yield name, namespace
    finally:
        helm("uninstall", name, "-n", namespace, "--kubeconfig", cluster.kubeconfig, check=False)
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


def install_monitoring_crds(cluster: Cluster) -> None:
    """The Prometheus Operator's kinds, as schemaless CRDs: enough for the API server to
    accept the chart's optional objects."""
    for kind, plural in (
        ("ServiceMonitor", "servicemonitors"),
        ("PodMonitor", "podmonitors"),
        ("PrometheusRule", "prometheusrules"),
    ):
        cluster.apply(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{plural}.monitoring.coreos.com"},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "names": {"kind": kind, "plural": plural},
                    "scope": "Namespaced",
                    "versions": [{
                        "name": "v1", "served": True, "storage": True,
                        "schema": {"openAPIV3Schema": {
                            "type": "object", "x-kubernetes-preserve-unknown-fields": True,
                        }},
                    }],
                },
            }
        )  # fmt: skip
    for plural in ("servicemonitors", "podmonitors", "prometheusrules"):
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            f"crd/{plural}.monitoring.coreos.com",
        )  # fmt: skip


def test_dry_run_then_install(cluster: Cluster, release: tuple[str, str]) -> None:
    name, namespace = release
    install_monitoring_crds(cluster)
    # ALL_ON's namespaces, under names of this test's own: Roles go in each, so they exist.
    watched, gateways = [f"{name}-team", f"{name}-gw"], [f"{name}-gw"]
    sets = (f"watchNamespaces={{{','.join(watched)}}}", f"gatewayNamespaces={{{gateways[0]}}}")
    cluster.apply(
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}} for n in watched)
    )
    try:
        for values in ((), (ALL_ON,)):
            manifests = rendered(name, namespace, *values, sets=sets if values else ())
            cluster.kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests)
        helm(
            "install", name, str(CHART), "-n", namespace, "--kubeconfig", cluster.kubeconfig,
            "-f", str(ALL_ON), *(arg for value in sets for arg in ("--set", value)),
        )  # fmt: skip
    finally:
        for other in watched:
            cluster.kubectl("delete", "namespace", other, "--wait=false", "--ignore-not-found")
    fullname = f"{name}-switchyard"
    deployment = cluster.get("deployments", fullname, namespace)
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["containers"][0]["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert cluster.get("servicemonitors", fullname, namespace) is not None


def token_kubeconfig(cluster: Cluster, namespace: str, account: str, path: Path) -> str:
    """A kubeconfig that authenticates with nothing but the ServiceAccount's token."""
    config = json.loads(cluster.kubectl("config", "view", "--raw", "-o", "json"))
    server = config["clusters"][0]["cluster"]
    token = cluster.kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "sa",
        "clusters": [{"name": "c", "cluster": server}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
    }))  # fmt: skip
    return str(path)


# --- RBAC, proven rule by rule -------------------------------------------------------------
#
# The operator runs as a process (`switchyard run` with the chart's own arguments) with a
# kubeconfig that holds nothing but a token of the chart's ServiceAccount (TokenRequest API).
# With the chart's rules it brings a gateway and an endpoint to Ready and is refused nothing;
# with any one (resource, verb) taken out of them, it reports that very refusal.

# Every (role, API group, resource, verb) the chart grants with default values; the chart's
# rendered rules must be exactly these, so each grant is proven needed by its own run below.
# Roles: "cluster" is the ClusterRole, "gateway" the Role in each of gatewayNamespaces,
# "leader-election" the Role in the release's namespace.
NEEDED = [
    *(("cluster", "apiextensions.k8s.io", "customresourcedefinitions", v)
      for v in ("list", "watch")),
    *(("cluster", "", "namespaces", v) for v in ("list", "watch")),
    *(("cluster", "switchyard.dev", r, v)
      for r in ("modelclients", "modelendpoints", "modelgateways") for v in ("list", "watch")),
    *(("cluster", "switchyard.dev", f"{r}/status", "patch")
      for r in ("modelclients", "modelendpoints", "modelgateways")),
    *(("cluster", "", "secrets", v) for v in ("get", "list", "watch")),
    *(("cluster", g, r, v)
      for g, r in (("", "configmaps"), ("", "services"), ("apps", "deployments"),
                   ("policy", "poddisruptionbudgets"), ("networking.k8s.io", "networkpolicies"))
      for v in ("list", "watch")),
    ("cluster", "", "events", "create"),
    *(("gateway", "", "secrets", v) for v in ("create", "update")),
    *(("gateway", "", "configmaps", v) for v in ("get", "create", "update")),
    *(("gateway", g, r, v)
      for g, r in (("", "services"), ("apps", "deployments"), ("policy", "poddisruptionbudgets"),
                   ("networking.k8s.io", "networkpolicies"))
      for v in ("get", "create", "patch")),
    *(("gateway", "", "pods", v) for v in ("list", "patch")),
    ("gateway", "switchyard.dev", "modelgateways/finalizers", "update"),
    *(("leader-election", "coordination.k8s.io", "leases", v)
      for v in ("get", "create", "update")),
    # The control channel's CA, in the operator's namespace: created, and updated to rotate.
    *(("leader-election", "", "secrets", v) for v in ("create", "update")),
]  # fmt: skip
# The writes the gateway Role grants, which no other namespace may see.
WRITES = [(g, r, v) for role, g, r, v in NEEDED if role == "gateway"]
REFUSAL_TIMEOUT = 30.0
READY_TIMEOUT = 45.0


def _forbidden_text(resource: str, verb: str) -> str:
    """How the API server words the refusal (backslashes taken out of the log first)."""
    if resource == "modelgateways/finalizers":
        # OwnerReferencesPermissionEnforcement, on an owned object's blockOwnerDeletion.
        return "cannot set blockOwnerDeletion"
    return f'cannot {verb} resource "{resource}"'


@dataclasses.dataclass
class RbacRelease:
    """The chart installed with one gateway namespace, and its rendered Roles."""

    cluster: Cluster
    name: str
    namespace: str
    gateway_namespace: str
    app_namespace: str
    roles: dict[str, dict[str, Any]]
    args: list[str]

    @property
    def fullname(self) -> str:
        return f"{self.name}-switchyard"

    @property
    def account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.fullname}"

    def can(self, verb: str, group: str, resource: str, namespace: str) -> bool:
        """A SubjectAccessReview for the ServiceAccount (kubectl auth can-i --as)."""
        base, _, sub = resource.partition("/")
        what = [f"{base}.{group}" if group else base, *([f"--subresource={sub}"] if sub else [])]
        answer = self.cluster.kubectl(
            "auth", "can-i", verb, *what, "-n", namespace, f"--as={self.account}", check=False
        )
        return answer.strip() == "yes"

    def run(
        self,
        workdir: Path,
        gateway: str,
        expect: str | None,
        until: Callable[[], bool] | None = None,
        keep: bool = False,
    ) -> tuple[str, str]:
        """Run the operator as the ServiceAccount over a new gateway (created first, so its
        objects are created, then updated when the endpoint attaches) and endpoint. Returns
        ("refused", log) as soon as the log shows `expect` (or `until` holds), ("ready",
        log) once both are Ready with neither given, and ("timeout", log) otherwise. The
        gateway and endpoint are deleted after, unless `keep`."""
        cluster, gw, app = self.cluster, self.gateway_namespace, self.app_namespace
        cluster.kubectl("delete", "lease", "switchyard-leader", "-n", self.namespace,
                        "--ignore-not-found")  # fmt: skip
        # A Pod of the gateway, never scheduled: what the operator annotates after a key changes.
        cluster.apply({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{gateway}-pod", "namespace": gw,
                         "labels": {"app.kubernetes.io/name": "switchyard-envoy",
                                    "switchyard.dev/gateway": gateway}},
            "spec": {"containers": [{"name": "envoy", "image": "envoy.invalid/none"}]},
        })  # fmt: skip
        logfile = workdir / f"{gateway}.log"
        env = {
            # Only the chart's settings: none that another test's operator left behind.
            **{k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")},
            "KUBECONFIG": token_kubeconfig(cluster, self.namespace, self.fullname,
                                           workdir / f"{gateway}.kubeconfig"),
            "POD_NAMESPACE": self.namespace, "POD_NAME": f"{gateway}-0",
            "PYTHONPATH": os.pathsep.join([str(OPERATOR_SOURCE), os.environ.get("PYTHONPATH", "")]),
        }  # fmt: skip
        with logfile.open("w") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "switchyard.cli", *self.args, "--verbose"],
                stdout=out, stderr=subprocess.STDOUT, env=env,
            )  # fmt: skip
        try:
            return self._watch(process, logfile, gateway, expect, until)
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if not keep:
                cluster.kubectl("delete", "modelendpoints,modelclients", gateway, "-n", app,
                                "--wait=false", "--ignore-not-found")  # fmt: skip
                cluster.kubectl("delete", "modelgateways,pods", gateway, f"{gateway}-pod",
                                "-n", gw, "--wait=false", "--ignore-not-found")  # fmt: skip

    def _watch(
        self,
        process: subprocess.Popen[bytes],
        logfile: Path,
        gateway: str,
        expect: str | None,
        until: Callable[[], bool] | None,
    ) -> tuple[str, str]:
        cluster, gw, app = self.cluster, self.gateway_namespace, self.app_namespace
        log = ""

        def refused() -> bool:
            nonlocal log
            log = logfile.read_text().replace("\\", "")
            return (expect is not None and expect in log) or (until is not None and until())

        def ready(kind: str, namespace: str) -> bool:
            found = condition(cluster.get(kind, gateway, namespace), "Ready")
            return bool(found and found["status"] == "True")

        cluster.apply({
            "apiVersion": API_VERSION, "kind": "ModelGateway",
            "metadata": {"name": gateway, "namespace": gw},
            "spec": {"allowedEndpoints": {"namespaces": {"from": "All"}}},
        })  # fmt: skip
        refusing = expect is not None or until is not None
        started = time.monotonic()
        deadline = started + (REFUSAL_TIMEOUT if refusing else READY_TIMEOUT)
        endpoint_applied = False
        while time.monotonic() < deadline:
            if refused():
                return "refused", log
            if process.poll() is not None:
                return "exited", log
            if not endpoint_applied:
                # Once the gateway's first pass is done (its status is written after its
                # objects), or after a few seconds if its status cannot be written.
                body = cluster.get("modelgateways", gateway, gw) or {}
                if (body.get("status") or {}).get("conditions") or (time.monotonic() > started + 8):
                    cluster.apply({
                        "apiVersion": API_VERSION, "kind": "ModelEndpoint",
                        "metadata": {"name": gateway, "namespace": app},
                        "spec": {"gatewayRef": {"name": gateway, "namespace": gw},
                                 "model": gateway, "backends": [openai_backend("oai", "keys")]},
                    }, {
                        "apiVersion": API_VERSION, "kind": "ModelClient",
                        "metadata": {"name": gateway, "namespace": app},
                        "spec": {"gatewayRef": {"name": gateway, "namespace": gw},
                                 "serviceAccounts": ["app"]},
                    })  # fmt: skip
                    endpoint_applied = True
            elif (
                not refusing
                and ready("modelendpoints", app)
                and ready("modelgateways", gw)
                and ready("modelclients", app)
            ):
                # Past a lease renewal, so that every verb the operator uses has been used.
                time.sleep(4)
                refused()
                return "ready", log
            time.sleep(0.3)
        refused()
        return "timeout", log

    def without(self, role: str, group: str, resource: str, verb: str) -> dict[str, Any]:
        """The role's document with one verb of one resource taken out."""
        reduced = copy.deepcopy(self.roles[role])
        rules: list[dict[str, Any]] = []
        for rule in reduced["rules"]:
            if (
                group in rule["apiGroups"]
                and resource in rule["resources"]
                and verb in rule["verbs"]
            ):
                others = [r for r in rule["resources"] if r != resource]
                if others:
                    rules.append({**rule, "resources": others})
                if len(rule["verbs"]) > 1:
                    rules.append({**rule, "resources": [resource],
                                  "verbs": [v for v in rule["verbs"] if v != verb]})  # fmt: skip
            else:
                rules.append(rule)
        reduced["rules"] = rules
        return reduced

    def replace(self, document: dict[str, Any]) -> None:
        self.cluster.kubectl("replace", "-f", "-", stdin=yaml.safe_dump(document))


OPERATOR_SOURCE = Path(__file__).resolve().parents[2] / "operator"


def _role_key(document: dict[str, Any], fullname: str) -> str | None:
    name = document["metadata"]["name"]
    if document["kind"] == "ClusterRole" and name == fullname:
        return "cluster"
    if document["kind"] == "Role" and name.startswith(f"{fullname}-"):
        return str(name[len(fullname) + 1 :])
    return None


@pytest.fixture(scope="module")
def rbac_release(cluster: Cluster) -> Iterator[RbacRelease]:
    name = f"sy-{uuid.uuid4().hex[:6]}"
    namespace, gw, app = f"{name}-system", f"{name}-gw", f"{name}-app"
    cluster.apply(
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}
          for n in (namespace, gw, app)),
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys", "namespace": app},
         "stringData": {"api-key": f"sk-test-{uuid.uuid4().hex}"}},
    )  # fmt: skip
    sets = (f"gatewayNamespaces={{{gw}}}",)
    try:
        helm("install", name, str(CHART), "-n", namespace, "--kubeconfig", cluster.kubeconfig,
             "--set", sets[0])  # fmt: skip
        documents = [d for d in yaml.safe_load_all(rendered(name, namespace, sets=sets)) if d]
        fullname = f"{name}-switchyard"
        roles = {
            key: d for d in documents if (key := _role_key(d, fullname)) is not None
        }  # fmt: skip
        [deployment] = [
            d for d in documents
            if d["kind"] == "Deployment" and d["metadata"]["name"] == fullname
        ]  # fmt: skip
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        # The chart's arguments, listening on free loopback ports instead.
        args = [
            "run" if a == "run" else
            "--xds-address=127.0.0.1:0" if a.startswith("--xds-address=") else
            "--metrics-port=0" if a.startswith("--metrics-port=") else a
            for a in container["args"]
        ]  # fmt: skip
        yield RbacRelease(cluster, name, namespace, gw, app, roles, args)
    finally:
        helm("uninstall", name, "-n", namespace, "--kubeconfig", cluster.kubeconfig, check=False)
        for n in (namespace, gw, app):
            cluster.kubectl("delete", "namespace", n, "--wait=false", "--ignore-not-found")


def test_the_chart_grants_exactly_the_rules_proven_needed(rbac_release: RbacRelease) -> None:
    granted = {
        (role, group, resource, verb)
        for role, document in rbac_release.roles.items()
        for rule in document["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == set(NEEDED)
    assert "--gateway-network-policy" in rbac_release.args


def test_the_operator_runs_with_only_the_charts_service_account(
    rbac_release: RbacRelease, tmp_path: Path
) -> None:
    release = rbac_release
    outcome, log = release.run(tmp_path, "full", expect=None, keep=True)
    assert outcome == "ready", log[-3000:]
    refused = [line for line in log.splitlines() if "forbidden" in line.lower()]
    assert not refused, f"the operator needed a permission the chart lacks: {refused[:3]}"
    secret = release.cluster.get("secrets", "keys", release.app_namespace)
    assert secret is not None
    assert base64.b64decode(secret["data"]["api-key"]).decode() not in log
    gw = release.gateway_namespace
    policy = release.cluster.get("networkpolicies", "full-switchyard-envoy", gw)
    assert policy is not None
    [_, xds, _, ratelimit] = policy["spec"]["egress"]
    assert xds["to"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": release.namespace
    }
    # The chart's rate limit service, on its gRPC port.
    assert ratelimit == {"ports": [{"port": 8081, "protocol": "TCP"}]}
    pod = release.cluster.get("pods", "full-pod", gw)
    assert pod is not None
    assert "switchyard.dev/credentials-version" in pod["metadata"]["annotations"]


def test_writes_are_denied_outside_the_gateway_namespaces(rbac_release: RbacRelease) -> None:
    release = rbac_release
    for group, resource, verb in WRITES:
        assert release.can(verb, group, resource, release.gateway_namespace), (verb, resource)
        for namespace in (release.app_namespace, release.namespace, "default", "kube-system"):
            if (resource, verb, namespace) == ("secrets", "create", release.namespace):
                continue  # the control channel's CA, in the operator's own namespace
            assert not release.can(verb, group, resource, namespace), (verb, resource, namespace)
    # And the Secrets of endpoints are read, never written, outside them.
    for verb in ("create", "update", "patch", "delete"):
        assert not release.can(verb, "", "secrets", release.app_namespace)


def test_a_gateway_where_the_operator_may_not_write_is_told_so(
    rbac_release: RbacRelease, tmp_path: Path
) -> None:
    release = rbac_release
    app = release.app_namespace

    seen: list[dict[str, Any]] = []

    def told_and_retried() -> bool:
        # Told, and then retried a few times: backing off, not looping hot.
        found = condition(release.cluster.get("modelgateways", "elsewhere", app), "Ready")
        if found and found["reason"] == "Forbidden":
            seen[:] = [found]
        log = (tmp_path / "elsewhere.log").read_text()
        return bool(seen) and log.count("pass over ModelGateway") >= 3

    elsewhere = dataclasses.replace(release, gateway_namespace=app)
    started = time.monotonic()
    outcome, log = elsewhere.run(tmp_path, "elsewhere", expect=None, until=told_and_retried)
    took = time.monotonic() - started
    assert outcome == "refused", log[-3000:]
    # Retries back off (0.5 s, 1 s, 2 s, ... up to 30 s).
    assert log.count("pass over ModelGateway") <= 2 + took, log[-3000:]
    [found] = seen
    assert found["status"] == "False"
    assert f"namespace {app}" in found["message"]
    assert "gatewayNamespaces" in found["message"]
    warnings = [e for e in release.cluster.list("events", app)
                if e["type"] == "Warning" and e["reason"] == "Forbidden"]  # fmt: skip
    assert warnings
    assert f"namespace {app}" in warnings[0]["message"]


@pytest.mark.parametrize(
    ("role", "group", "resource", "verb"),
    NEEDED,
    ids=[f"{role}-{resource.replace('/', '.')}-{verb}" for role, _, resource, verb in NEEDED],
)
def test_each_granted_verb_is_needed(
    rbac_release: RbacRelease, tmp_path: Path, role: str, group: str, resource: str, verb: str
) -> None:
    release = rbac_release
    full = release.roles[role]
    if (role, resource, verb) == ("leader-election", "secrets", "create"):
        # No CA yet: the operator must create it.
        release.cluster.kubectl("delete", "secret", "switchyard-ca", "-n", release.namespace,
                                "--ignore-not-found")  # fmt: skip
    if (role, resource, verb) == ("leader-election", "secrets", "update"):
        # A CA Secret that holds no usable CA: the operator must replace it in place.
        release.cluster.kubectl("delete", "secret", "switchyard-ca", "-n", release.namespace,
                                "--ignore-not-found")  # fmt: skip
        release.cluster.apply({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "switchyard-ca",
                                            "namespace": release.namespace}})  # fmt: skip
    release.replace(release.without(role, group, resource, verb))
    try:
        gateway = f"r-{uuid.uuid4().hex[:6]}"
        started = time.monotonic()
        outcome, log = release.run(tmp_path, gateway, expect=_forbidden_text(resource, verb))
        took = time.monotonic() - started
    finally:
        release.replace(full)
    assert outcome == "refused", (
        f"without {verb} on {resource} the operator reported no refusal within {took:.0f}s "
        f"({outcome}): {log[-2000:]}"
    )
