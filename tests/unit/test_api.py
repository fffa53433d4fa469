"""The models, the CRDs generated from them, and `switchyard plan`."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from switchyard.api.crd import custom_resource_definitions
from switchyard.api.models import (
    ModelEndpointSpec,
    ModelGatewaySpec,
    canonical_quantity,
    parse_duration,
    parse_quantity,
)
from switchyard.cli import CRD_HEADER, main, write_crds

ROOT = Path(__file__).resolve().parents[2]


def test_crds_directory_matches_the_models(tmp_path: Path) -> None:
    write_crds(tmp_path)
    generated = {p.name: p.read_text() for p in tmp_path.iterdir()}
    committed = {p.name: p.read_text() for p in (ROOT / "crds").iterdir()}
    assert committed == generated, "crds/ is stale: run `switchyard crds`"
    assert all(text.startswith(CRD_HEADER) for text in committed.values())


def _properties(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    """Every named property below `schema`: what `kubectl explain` documents."""
    found = []
    for name, prop in (schema.get("properties") or {}).items():
        found.append((f"{path}.{name}", prop))
        found += _properties(prop, f"{path}.{name}")
    if "items" in schema:
        found += _properties(schema["items"], f"{path}[]")
    return found


@pytest.mark.parametrize("filename", sorted(custom_resource_definitions()))
def test_every_field_is_described_and_structural(filename: str) -> None:
    crd = custom_resource_definitions()[filename]
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for section in ("spec", "status"):
        for path, node in _properties(root["properties"][section], section):
            assert node.get("description"), f"{path} has no description"
            assert "type" in node, f"{path} has no type"
            assert not {"$ref", "anyOf", "title"} & node.keys(), f"{path} is not structural"
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[-2:] == ["Ready", "Age"]
    assert crd["spec"]["names"]["categories"] == ["switchyard"]
    assert version["subresources"] == {"status": {}}


def test_endpoint_columns_and_short_names() -> None:
    crd = custom_resource_definitions()["switchyard.dev_modelendpoints.yaml"]
    columns = [c["name"].upper() for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns == ["MODEL", "GATEWAY", "SPLIT", "READY", "AGE"]
    assert crd["spec"]["names"]["shortNames"] == ["mep"]


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("15s", 15), ("1m", 60), ("1h30m", 5400), ("1.5s", 1.5)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["15", "s", "-1s", "1d", "", "1234567s"])
def test_malformed_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


VERTEX = {
    "provider": "GCPVertexAI",
    "url": None,
    "region": "us-east5",
    "project": "proj-1",
    "model": "claude-sonnet-4@20250514",
    "credentialsRef": {"name": "gcp", "key": "service-account.json"},
}


BEDROCK = {
    "provider": "AWSBedrock",
    "url": None,
    "region": "us-east-1",
    "model": "us.anthropic.claude-sonnet-4-20250514-v1:0",
    "authentication": "SigV4",
    "credentialsRef": {"name": "aws", "key": "credentials"},
}


def test_a_bedrock_backend_takes_its_url_from_its_region() -> None:
    spec = base_spec(**BEDROCK)
    del spec["backends"][0]["url"]
    [backend] = ModelEndpointSpec.model_validate(spec).backends
    assert backend.base_url == "https://bedrock-runtime.us-east-1.amazonaws.com"


def test_vertex_and_sigv4_bedrock_backends_without_credentials_use_workload_identity() -> None:
    for fields in (BEDROCK, VERTEX):
        spec = base_spec(**(fields | {"credentialsRef": None}))
        spec["backends"][0] = {k: v for k, v in spec["backends"][0].items() if v is not None}
        [backend] = ModelEndpointSpec.model_validate(spec).backends
        assert backend.workload_identity


def test_any_bedrock_model_id_profile_or_arn_is_taken() -> None:
    for model in (
        "meta.llama3-1-70b-instruct-v1:0",
        "amazon.nova-pro-v1:0",
        "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3",
    ):
        ModelEndpointSpec.model_validate(base_spec(**(BEDROCK | {"model": model})))


def test_a_vertex_backend_takes_its_url_from_its_region() -> None:
    for region, url in (
        ("us-east5", "https://us-east5-aiplatform.googleapis.com"),
        ("global", "https://aiplatform.googleapis.com"),
    ):
        spec = base_spec(**VERTEX | {"region": region})
        del spec["backends"][0]["url"]
        [backend] = ModelEndpointSpec.model_validate(spec).backends
        assert backend.base_url == url
    spec = base_spec(**VERTEX | {"model": "google/gemini-2.5-flash", "url": "https://psc.example"})
    assert ModelEndpointSpec.model_validate(spec).backends[0].base_url == "https://psc.example"


def base_spec(**backend: Any) -> dict[str, Any]:
    entry = {"name": "a", "provider": "OpenAICompatible", "model": "m", "url": "http://a:8000"}
    entry.update(backend)
    return {"gatewayRef": {"name": "gw"}, "model": "chat", "backends": [entry]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"weight": 1001}, "less than or equal to 1000"),
        ({"priority": -1}, "greater than or equal to 0"),
        ({"apiVersion": "2024-10-21"}, "apiVersion is only valid for provider AzureOpenAI"),
        ({"url": None, "provider": "AzureOpenAI"}, "url is required"),
        ({"provider": "Nope"}, "Input should be"),
        ({"url": "ftp://x"}, "http or https"),
        ({"url": "https:///v1"}, "http or https"),
        ({"url": "http://user:pw@a:8000"}, "url must not carry credentials"),
        ({"name": "Not_A_Label"}, "should match pattern"),
        ({"provider": "Anthropic", "url": None}, "credentialsRef is required"),
        ({"url": "http://a:99999"}, "port must be between 1 and 65535"),
        ({"url": "http://a:0"}, "port must be between 1 and 65535"),
        ({"provider": "AWSBedrock"}, "region is required for providers GCPVertexAI and AWSBedrock"),
        (BEDROCK | {"model": "claude-sonnet-4-5"}, "is a Bedrock model id"),
        (BEDROCK | {"project": "proj-1"}, "project is required for provider GCPVertexAI"),
        (
            BEDROCK | {"credentialsRef": None, "authentication": "APIKey"},
            "credentialsRef is required",
        ),
        ({"authentication": "SigV4"}, "SigV4 only for AWSBedrock"),
        ({"authentication": "EntraID"}, "EntraID is only valid for provider AzureOpenAI"),
        ({"authentication": "Kerberos"}, "Input should be 'APIKey', 'EntraID' or 'SigV4'"),
        ({"provider": "GCPVertexAI"}, "region is required for providers GCPVertexAI"),
        (VERTEX | {"project": None}, "project is required for provider GCPVertexAI"),
        ({"region": "us-east5"}, "region is required .* and only valid there"),
        (VERTEX | {"model": "gemini-2.5-flash"}, "publisher/model"),
        (VERTEX | {"project": "Proj_1"}, "should match pattern"),
    ],
)
def test_offline_validation_matches_the_schema(change: dict[str, Any], message: str) -> None:
    spec = base_spec(**change)
    spec["backends"][0] = {k: v for k, v in spec["backends"][0].items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        ModelEndpointSpec.model_validate(spec)


def test_a_scheme_in_capitals_is_a_scheme_as_the_api_server_reads_it() -> None:
    """The CRD's rule reads the scheme case-blind; the operator refused what it admitted."""
    ModelEndpointSpec.model_validate(base_spec(url="HTTPS://a:8000"))


def test_offline_validation_of_lists_and_durations() -> None:
    spec = base_spec()
    with pytest.raises(ValidationError, match="backend names must be unique"):
        ModelEndpointSpec.model_validate({**spec, "backends": spec["backends"] * 2})
    with pytest.raises(ValidationError, match="at least 1 item"):
        ModelEndpointSpec.model_validate({**spec, "backends": []})
    # A list of type set: the API server refuses duplicates, and so does the model.
    with pytest.raises(ValidationError, match="retryOn: duplicate value ConnectFailure"):
        ModelEndpointSpec.model_validate(
            {**spec, "retry": {"retryOn": ["ConnectFailure", "ServerError", "ConnectFailure"]}}
        )
    many = [{**spec["backends"][0], "name": f"b{i}"} for i in range(17)]
    with pytest.raises(ValidationError, match="at most 16 items"):
        ModelEndpointSpec.model_validate({**spec, "backends": many})
    with pytest.raises(ValidationError, match="must be between 1ms and 24h"):
        ModelEndpointSpec.model_validate({**spec, "healthCheck": {"interval": "0s"}})
    with pytest.raises(ValidationError, match="must be between 1ms and 24h"):
        ModelEndpointSpec.model_validate({**spec, "retry": {"perTryTimeout": "300h"}})
    with pytest.raises(ValidationError, match="should match pattern"):
        ModelEndpointSpec.model_validate({**spec, "retry": {"perTryTimeout": "1000000s"}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModelEndpointSpec.model_validate({**spec, "healthCheck": {"healthyThreshold": 0}})


def test_plan_command_prints_shares_of_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(ROOT / "examples" / "20-chat.yaml")]) == 0
    out = capsys.readouterr().out
    assert "team-a/chat: model 'chat' on gateway ai-gateway/shared" in out
    assert "split: azure-eastus=70% claude=30%" in out
    assert "standby" in out


def test_the_cross_cloud_example_splits_claude_between_anthropic_bedrock_and_vertex(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["plan", "-f", str(ROOT / "examples" / "cross-cloud" / "claude.yaml")]) == 0
    out = capsys.readouterr().out
    assert "split: anthropic=40% bedrock-us-east-1=30% vertex-us-east5=30%" in out
    assert "vertex-europe-west1  GCPVertexAI" in out


def test_plan_command_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-o", "json", "-f", str(ROOT / "examples" / "30-embeddings.yaml")]) == 0
    [plan] = json.loads(capsys.readouterr().out)
    assert plan["endpoint"] == "team-a/embeddings"
    assert sorted(b["share"] for b in plan["backends"]) == [0.333333] * 3


def test_plan_command_names_the_bad_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    document = {
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ModelEndpoint",
        "metadata": {"name": "broken", "namespace": "team-a"},
        "spec": base_spec(weight=5000),
    }
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(document))
    assert main(["plan", "-f", str(path)]) == 1
    err = capsys.readouterr().err
    assert "ModelEndpoint team-a/broken" in err
    assert "spec.backends.0.weight" in err


def test_a_data_plane_not_served_yet_is_refused_offline() -> None:
    with pytest.raises(ValidationError, match="LiteLLM is not served yet"):
        ModelGatewaySpec.model_validate({"dataPlane": {"type": "LiteLLM"}})


# Pairs printed by k8s.io/apimachinery v0.36.3's resource.ParseQuantity and a JSON round
# trip: what the API server stores for what it was sent.
@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("100m", "100m"), ("2", "2"), ("2000m", "2"), ("1500m", "1500m"), ("1.5", "1500m"),
        ("0.5", "500m"), (".5", "500m"), ("0", "0"), ("1024Mi", "1Gi"), ("2048Ki", "2Mi"),
        ("1.5Gi", "1536Mi"), ("0.25Gi", "256Mi"), ("1000Mi", "1000Mi"), ("0.5Ki", "512"),
        ("7Mi", "7Mi"), ("07Mi", "07Mi"), ("1G", "1G"), ("128974848", "128974848"),
        ("1e3", "1e3"), ("1E3", "1E3"), ("12e2", "1200"), ("0.1m", "100u"),
        ("0.0000000001", "1n"), ("1.", "1."), ("0.500", "500m"), ("1.0001", "1000100u"),
    ],
)  # fmt: skip
def test_quantities_are_written_as_the_api_server_stores_them(written: str, stored: str) -> None:
    assert canonical_quantity(written) == stored


def test_quantity_values() -> None:
    assert parse_quantity("500m") == Decimal("0.5")
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("1G") == 10**9
    assert parse_quantity("2e3") == 2000
    for malformed in ("-1", "1 Gi", "1GB", "two", "1e1.5", "", "9Ei"):
        with pytest.raises(ValueError, match="quantit"):
            parse_quantity(malformed)


def gateway_resources(**resources: Any) -> ModelGatewaySpec:
    return ModelGatewaySpec.model_validate({"dataPlane": {"resources": resources}})


def test_gateway_resources_default_from_the_benchmarks_and_accept_integers() -> None:
    resources = ModelGatewaySpec().data_plane.resources
    assert resources.model_dump(by_alias=True, exclude_none=True) == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "2", "memory": "1Gi"},
    }
    given = gateway_resources(requests={"cpu": 1}, limits={"cpu": 2, "memory": "2Gi"})
    assert given.data_plane.resources.requests == {"cpu": "1"}
    assert given.data_plane.resources.limits == {"cpu": "2", "memory": "2Gi"}
    assert given.data_plane.resources.cpu == "2"
    assert gateway_resources(requests={"cpu": "250m"}).data_plane.resources.cpu == "250m"
    assert gateway_resources().data_plane.resources.cpu is None


@pytest.mark.parametrize(
    ("resources", "message"),
    [
        ({"requests": {"cpu": "3"}, "limits": {"cpu": "2"}}, "requests must not exceed limits"),
        (
            {"requests": {"memory": "2Gi"}, "limits": {"memory": "1500Mi"}},
            "requests.memory 2Gi is above limits.memory 1500Mi",
        ),
        ({"requests": {"nvidia.com/gpu": "1"}}, "only cpu and memory can be set"),
        ({"requests": {"cpu": "two"}}, "not a quantity"),
        ({"requests": {"cpu": "-1"}}, "not a quantity"),
        ({"limits": {"cpu": 0.5}}, "must be a quantity"),
        ({"limits": {"cpu": "0"}}, "limits must be greater than zero"),
        ({"limits": {"memory": "512"}}, "a memory limit below 64Mi cannot hold Envoy"),
        ({"limits": {"cpu": "2000"}}, "cpu above 64"),
        ({"requests": {"cpu": 100}}, "cpu above 64"),
        ({"limits": {"memory": "65Ti"}}, "memory above 64Ti"),
        ({"limits": {"memory": "1e100"}}, "larger than any resource quantity"),
        ({"requests": {"cpu": "1", "memory": "1Gi", "storage": "1Gi"}}, "at most 2 items"),
    ],
)
def test_nonsense_resources_are_refused_offline(resources: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        gateway_resources(**resources)


def test_sensible_edge_resources_are_accepted() -> None:
    gateway_resources(
        requests={"memory": "1024Mi", "cpu": "1000m"}, limits={"memory": "1Gi", "cpu": 1}
    )
    gateway_resources(limits={"memory": "64Mi", "cpu": 64})
    gateway_resources(requests={"cpu": "0"})


def test_the_crd_admits_integer_quantities_and_says_what_the_api_server_checks() -> None:
    crd = custom_resource_definitions()["switchyard.dev_modelgateways.yaml"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    data_plane = spec["properties"]["dataPlane"]
    resources = data_plane["properties"]["resources"]
    assert resources["default"] == data_plane["default"]["resources"]
    assert "worker thread per CPU" in resources["description"]
    for part in ("requests", "limits"):
        quantity = resources["properties"][part]["additionalProperties"]
        # cpu: 2 is an integer in YAML: admitted like a container's, with no anyOf.
        assert quantity["x-kubernetes-int-or-string"] is True
        assert "type" not in quantity
        assert resources["properties"][part]["maxProperties"] == 2
    messages = [rule["message"] for rule in resources["x-kubernetes-validations"]]
    assert messages == ["requests must not exceed limits"]
    limit_messages = [
        r["message"] for r in resources["properties"]["limits"]["x-kubernetes-validations"]
    ]
    assert "limits must be greater than zero" in limit_messages
    assert "only cpu and memory can be set" in limit_messages


def test_a_ca_bundle_must_hold_a_certificate_that_loads() -> None:
    """Envoy refuses every cluster that trusts a bundle without one."""
    for bundle in (
        "not a certificate",
        "-----BEGIN CERTIFICATE-----\nbm90\n-----END CERTIFICATE-----",
    ):
        with pytest.raises(ValidationError, match="caBundle holds no certificate that loads"):
            ModelGatewaySpec.model_validate(
                {"backendTLS": {"caBundle": bundle, "hostnames": ["a"]}}
            )
