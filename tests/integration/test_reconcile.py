"""The operator reconciling endpoints and gateways on a real API server."""

from __future__ import annotations

import json

import pytest

from switchyard.render.envoy import STATS_PORT
from tests_support.backends import anthropic_backend, local_backend, openai_backend
from tests_support.cluster import condition, eventually
from tests_support.scenario import Scenario, sync_passes

pytestmark = pytest.mark.integration


def test_endpoints_become_ready_with_their_split_and_the_gateway_gets_its_objects(
    scenario: Scenario,
) -> None:
    openai_key, anthropic_key = scenario.new_key(), scenario.new_key()
    scenario.secret("providers", {"openai": openai_key, "anthropic": anthropic_key})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest(
            "chat",
            [
                openai_backend("oai", "providers", key="openai", weight=70),
                anthropic_backend("claude", "providers", key="anthropic", weight=30),
                local_backend("llama", priority=1),
            ],
        ),
    )
    ready = scenario.wait_condition("chat", "Ready", "True", "Ready")
    chat = scenario.endpoint("chat")
    assert chat is not None
    assert chat["status"]["split"] == "oai=70% claude=30%"
    assert chat["status"]["observedGeneration"] == chat["metadata"]["generation"]
    assert ready["message"] == f"served by gateway {scenario.gateway_namespace}/shared"
    assert {c["type"]: c["status"] for c in chat["status"]["conditions"]} == {
        "Accepted": "True",
        "ResolvedRefs": "True",
        "Degraded": "False",
        "Ready": "True",
    }
    backends = {b["name"]: b for b in chat["status"]["backends"]}
    assert {n: b["effectiveWeight"] for n, b in backends.items()} == {
        "oai": 70,
        "claude": 30,
        "llama": 1,
    }
    assert all(b["healthy"] for b in backends.values())

    gateway = eventually(lambda: (g := scenario.gateway()) and condition(g, "Ready") and g)
    assert gateway["status"]["attachedEndpoints"] == 1
    assert condition(gateway, "Accepted")["status"] == "True"  # type: ignore[index]

    app = scenario.app_namespace
    assert scenario.credentials() == {
        f"{app}_providers_openai": openai_key,
        f"{app}_providers_anthropic": anthropic_key,
    }
    plan = scenario.plan()
    [entry] = plan["endpoints"]
    assert entry["model"] == "chat"
    assert entry["split"] == "oai=70% claude=30%"
    assert [(b["name"], b["share"], b["credentialsKey"]) for b in entry["backends"]] == [
        ("oai", 0.7, f"{app}_providers_openai"),
        ("claude", 0.3, f"{app}_providers_anthropic"),
        ("llama", 0.0, None),
    ]
    events = [(e["type"], e["reason"]) for e in scenario.events()]
    assert ("Normal", "Ready") in events

    table = scenario.cluster.kubectl("get", "modelendpoints", "-n", app)
    assert table.split("\n")[0].split() == ["NAME", "MODEL", "GATEWAY", "SPLIT", "READY", "AGE"]
    assert "oai=70%" in table
    assert "True" in table


def test_a_rotated_key_reaches_the_gateway_credentials(scenario: Scenario) -> None:
    first, second = scenario.new_key(), scenario.new_key()
    scenario.secret("providers", {"api-key": first})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
    )
    scenario.wait_condition("chat", "Ready", "True")
    key = f"{scenario.app_namespace}_providers_api-key"
    assert scenario.credentials()[key] == first

    scenario.secret("providers", {"api-key": second})
    eventually(lambda: scenario.credentials()[key] == second, timeout=5)


def test_editing_weights_updates_split_status_and_plan(scenario: Scenario) -> None:
    scenario.secret("providers", {"api-key": scenario.new_key()})
    backends = [
        openai_backend("a", "providers", weight=1),
        openai_backend("b", "providers", weight=1),
    ]
    scenario.cluster.apply(
        scenario.gateway_manifest(), scenario.endpoint_manifest("chat", backends)
    )
    scenario.wait_condition("chat", "Ready", "True")

    backends[1]["weight"] = 3
    scenario.cluster.apply(scenario.endpoint_manifest("chat", backends))
    chat = eventually(
        lambda: (e := scenario.endpoint("chat")) and e["status"].get("split") == "a=25% b=75%" and e
    )
    assert chat["status"]["observedGeneration"] == 2
    assert scenario.plan()["endpoints"][0]["split"] == "a=25% b=75%"


def test_deleting_an_endpoint_removes_its_entries(scenario: Scenario) -> None:
    scenario.secret("providers", {"api-key": scenario.new_key()})
    scenario.secret("embedding-keys", {"api-key": scenario.new_key()})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
        scenario.endpoint_manifest("embed", [openai_backend("oai", "embedding-keys")]),
    )
    scenario.wait_condition("chat", "Ready", "True")
    scenario.wait_condition("embed", "Ready", "True")
    app = scenario.app_namespace
    chat_key, embed_key = f"{app}_providers_api-key", f"{app}_embedding-keys_api-key"
    assert set(scenario.credentials()) == {chat_key, embed_key}

    scenario.cluster.delete("modelendpoints", "embed", app)
    eventually(lambda: set(scenario.credentials()) == {chat_key})
    assert [e["model"] for e in scenario.plan()["endpoints"]] == ["chat"]
    eventually(lambda: (g := scenario.gateway()) and g["status"]["attachedEndpoints"] == 1)


def test_deleting_a_gateway_is_reported_and_recreating_it_recovers(scenario: Scenario) -> None:
    scenario.secret("providers", {"api-key": scenario.new_key()})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
    )
    scenario.wait_condition("chat", "Ready", "True")
    scenario.cluster.delete("modelgateways", "shared", scenario.gateway_namespace)
    accepted = scenario.wait_condition("chat", "Accepted", "False", "GatewayNotFound")
    assert f"{scenario.gateway_namespace}/shared not found" in accepted["message"]
    eventually(
        lambda: (
            scenario.cluster.get(
                "secrets", "shared-switchyard-credentials", scenario.gateway_namespace
            )
            is None
        ),
        timeout=30,
    )

    scenario.cluster.apply(scenario.gateway_manifest())
    scenario.wait_condition("chat", "Ready", "True")
    eventually(lambda: scenario.credentials())


def test_the_operator_repairs_the_objects_it_owns(scenario: Scenario) -> None:
    key = scenario.new_key()
    scenario.secret("providers", {"api-key": key})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
    )
    scenario.wait_condition("chat", "Ready", "True")
    eventually(lambda: scenario.credentials())
    namespace = scenario.gateway_namespace

    scenario.cluster.delete("configmaps", "shared-switchyard-plan", namespace)
    eventually(lambda: scenario.plan()["endpoints"])
    scenario.cluster.kubectl(
        "patch",
        "secret",
        "shared-switchyard-credentials",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"data": {"stray": "c3RyYXk="}}',
    )
    eventually(
        lambda: set(scenario.credentials()) == {f"{scenario.app_namespace}_providers_api-key"}
    )


def test_many_endpoint_changes_coalesce_into_few_passes(scenario: Scenario) -> None:
    scenario.secret("providers", {"api-key": scenario.new_key()})
    scenario.cluster.apply(scenario.gateway_manifest())
    eventually(lambda: condition(scenario.gateway(), "Ready"))
    before = sync_passes(scenario.gateway_namespace, "shared")
    count = 40
    scenario.cluster.apply(
        *(
            scenario.endpoint_manifest(f"model-{i}", [openai_backend("oai", "providers")])
            for i in range(count)
        )
    )
    eventually(
        lambda: (g := scenario.gateway()) and g["status"]["attachedEndpoints"] == count, timeout=30
    )
    for i in range(count):
        scenario.wait_condition(f"model-{i}", "Ready", "True")
    passes = sync_passes(scenario.gateway_namespace, "shared") - before
    # One pass per debounce window while the creates arrive, plus the echoes of the
    # gateway's own writes; never one (let alone N) per endpoint. How many windows the 40
    # creates span depends on the machine's load, hence the margin.
    assert passes <= count / 2, f"{passes} passes for {count} endpoint changes"
    assert len(scenario.plan()["endpoints"]) == count
    # Every endpoint uses the same Secret key: the gateway holds it once.
    assert list(scenario.credentials()) == [f"{scenario.app_namespace}_providers_api-key"]


def test_an_envoy_gateway_gets_its_deployment_service_and_bootstrap(scenario: Scenario) -> None:
    key = scenario.new_key()
    scenario.secret("providers", {"api-key": key})
    scenario.cluster.apply(
        scenario.gateway_manifest(
            dataPlane={"type": "Envoy", "replicas": 2}, listener={"port": 9000}
        ),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
    )
    scenario.wait_condition("chat", "Ready", "True")
    namespace = scenario.gateway_namespace
    deployment = eventually(
        lambda: scenario.cluster.get("deployments", "shared-switchyard-envoy", namespace)
    )
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    [envoy] = pod["containers"]
    assert envoy["image"] == "envoyproxy/envoy:v1.40.0"
    assert envoy["ports"] == [
        {"name": "http", "containerPort": 9000, "protocol": "TCP"},
        {"name": "metrics", "containerPort": STATS_PORT, "protocol": "TCP"},
    ]
    assert envoy["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["credentials"]["secret"]["secretName"] == "shared-switchyard-credentials"
    assert volumes["bootstrap"]["configMap"]["name"] == "shared-switchyard-envoy"
    assert key not in json.dumps(deployment)

    bootstrap = json.loads(
        scenario.cluster.get("configmaps", "shared-switchyard-envoy", namespace)["data"][  # type: ignore[index]
            "bootstrap.json"
        ]
    )
    assert bootstrap["node"]["id"] == f"{namespace}/shared"
    service = scenario.cluster.get("services", "shared-switchyard", namespace)
    assert service is not None
    assert service["spec"]["ports"][0]["port"] == 9000

    # Written at the end of the pass that applied these, or by the next one.
    programmed = eventually(lambda: condition(scenario.gateway(), "Programmed"))
    assert (programmed["status"], programmed["reason"]) == ("False", "NoDataPlane")

    # Drift is repaired: a deleted Service comes back, an edited Deployment is restored.
    scenario.cluster.delete("services", "shared-switchyard", namespace)
    eventually(lambda: scenario.cluster.get("services", "shared-switchyard", namespace))
    scenario.cluster.kubectl(
        "scale", "deployment", "shared-switchyard-envoy", "-n", namespace, "--replicas=5"
    )
    eventually(
        lambda: (
            scenario.cluster.get("deployments", "shared-switchyard-envoy", namespace)[  # type: ignore[index]
                "spec"
            ]["replicas"]
            == 2
        )
    )
