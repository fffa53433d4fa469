"""The objects a ModelGateway owns: its credentials Secret, its routing-plan ConfigMap and
its Envoy Pods' NetworkPolicy."""

from __future__ import annotations

import base64
import gzip
import hashlib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from switchyard.api.models import ModelGatewaySpec
from switchyard.plan.egress import METADATA_NETWORKS
from switchyard.plan.gateway import GatewayPlan, ObjectKey, key_material
from switchyard.render.envoy import STATS_PORT
from switchyard.render.rate_limits import RateLimitService

MANAGED_BY = "switchyard"
GATEWAY_LABEL = "switchyard.dev/gateway"
PLAN_KEY = "plan.json"
# Beyond this, the plan is stored compressed: a ConfigMap holds 1 MiB in all.
PLAN_TEXT_LIMIT = 512 * 1024
_MAX_NAME = 253
_MAX_LABEL_VALUE = 63
# What the API server accepts as a label value: empty, or alphanumeric at both ends.
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-_.A-Za-z0-9]*[A-Za-z0-9])?)?")
_LABEL_HASH_LENGTH = 12


def label_value(text: str) -> str:
    """`text` as a label value: itself when it is one, else a readable prefix of it and a
    hash of all of it, so that it is valid and two texts never share a value by sharing a
    prefix. A cut at 63 characters could end in `-` (refused), and two gateways whose names
    agree on 63 characters got one selector: each one's Service sent to both's Pods."""
    if len(text) <= _MAX_LABEL_VALUE and _LABEL_VALUE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:_LABEL_HASH_LENGTH]
    readable = re.sub(r"[^-_.A-Za-z0-9]", "-", text)
    prefix = readable[: _MAX_LABEL_VALUE - _LABEL_HASH_LENGTH - 1].strip("-_.")
    return f"{prefix}-{digest}" if prefix else digest


def owned_name(gateway: str, suffix: str) -> str:
    """`<gateway>-<suffix>`, shortened with a hash when it would pass the 253-character limit."""
    name = f"{gateway}-{suffix}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(gateway.encode()).hexdigest()[:10]
    return f"{gateway[: _MAX_NAME - len(suffix) - 12].rstrip('-.')}-{digest}-{suffix}"


def credentials_secret_name(gateway: str) -> str:
    return owned_name(gateway, "switchyard-credentials")


def plan_configmap_name(gateway: str) -> str:
    return owned_name(gateway, "switchyard-plan")


def plan_document(plan: GatewayPlan) -> dict[str, Any]:
    """The routing plan as data: what every data plane renders from. Holds no key material."""
    return {
        "gateway": {"namespace": plan.namespace, "name": plan.name},
        "endpoints": [
            {
                "namespace": p.namespace,
                "name": p.name,
                "model": p.model,
                "split": p.split,
                "retry": {
                    "attempts": p.retry_attempts,
                    "perTryTimeoutSeconds": p.per_try_timeout_seconds,
                    "retryOn": list(p.retry_on),
                },
                "backends": [
                    {
                        "name": b.name,
                        "provider": b.provider,
                        "model": b.upstream_model,
                        "url": b.url,
                        "apiVersion": b.api_version,
                        "credentialsKey": b.credentials_key,
                        "priority": b.priority,
                        "weight": b.weight,
                        "effectiveWeight": b.effective_weight,
                        "share": round(b.share, 6),
                        "unavailableReason": b.unavailable_reason,
                    }
                    for b in p.backends
                ],
            }
            for p in plan.attached
        ],
        "rejected": [
            {
                "namespace": r.namespace,
                "name": r.name,
                "model": r.model,
                "reason": r.reason,
                "message": r.message,
            }
            for r in plan.rejected
        ],
    }


def owned_metadata(plan: GatewayPlan, name: str, owner_uid: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": plan.namespace,
        "labels": {
            "app.kubernetes.io/managed-by": MANAGED_BY,
            "app.kubernetes.io/part-of": "switchyard",
            GATEWAY_LABEL: label_value(plan.name),
        },
        "ownerReferences": [
            {
                "apiVersion": "switchyard.dev/v1alpha1",
                "kind": "ModelGateway",
                "name": plan.name,
                "uid": owner_uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }


def plan_configmap(plan: GatewayPlan, owner_uid: str) -> dict[str, Any]:
    """`plan.json`, indented for people, while it fits comfortably; a gateway with more
    endpoints than a ConfigMap holds as text (1 MiB, about 1,000 endpoints) gets compact
    `plan.json.gz` in binaryData instead, gzip without a timestamp so that the same plan is
    the same bytes. Compact JSON is written by the json module's C encoder, indented JSON by
    its Python one, which took a third of a pass at 1,000 endpoints."""
    document = plan_document(plan)
    compact = json.dumps(document, sort_keys=True, separators=(",", ":"))
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owned_metadata(plan, plan_configmap_name(plan.name), owner_uid),
    }
    # Indented text is about twice the compact size.
    if 2 * len(compact) <= PLAN_TEXT_LIMIT:
        manifest["data"] = {PLAN_KEY: json.dumps(document, indent=2, sort_keys=True) + "\n"}
    else:
        packed = gzip.compress(compact.encode(), compresslevel=6, mtime=0)
        manifest["data"] = {}
        manifest["binaryData"] = {PLAN_KEY + ".gz": base64.b64encode(packed).decode()}
    return manifest


def credentials_secret(
    plan: GatewayPlan,
    owner_uid: str,
    secret_data: Mapping[ObjectKey, Mapping[str, str]],
    minted: Mapping[str, str],
) -> dict[str, Any]:
    """The gateway's credentials: each key its endpoints reference, copied once from their
    Secrets (`secret_data` holds their base64 `data`, as the API server returns it) and
    normalised as `key_material` says; for a key that is exchanged, the access token minted
    from it (`minted`, by target key, base64), and nothing while there is none."""
    data = {
        copy.target_key: key_material(secret_data[copy.source][copy.source_key])
        for copy in plan.credentials
        if copy.exchange is None
    }
    data |= {
        copy.target_key: minted[copy.target_key]
        for copy in plan.credentials
        if copy.exchange is not None and copy.target_key in minted
    }
    return owned_secret(plan, credentials_secret_name(plan.name), owner_uid, data)


def owned_secret(
    plan: GatewayPlan, name: str, owner_uid: str, data: Mapping[str, str], type_: str = "Opaque"
) -> dict[str, Any]:
    """A Secret the gateway owns, holding `data` (base64)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": type_,
        "metadata": owned_metadata(plan, name, owner_uid),
        "data": dict(data),
    }


@dataclass(frozen=True)
class XdsPeer:
    """Where a gateway's Envoy Pods reach the operator's xDS server, as a NetworkPolicy can
    name it: its port, and, when the operator runs in the cluster, its namespace and Pod
    labels. Without them, the port is open to any address."""

    port: int
    namespace: str | None = None
    pod_labels: Mapping[str, str] = field(default_factory=dict)


DNS_PORT = 53
_EVERYWHERE = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


def _ip_blocks(cidrs: list[str]) -> list[dict[str, Any]]:
    """`cidrs` as NetworkPolicy peers, each less the cloud metadata networks inside it; a
    network that lies wholly inside a metadata network is left out."""
    peers: list[dict[str, Any]] = []
    for text in cidrs:
        network = ipaddress.ip_network(text, strict=False)
        if any(
            network.version == m.version and network.subnet_of(m)  # type: ignore[arg-type]
            for m in METADATA_NETWORKS
        ):
            continue
        excepted = sorted(
            str(m)
            for m in METADATA_NETWORKS
            if m.version == network.version and m != network and m.subnet_of(network)  # type: ignore[arg-type]
        )
        block: dict[str, Any] = {"cidr": str(network)}
        if excepted:
            block["except"] = excepted
        peers.append({"ipBlock": block})
    return peers


def backend_networks(spec: ModelGatewaySpec) -> list[str]:
    """The networks a gateway's Envoys may open connections to for its backends: the
    gateway's `allowedBackends.cidrs` when it pins backends to addresses only, else every
    address. A NetworkPolicy cannot name hosts: a gateway that allows backends by hostname
    may reach any address (the operator still refuses URLs outside its list)."""
    allowed = spec.allowed_backends
    if allowed is not None and allowed.cidrs and not allowed.hostnames:
        return list(allowed.cidrs)
    return [str(n) for n in _EVERYWHERE]


def _rate_limit_egress(service: RateLimitService | None) -> list[dict[str, Any]]:
    return [] if service is None else [{"ports": [{"port": service.port, "protocol": "TCP"}]}]


def gateway_network_policy(
    plan: GatewayPlan,
    spec: ModelGatewaySpec,
    owner_uid: str,
    pod_labels: Mapping[str, str],
    xds: XdsPeer,
    rate_limits: RateLimitService | None = None,
) -> dict[str, Any]:
    """The NetworkPolicy of a gateway's Envoy Pods (those `pod_labels` select). Ingress:
    the listener port only. Egress: DNS, the operator's xDS port, the backends' networks
    (`backend_networks`) less the cloud metadata addresses (they hand out the node's cloud
    credentials), and the rate limit service's port. Enforced only by a CNI that implements
    NetworkPolicy."""
    metadata = owned_metadata(plan, owned_name(plan.name, "switchyard-envoy"), owner_uid)
    metadata["labels"].update(pod_labels)
    to_xds: dict[str, Any] = {"ports": [{"port": xds.port, "protocol": "TCP"}]}
    if xds.namespace and xds.pod_labels:
        to_xds["to"] = [
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": xds.namespace}
                },
                "podSelector": {"matchLabels": dict(xds.pod_labels)},
            }
        ]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {
            "podSelector": {"matchLabels": dict(pod_labels)},
            "policyTypes": ["Ingress", "Egress"],
            # Clients on the listener; Prometheus on the stats port.
            "ingress": [
                {
                    "ports": [
                        {"port": spec.listener.port, "protocol": "TCP"},
                        {"port": STATS_PORT, "protocol": "TCP"},
                    ]
                }
            ],
            "egress": [
                {
                    "ports": [
                        {"port": DNS_PORT, "protocol": "UDP"},
                        {"port": DNS_PORT, "protocol": "TCP"},
                    ]
                },
                to_xds,
                {"to": _ip_blocks(backend_networks(spec))},
                *_rate_limit_egress(rate_limits),
            ],
        },
    }
