"""The NetworkPolicy of a gateway's Envoy Pods, and how a refused write reads on the gateway."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

from switchyard.api.models import ModelGatewaySpec
from switchyard.handlers.sync import _refused
from switchyard.kube.client import ApiError, is_forbidden
from switchyard.plan.egress import METADATA_NETWORKS
from switchyard.render.deployment import EnvoyPods, bootstrap_configmap, envoy_deployment, selector
from switchyard.render.envoy import STATS_PORT
from switchyard.render.objects import XdsPeer, gateway_network_policy
from switchyard.render.rate_limits import RateLimitService
from tests_support.plans import sample_plan

OPERATOR = XdsPeer(18000, "switchyard-system", {"app.kubernetes.io/name": "switchyard"})


def _policy(spec: dict[str, Any], xds: XdsPeer = OPERATOR) -> dict[str, Any]:
    plan = sample_plan()
    gateway = ModelGatewaySpec.model_validate(spec)
    return gateway_network_policy(plan, gateway, "uid-1", selector(plan.name), xds)


def _blocks(policy: dict[str, Any]) -> list[dict[str, Any]]:
    backends = policy["spec"]["egress"][2]
    return [peer["ipBlock"] for peer in backends["to"]]


def test_the_policy_selects_the_gateways_envoy_pods_and_admits_only_listener_and_stats() -> None:
    plan = sample_plan()
    spec = ModelGatewaySpec.model_validate({"listener": {"port": 9090}})
    pods = EnvoyPods("switchyard.switchyard-system.svc", 18000)
    deployment = envoy_deployment(plan, spec, "uid-1", bootstrap_configmap(plan, "uid-1", pods),
                                  pods)  # fmt: skip
    policy = gateway_network_policy(plan, spec, "uid-1", selector(plan.name), OPERATOR)
    template_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= template_labels.items()
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = [{"port": 9090, "protocol": "TCP"}, {"port": STATS_PORT, "protocol": "TCP"}]
    assert policy["spec"]["ingress"] == [{"ports": ports}]


def test_egress_reaches_dns_and_only_the_operators_pods_for_xds() -> None:
    dns, xds, _ = _policy({})["spec"]["egress"]
    assert "to" not in dns  # wherever the cluster's resolver is
    assert {p["port"] for p in dns["ports"]} == {53}
    assert xds["ports"] == [{"port": 18000, "protocol": "TCP"}]
    assert xds["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "switchyard-system"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "switchyard"}},
    }]  # fmt: skip
    # Outside a cluster the operator knows no Pod labels of its own: the port, anywhere.
    assert "to" not in _policy({}, XdsPeer(18000))["spec"]["egress"][1]


def test_with_a_rate_limit_service_egress_reaches_its_port_too() -> None:
    plan = sample_plan()
    gateway = ModelGatewaySpec.model_validate({})
    service = RateLimitService("switchyard-ratelimit.switchyard-system.svc", 8081)
    policy = gateway_network_policy(plan, gateway, "uid-1", selector(plan.name), OPERATOR, service)
    assert policy["spec"]["egress"][:3] == _policy({})["spec"]["egress"]
    assert policy["spec"]["egress"][3] == {"ports": [{"port": 8081, "protocol": "TCP"}]}


def test_backends_are_every_address_but_the_cloud_metadata_ones() -> None:
    blocks = _blocks(_policy({}))
    assert [b["cidr"] for b in blocks] == ["0.0.0.0/0", "::/0"]
    excepted = {e for b in blocks for e in b["except"]}
    assert excepted == {str(n) for n in METADATA_NETWORKS}
    assert {"169.254.0.0/16", "fd00:ec2::254/128", "fe80::/10", "100.100.100.200/32"} <= excepted


def test_allowed_cidrs_narrow_the_backends_and_still_except_metadata() -> None:
    spec = {"allowedBackends": {"cidrs": ["10.0.0.0/8", "100.64.0.0/10", "169.254.169.0/24"]}}
    blocks = _blocks(_policy(spec))
    # 169.254.169.0/24 lies inside the metadata network: never reachable, so left out.
    assert blocks == [
        {"cidr": "10.0.0.0/8"},
        {"cidr": "100.64.0.0/10", "except": ["100.100.100.200/32"]},
    ]
    for block in blocks:
        network = ipaddress.ip_network(block["cidr"])
        for excepted in block.get("except", []):
            assert ipaddress.ip_network(excepted).subnet_of(network)  # type: ignore[arg-type]


def test_allowed_hostnames_leave_egress_open_since_a_policy_cannot_name_hosts() -> None:
    spec = {"allowedBackends": {"cidrs": ["10.0.0.0/8"], "hostnames": ["api.openai.com"]}}
    assert [b["cidr"] for b in _blocks(_policy(spec))] == ["0.0.0.0/0", "::/0"]


def test_a_refused_write_names_the_namespace_and_the_chart_value() -> None:
    refusal = (
        "Secret gw-switchyard-credentials: 403 Forbidden: secrets is forbidden: User "
        '"system:serviceaccount:sy:sy" cannot create resource "secrets" in the namespace "team-x"'
    )
    ready = _refused("team-x", [("Forbidden", refusal), ("Forbidden", "ConfigMap x: 403"),
                                ("ApplyFailed", "Deployment y: 422 Unprocessable")])  # fmt: skip
    assert (ready.type, ready.status, ready.reason) == ("Ready", "False", "Forbidden")
    assert "namespace team-x" in ready.message
    assert "gatewayNamespaces" in ready.message
    assert 'cannot create resource "secrets"' in ready.message
    assert "1 more refused" in ready.message
    assert ready.message.endswith("Deployment y: 422 Unprocessable")
    other = _refused("ns", [("OwnershipConflict", "Service s exists and is not owned")])
    assert (other.reason, other.message) == (
        "OwnershipConflict",
        "Service s exists and is not owned",
    )


def test_only_a_refusal_for_want_of_permission_counts_as_forbidden() -> None:
    def refusal(message: str) -> ApiError:
        error = ApiError(status=403, reason="Forbidden")
        error.body = json.dumps({"message": message}).encode()
        return error

    rbac = 'secrets is forbidden: User "system:serviceaccount:a:b" cannot create resource "secrets"'
    assert is_forbidden(refusal(rbac))
    assert is_forbidden(refusal('configmaps "x" is forbidden: cannot set blockOwnerDeletion'))
    assert not is_forbidden(refusal('deployments "x" is forbidden: exceeded quota: q'))
    assert not is_forbidden(ApiError(status=404, reason="Not Found"))
