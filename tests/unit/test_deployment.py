"""The Kubernetes objects that run an Envoy gateway, as rendered."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from switchyard.api.models import DEFAULT_CONCURRENCY, ModelGatewaySpec
from switchyard.render.deployment import (
    ADMIN_PORT,
    DRAIN_SECONDS,
    ENVOY_ARGS,
    SHUTDOWN_SECONDS,
    EnvoyPods,
    bootstrap_configmap,
    envoy_concurrency,
    envoy_deployment,
    envoy_pdb,
    selector,
    service_name,
)
from switchyard.render.envoy import STATS_PORT
from tests_support.plans import gateway, sample_plan

PODS = EnvoyPods("switchyard.switchyard-system.svc", 18000, "localhost/envoy:test")


def test_the_envoy_pods_use_the_configured_image_and_find_xds_at_the_service() -> None:
    plan = sample_plan()
    bootstrap = bootstrap_configmap(plan, "uid-1", PODS)
    config = json.loads(bootstrap["data"]["bootstrap.json"])
    [xds, admin] = config["static_resources"]["clusters"]
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    # Prometheus reads the stats on the port named "metrics", and nothing else of the admin API.
    [stats] = config["static_resources"]["listeners"]
    assert stats["address"]["socket_address"]["port_value"] == STATS_PORT
    assert admin["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
        "socket_address"
    ] == {"address": "127.0.0.1", "port_value": ADMIN_PORT}
    routes = stats["filter_chains"][0]["filters"][0]["typed_config"]["route_config"][
        "virtual_hosts"
    ][0]["routes"]
    assert [r["match"] for r in routes] == [{"path": "/stats/prometheus"}, {"prefix": "/"}]
    assert "route" not in routes[1]
    assert address["socket_address"] == {
        "address": "switchyard.switchyard-system.svc",
        "port_value": 18000,
    }
    pod = envoy_deployment(plan, gateway().spec, "uid-1", bootstrap, PODS)["spec"]["template"]
    [container] = pod["spec"]["containers"]
    assert container["image"] == "localhost/envoy:test"


def test_a_deleted_envoy_pod_drains_before_it_stops() -> None:
    plan = sample_plan()
    bootstrap = bootstrap_configmap(plan, "uid-1", PODS)
    pod = envoy_deployment(plan, gateway().spec, "uid-1", bootstrap, PODS)["spec"]["template"]
    [container] = pod["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--drain-time-s") + 1] == str(DRAIN_SECONDS)
    assert args[args.index("--drain-strategy") + 1] == "immediate"
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["bash", "-c"]
    assert f"/dev/tcp/127.0.0.1/{ADMIN_PORT}" in hook[2]
    assert "POST /drain_listeners?graceful " in hook[2]
    assert hook[2].endswith(f"sleep {SHUTDOWN_SECONDS}")
    # The kubelet's grace period outlasts the hook, so Envoy is never killed mid-drain.
    assert pod["spec"]["terminationGracePeriodSeconds"] > SHUTDOWN_SECONDS


def _spec(**data_plane: Any) -> ModelGatewaySpec:
    return ModelGatewaySpec.model_validate({"dataPlane": data_plane})


def _rendered(spec: ModelGatewaySpec) -> dict[str, Any]:
    plan = sample_plan()
    return envoy_deployment(plan, spec, "uid-1", bootstrap_configmap(plan, "uid-1", PODS), PODS)


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _concurrency(container: dict[str, Any]) -> int:
    args = container["args"]
    assert args.count("--concurrency") == 1
    return int(args[args.index("--concurrency") + 1])


def test_defaults_size_envoy_for_two_workers_and_5000_endpoints() -> None:
    container = _container(_rendered(ModelGatewaySpec()))
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        # BENCHMARKS.md: 582 MB at 5,000 endpoints on 2 workers, above the former 512Mi.
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    assert _concurrency(container) == DEFAULT_CONCURRENCY == 2


@pytest.mark.parametrize(
    ("resources", "workers"),
    [
        ({"limits": {"cpu": "3"}}, 3),
        ({"limits": {"cpu": 4}}, 4),
        ({"limits": {"cpu": "2500m"}}, 3),  # rounded up
        ({"limits": {"cpu": "500m"}}, 1),  # at least 1
        ({"requests": {"cpu": "1"}, "limits": {"cpu": "4"}}, 4),  # the limit wins
        ({"requests": {"cpu": "1500m"}}, 2),  # no limit: the request
        ({"requests": {"cpu": "100m"}}, 1),
        ({"requests": {"cpu": "0"}}, 1),
        ({"limits": {"memory": "2Gi"}}, DEFAULT_CONCURRENCY),  # no CPU given
        ({}, DEFAULT_CONCURRENCY),
    ],
)
def test_workers_follow_the_cpu_envoy_may_use(resources: dict[str, Any], workers: int) -> None:
    spec = _spec(resources=resources)
    assert envoy_concurrency(spec.data_plane.resources) == workers
    assert _concurrency(_container(_rendered(spec))) == workers


def test_given_resources_replace_the_defaults_whole_in_the_api_servers_own_spelling() -> None:
    resources = {"requests": {"cpu": 1, "memory": "1024Mi"}, "limits": {"memory": "1.5Gi"}}
    container = _container(_rendered(_spec(resources=resources)))
    # As the API server writes them back, so that an unchanged Deployment is not rewritten.
    assert container["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "1536Mi"},
    }
    assert _container(_rendered(_spec(resources={})))["resources"] == {}


def test_the_drain_settings_are_kept_beside_the_workers() -> None:
    args = _container(_rendered(_spec(resources={"limits": {"cpu": "3"}})))["args"]
    assert args[: len(ENVOY_ARGS)] == ENVOY_ARGS
    assert args[-2:] == ["--concurrency", "3"]


@pytest.mark.parametrize("replicas", [1, 3])
def test_replicas_spread_over_nodes_and_zones_as_a_preference(replicas: int) -> None:
    deployment = _rendered(_spec(replicas=replicas))
    template = deployment["spec"]["template"]
    spread = template["spec"]["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    for constraint in spread:
        assert constraint["maxSkew"] == 1
        # A preference: a one-node or one-zone cluster still schedules every replica.
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"] == {"matchLabels": template["metadata"]["labels"]}
    assert deployment["spec"]["replicas"] == replicas


def test_scaling_changes_no_pod_template() -> None:
    one, three = _rendered(_spec(replicas=1)), _rendered(_spec(replicas=3))
    assert one["spec"]["template"] == three["spec"]["template"]


def test_a_rollout_starts_each_new_pod_before_it_stops_an_old_one() -> None:
    strategy = _rendered(ModelGatewaySpec())["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


@pytest.mark.parametrize("replicas", [1, 3])
def test_a_drain_evicts_one_envoy_at_a_time_and_never_blocks(replicas: int) -> None:
    plan = sample_plan()
    spec = _spec(replicas=replicas)
    pdb = envoy_pdb(plan, spec, "uid-1")
    deployment = _rendered(spec)
    assert (pdb["apiVersion"], pdb["kind"]) == ("policy/v1", "PodDisruptionBudget")
    assert pdb["metadata"]["name"] == deployment["metadata"]["name"]
    assert pdb["metadata"]["namespace"] == plan.namespace
    [owner] = pdb["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("ModelGateway", plan.name, "uid-1")
    assert pdb["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "switchyard"
    # It selects exactly the gateway's Envoy Pods.
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector(plan.name)
    # Several replicas: one at a time, so the last one serving stays. One replica: the drain
    # may take it, since a budget that admits no eviction would block the drain for good.
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_budget_is_the_same_for_every_replica_count() -> None:
    plan = sample_plan()
    assert envoy_pdb(plan, _spec(replicas=1), "u") == envoy_pdb(plan, _spec(replicas=5), "u")


@pytest.mark.parametrize("gateway", ["gw.v2", "y" * 53, "1gw", "9.9", "a" * 253])
def test_every_gateway_name_makes_a_valid_service_name(gateway: str) -> None:
    """A Service name is a DNS-1035 label; a gateway's name is a DNS-1123 subdomain, which
    may hold dots, start with a digit and run to 253 characters."""
    name = service_name(gateway)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name
    assert len(name) <= 63
    assert name.endswith("-switchyard")


def test_service_names_stay_readable_and_apart() -> None:
    assert service_name("shared") == "shared-switchyard"
    assert service_name("a.b") != service_name("a-b")
    assert service_name("x" * 60 + "1") != service_name("x" * 60 + "2")


def test_the_pods_run_as_the_gateways_service_account_without_its_token() -> None:
    pod = _rendered(_spec(serviceAccountName="bedrock-caller"))["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "bedrock-caller"
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in _rendered(_spec())["spec"]["template"]["spec"]
