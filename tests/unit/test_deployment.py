"""The Kubernetes objects that run an Envoy gateway, as rendered."""

from __future__ import annotations

import json

from switchyard.render.deployment import (
    ADMIN_PORT,
    DRAIN_SECONDS,
    SHUTDOWN_SECONDS,
    EnvoyPods,
    bootstrap_configmap,
    envoy_deployment,
)
from tests_support.plans import gateway, sample_plan

PODS = EnvoyPods("switchyard.switchyard-system.svc", 18000, "localhost/envoy:test")


def test_the_envoy_pods_use_the_configured_image_and_find_xds_at_the_service() -> None:
    plan = sample_plan()
    bootstrap = bootstrap_configmap(plan, "uid-1", PODS)
    config = json.loads(bootstrap["data"]["bootstrap.json"])
    [xds] = config["static_resources"]["clusters"]
    address = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
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
