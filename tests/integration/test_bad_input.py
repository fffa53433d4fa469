"""Bad input: refused by the API server where the schema can tell, reported by the operator
where only it can, and never at the cost of the other endpoints' traffic."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests_support.backends import anthropic_backend, local_backend, openai_backend
from tests_support.cluster import condition, eventually
from tests_support.scenario import Scenario

pytestmark = pytest.mark.integration


def serve_healthy_endpoint_without_waiting(scenario: Scenario) -> None:
    scenario.secret("providers", {"api-key": scenario.new_key()})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("healthy", [openai_backend("oai", "providers")]),
    )


def serve_healthy_endpoint(scenario: Scenario) -> None:
    """A good endpoint beside every bad one: it must stay Ready throughout."""
    serve_healthy_endpoint_without_waiting(scenario)
    scenario.wait_condition("healthy", "Ready", "True")


def assert_healthy_endpoint_still_served(scenario: Scenario) -> None:
    assert condition(scenario.endpoint("healthy"), "Ready")["status"] == "True"  # type: ignore[index]
    assert "healthy" in [e["model"] for e in scenario.plan()["endpoints"]]
    assert f"{scenario.app_namespace}_providers_api-key" in scenario.credentials()


def warning_events(scenario: Scenario, name: str) -> list[tuple[str, str]]:
    return [
        (e["reason"], e["message"])
        for e in scenario.events()
        if e["involvedObject"]["name"] == name and e["type"] == "Warning"
    ]


def _backend(**fields: Any) -> dict[str, Any]:
    backend: dict[str, Any] = local_backend("a")
    backend.update(fields)
    return {k: v for k, v in backend.items() if v is not None}


# (what is wrong, how to break a good spec, text the API server's message must contain)
REFUSED: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "weight above 1000",
        {"backends": [_backend(weight=1001)]},
        ["spec.backends[0].weight", "less than or equal to 1000"],
    ),
    (
        "negative weight",
        {"backends": [_backend(weight=-1)]},
        ["spec.backends[0].weight", "greater than or equal to 0"],
    ),
    (
        "negative priority",
        {"backends": [_backend(priority=-1)]},
        ["spec.backends[0].priority", "greater than or equal to 0"],
    ),
    ("no backends", {"backends": []}, ["spec.backends", "at least 1 items"]),
    (
        "17 backends",
        {"backends": [_backend(name=f"b{i}") for i in range(17)]},
        ["spec.backends", "must have at most 16 items"],
    ),
    (
        "duplicate backend names",
        {"backends": [_backend(), _backend()]},
        ["spec.backends", "Duplicate value"],
    ),
    (
        "apiVersion on a non-Azure backend",
        {"backends": [_backend(apiVersion="2024-10-21")]},
        ["spec.backends[0].apiVersion", "apiVersion is only valid for provider AzureOpenAI"],
    ),
    (
        "url missing for AzureOpenAI",
        {
            "backends": [
                _backend(provider="AzureOpenAI", url=None, credentialsRef={"name": "s", "key": "k"})
            ]
        },
        ["spec.backends[0].url", "url is required"],
    ),
    (
        "url missing for OpenAICompatible",
        {"backends": [_backend(url=None)]},
        ["spec.backends[0].url", "url is required"],
    ),
    (
        "url that is not http",
        {"backends": [_backend(url="ftp://models.example")]},
        ["spec.backends[0].url", "http or https"],
    ),
    (
        "unknown provider",
        {"backends": [_backend(provider="Mistral")]},
        ["spec.backends[0].provider", 'Unsupported value: "Mistral"'],
    ),
    (
        "backend name that is not a DNS label",
        {"backends": [_backend(name="Bad_Name")]},
        ["spec.backends[0].name", "should match"],
    ),
    (
        "malformed duration",
        {"healthCheck": {"interval": "15 seconds"}},
        ["spec.healthCheck.interval", "should match"],
    ),
    (
        "zero duration",
        {"retry": {"perTryTimeout": "0s"}},
        ["spec.retry.perTryTimeout", "must be a duration between 1ms and 24h"],
    ),
    (
        "a duration past what CEL can hold, once refused with a conversion error",
        {"retry": {"perTryTimeout": "99999999999h"}},
        ["spec.retry.perTryTimeout", "should match"],
    ),
    (
        "a duration past 24h, which the data plane could not render",
        {"retry": {"perTryTimeout": "300h"}},
        ["spec.retry.perTryTimeout", "must be a duration between 1ms and 24h"],
    ),
    (
        "a url with a user and password: key material outside a Secret, and a probe error",
        {"backends": [_backend(url="http://user:pw@models.example")]},
        ["spec.backends[0].url", "url must not carry credentials"],
    ),
    (
        "a url without a host, which reached Envoy",
        {"backends": [_backend(url="https:///v1")]},
        ["spec.backends[0].url", "http or https"],
    ),
    (
        "timeout longer than interval",
        {"healthCheck": {"interval": "5s", "timeout": "10s"}},
        ["spec.healthCheck.timeout", "timeout must not exceed interval"],
    ),
    (
        "unhealthyThreshold below 1",
        {"healthCheck": {"unhealthyThreshold": 0}},
        ["spec.healthCheck.unhealthyThreshold", "greater than or equal to 1"],
    ),
    (
        "healthyThreshold below 1",
        {"healthCheck": {"healthyThreshold": 0}},
        ["spec.healthCheck.healthyThreshold", "greater than or equal to 1"],
    ),
    ("missing model", {"model": None}, ["spec.model", "Required value"]),
    (
        "a port out of range, which froze every pass of the gateway",
        {"backends": [_backend(url="http://models.example:99999")]},
        ["spec.backends[0].url", "port must be between 1 and 65535"],
    ),
    (
        "a Bedrock backend's model named as Anthropic names it, not as Bedrock does",
        {
            "backends": [
                _backend(provider="AWSBedrock", region="us-east-1", model="claude-sonnet-4-5")
            ]
        },
        ["spec.backends[0].model", "is a Bedrock model id"],
    ),
    (
        "Entra ID on a provider other than Azure OpenAI",
        {"backends": [_backend(authentication="EntraID")]},
        ["spec.backends[0].authentication", "EntraID is only valid for provider AzureOpenAI"],
    ),
    (
        "a Vertex AI backend without its region and project",
        {"backends": [_backend(provider="GCPVertexAI", model="claude-sonnet-4@20250514")]},
        ["spec.backends[0].region", "region is required for providers GCPVertexAI"],
    ),
    (
        "a Vertex AI model that names no publisher",
        {
            "backends": [
                _backend(
                    provider="GCPVertexAI",
                    model="gemini-2.5-flash",
                    region="us-east5",
                    project="proj-1",
                )
            ]
        },
        ["spec.backends[0].model", "publisher/model"],
    ),
]


def test_bad_specs_are_refused_at_apply_naming_the_field(scenario: Scenario) -> None:
    serve_healthy_endpoint(scenario)
    good = scenario.endpoint_manifest("bad", [local_backend("a")])
    wrong = []
    for what, change, expected in REFUSED:
        document = copy.deepcopy(good)
        document["spec"].update(change)
        document["spec"] = {k: v for k, v in document["spec"].items() if v is not None}
        message = scenario.cluster.apply_rejected(document)
        missing = [text for text in expected if text not in message]
        if missing:
            wrong.append(f"{what}: {missing} not in {message!r}")
    assert not wrong, "\n".join(wrong)
    assert scenario.endpoint("bad") is None

    gateway = scenario.gateway_manifest(
        "bad-gateway", allowedEndpoints={"namespaces": {"from": "Selector"}}
    )
    message = scenario.cluster.apply_rejected(gateway)
    assert "spec.allowedEndpoints.namespaces.selector" in message
    assert "selector is required when from is Selector" in message
    litellm = scenario.gateway_manifest("litellm", dataPlane={"type": "LiteLLM"})
    message = scenario.cluster.apply_rejected(litellm)
    assert "spec.dataPlane.type" in message
    assert "LiteLLM is not served yet" in message
    # The API server holds 100Ei as a quantity; no Deployment could.
    huge = scenario.gateway_manifest(
        "huge", dataPlane={"resources": {"limits": {"memory": "100Ei"}}}
    )
    message = scenario.cluster.apply_rejected(huge)
    assert "spec.dataPlane.resources.limits" in message
    assert "memory above 64Ti is more than any node has" in message
    assert_healthy_endpoint_still_served(scenario)


def test_a_missing_gateway_is_reported_until_it_exists(scenario: Scenario) -> None:
    serve_healthy_endpoint(scenario)
    scenario.cluster.apply(
        scenario.endpoint_manifest("orphan", [local_backend("a")], gateway="elsewhere")
    )
    accepted = scenario.wait_condition("orphan", "Accepted", "False", "GatewayNotFound")
    assert f"ModelGateway {scenario.gateway_namespace}/elsewhere not found" in accepted["message"]
    assert condition(scenario.endpoint("orphan"), "Ready")["status"] == "False"  # type: ignore[index]
    assert ("GatewayNotFound", accepted["message"]) in warning_events(scenario, "orphan")
    described = scenario.cluster.kubectl(
        "describe", "modelendpoint", "orphan", "-n", scenario.app_namespace
    )
    assert "GatewayNotFound" in described
    assert "elsewhere not found" in described
    assert_healthy_endpoint_still_served(scenario)

    scenario.cluster.apply(scenario.gateway_manifest("elsewhere"))
    scenario.wait_condition("orphan", "Ready", "True")


def test_a_namespace_the_gateway_does_not_admit_is_reported_until_it_is_labelled(
    scenario: Scenario,
) -> None:
    serve_healthy_endpoint(scenario)
    outsider = f"{scenario.app_namespace}-out"
    scenario.cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": outsider}}
    )
    try:
        scenario.secret("providers", {"api-key": scenario.new_key()}, namespace=outsider)
        scenario.cluster.apply(
            scenario.endpoint_manifest(
                "intruder", [openai_backend("oai", "providers")], namespace=outsider
            )
        )
        accepted = scenario.wait_condition(
            "intruder", "Accepted", "False", "NotAllowedByGateway", namespace=outsider
        )
        assert f"does not admit endpoints from namespace {outsider}" in accepted["message"]
        assert "intruder" in [r["name"] for r in scenario.plan()["rejected"]]
        assert_healthy_endpoint_still_served(scenario)
        # The gateway's Secret holds only the keys of endpoints it admits.
        assert not [k for k in scenario.credentials() if k.startswith(outsider)]

        scenario.cluster.kubectl(
            "label", "namespace", outsider, f"switchyard.test/access={scenario.app_namespace}"
        )
        scenario.wait_condition("intruder", "Ready", "True", namespace=outsider)
        eventually(lambda: f"{outsider}_providers_api-key" in scenario.credentials())
    finally:
        # Gone before the closing proofs, which must see nothing change.
        scenario.cluster.kubectl("delete", "namespace", outsider, "--timeout=60s")


def test_a_missing_secret_or_key_is_reported_and_the_rest_still_served(scenario: Scenario) -> None:
    serve_healthy_endpoint(scenario)
    scenario.cluster.apply(
        scenario.endpoint_manifest(
            "partial",
            [openai_backend("oai", "providers"), anthropic_backend("claude", "anthropic-keys")],
        ),
        scenario.endpoint_manifest("keyless", [openai_backend("oai", "providers", key="nope")]),
    )
    refs = scenario.wait_condition("partial", "ResolvedRefs", "False", "SecretNotFound")
    assert (
        f"backend claude: Secret {scenario.app_namespace}/anthropic-keys not found"
        in refs["message"]
    )
    ready = scenario.wait_condition("partial", "Ready", "False", "RefsNotResolved")
    assert "claude" in ready["message"]
    partial = scenario.endpoint("partial")
    assert partial is not None
    assert partial["status"]["split"] == "oai=100%"
    assert {b["name"]: b["effectiveWeight"] for b in partial["status"]["backends"]} == {
        "oai": 1,
        "claude": 0,
    }
    missing_key = scenario.wait_condition("keyless", "ResolvedRefs", "False", "SecretKeyNotFound")
    assert "has no non-empty key 'nope'" in missing_key["message"]
    scenario.wait_condition("keyless", "Ready", "False", "NoRoutableBackend")
    assert ("SecretKeyNotFound", missing_key["message"]) in warning_events(scenario, "keyless")
    assert_healthy_endpoint_still_served(scenario)

    # An empty value counts as a missing key; a real one resolves it.
    scenario.secret("anthropic-keys", {"api-key": ""})
    scenario.wait_condition("partial", "ResolvedRefs", "False", "SecretKeyNotFound")
    scenario.secret("anthropic-keys", {"api-key": scenario.new_key()})
    scenario.wait_condition("partial", "Ready", "True")
    eventually(lambda: f"{scenario.app_namespace}_anthropic-keys_api-key" in scenario.credentials())


def test_the_older_endpoint_keeps_a_contested_model(scenario: Scenario) -> None:
    serve_healthy_endpoint(scenario)
    scenario.cluster.apply(
        scenario.endpoint_manifest("first", [local_backend("a")], model="shared-model")
    )
    scenario.wait_condition("first", "Ready", "True")
    scenario.cluster.apply(
        scenario.endpoint_manifest("second", [local_backend("b")], model="shared-model")
    )
    accepted = scenario.wait_condition("second", "Accepted", "False", "ModelConflict")
    assert "'shared-model'" in accepted["message"]
    assert f"{scenario.app_namespace}/first" in accepted["message"]
    assert condition(scenario.endpoint("first"), "Ready")["status"] == "True"  # type: ignore[index]
    models = {e["name"]: e["model"] for e in scenario.plan()["endpoints"]}
    assert models["first"] == "shared-model"
    assert "second" not in models
    assert_healthy_endpoint_still_served(scenario)

    scenario.cluster.delete("modelendpoints", "first", scenario.app_namespace)
    scenario.wait_condition("second", "Ready", "True")


def test_a_tier_whose_weights_are_all_zero_is_reported(scenario: Scenario) -> None:
    serve_healthy_endpoint(scenario)
    scenario.cluster.apply(
        scenario.endpoint_manifest(
            "idle",
            [
                local_backend("a", weight=0),
                local_backend("b", weight=0),
                local_backend("c", priority=1),
            ],
        )
    )
    accepted = scenario.wait_condition("idle", "Accepted", "False", "ZeroWeightTier")
    assert "priority tier 0" in accepted["message"]
    assert ("ZeroWeightTier", accepted["message"]) in warning_events(scenario, "idle")
    assert_healthy_endpoint_still_served(scenario)


def test_a_data_plane_the_api_server_refuses_is_reported_and_retried(
    scenario: Scenario,
) -> None:
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "no-deployments", "namespace": scenario.gateway_namespace},
        "spec": {"hard": {"count/deployments.apps": "0"}},
    }
    scenario.cluster.apply(quota)
    namespace = scenario.gateway_namespace

    def counted() -> bool:
        """The quota admits nothing only once the quota controller has counted."""
        found = scenario.cluster.get("resourcequotas", "no-deployments", namespace) or {}
        return bool(found.get("status", {}).get("hard"))

    eventually(counted)
    serve_healthy_endpoint_without_waiting(scenario)
    ready = eventually(
        lambda: (c := condition(scenario.gateway(), "Ready")) and c["status"] == "False" and c
    )
    assert ready["reason"] == "ApplyFailed"
    assert "exceeded quota" in ready["message"]
    assert "shared-switchyard-envoy" in ready["message"]

    scenario.cluster.delete("resourcequotas", "no-deployments", namespace)
    eventually(
        lambda: (c := condition(scenario.gateway(), "Ready")) and c["status"] == "True",
        timeout=60,
    )
    assert scenario.cluster.get(
        "deployments", "shared-switchyard-envoy", scenario.gateway_namespace
    )


def test_an_owned_object_the_api_server_refuses_holds_back_none_of_the_others(
    scenario: Scenario,
) -> None:
    """Keys too large for one Secret (1 MiB): the gateway's credentials cannot be written,
    which the gateway reports, while its other objects are applied all the same."""
    # Six keys of 190 kB: each Secret fits (and kubectl's 256 kB annotation), together not.
    for index in range(6):
        scenario.secret(f"big-{index}", {"api-key": str(index) * 190_000})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        *(
            scenario.endpoint_manifest(f"big-{index}", [openai_backend("oai", f"big-{index}")])
            for index in range(6)
        ),
    )
    ready = eventually(
        lambda: (c := condition(scenario.gateway(), "Ready")) and c["status"] == "False" and c,
        timeout=30,
    )
    assert ready["reason"] == "ApplyFailed"
    assert "shared-switchyard-credentials" in ready["message"]
    namespace = scenario.gateway_namespace
    for kind, name in (
        ("configmaps", "shared-switchyard-plan"),
        ("configmaps", "shared-switchyard-envoy"),
        ("deployments", "shared-switchyard-envoy"),
        ("services", "shared-switchyard"),
    ):
        assert scenario.cluster.get(kind, name, namespace) is not None, (kind, name)
    scenario.wait_condition("big-0", "Accepted", "True")
    # While the Secret is refused, a change to the gateway still reaches its Deployment.
    scenario.cluster.apply(scenario.gateway_manifest(dataPlane={"replicas": 2}))
    eventually(
        lambda: (
            (d := scenario.cluster.get("deployments", "shared-switchyard-envoy", namespace))
            and d["spec"]["replicas"] == 2
        ),
        timeout=15,
    )
    # Within the limit again, the Secret is written and the gateway is Ready.
    scenario.secret("big-5", {"api-key": "5" * 1000})
    eventually(lambda: len(scenario.credentials()) == 6, timeout=30)
    eventually(lambda: (c := condition(scenario.gateway(), "Ready")) and c["status"] == "True")


def test_a_backend_the_gateway_may_not_reach_is_refused_and_reported(scenario: Scenario) -> None:
    """Cloud metadata and the API server are never backends; `allowedBackends` pins the
    rest. A refused backend carries no traffic, gets no key and is reported."""
    serve_healthy_endpoint(scenario)
    scenario.secret("stolen", {"api-key": scenario.new_key()})
    metadata = {**openai_backend("imds", "stolen"), "provider": "OpenAICompatible",
                "url": "http://169.254.169.254"}  # fmt: skip
    api_server = {**openai_backend("api", "stolen"), "provider": "OpenAICompatible",
                  "url": "https://kubernetes.default.svc"}  # fmt: skip
    scenario.cluster.apply(
        scenario.endpoint_manifest("sneaky", [local_backend("a"), metadata, api_server])
    )
    refs = scenario.wait_condition("sneaky", "ResolvedRefs", "False", "BackendNotAllowed")
    assert "backend imds: url host 169.254.169.254 is a cloud metadata address" in refs["message"]
    assert "backend api: url host kubernetes.default.svc is the Kubernetes API" in refs["message"]
    scenario.wait_condition("sneaky", "Ready", "False", "RefsNotResolved")
    sneaky = scenario.endpoint("sneaky")
    assert sneaky is not None
    assert {b["name"]: b["effectiveWeight"] for b in sneaky["status"]["backends"]} == {
        "a": 1, "imds": 0, "api": 0}  # fmt: skip
    assert not [k for k in scenario.credentials() if "_stolen_" in k], "a refused backend's key"
    assert_healthy_endpoint_still_served(scenario)

    # Pinned to OpenAI's API: the in-cluster backend is refused too, and the endpoint with it.
    scenario.cluster.apply(
        scenario.gateway_manifest(allowedBackends={"hostnames": ["api.openai.com"]})
    )
    ready = scenario.wait_condition("sneaky", "Ready", "False", "NoRoutableBackend")
    assert "a.models.svc matches none of the gateway's spec.allowedBackends" in ready["message"]
    assert_healthy_endpoint_still_served(scenario)


def test_a_ca_bundle_without_a_certificate_is_reported_on_its_gateway(scenario: Scenario) -> None:
    """The API server cannot read certificates; Envoy refuses every cluster trusting such a
    bundle. So the operator refuses the gateway's spec, naming the field, and serves on."""
    serve_healthy_endpoint(scenario)
    not_a_certificate = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n"
    scenario.cluster.apply(
        scenario.gateway_manifest(
            "broken-tls", backendTLS={"caBundle": not_a_certificate, "hostnames": ["*.svc"]}
        )
    )

    def refused() -> dict[str, Any] | None:
        found = condition(scenario.gateway("broken-tls"), "Accepted")
        return found if found and found["reason"] == "InvalidSpec" else None

    accepted = eventually(refused)
    assert accepted["status"] == "False"
    assert "backendTLS.caBundle" in accepted["message"]
    assert "holds no certificate that loads" in accepted["message"]
    assert_healthy_endpoint_still_served(scenario)
    # It owns nothing, so it is no case for the cascade proof that ends every test.
    scenario.cluster.delete("modelgateways", "broken-tls", scenario.gateway_namespace)
