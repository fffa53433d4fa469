"""The models, the CRDs generated from them, and `switchyard plan`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from switchyard.api.crd import custom_resource_definitions
from switchyard.api.models import ModelEndpointSpec, ModelGatewaySpec, parse_duration
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


@pytest.mark.parametrize("text", ["15", "s", "-1s", "1d", ""])
def test_malformed_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


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
        ({"name": "Not_A_Label"}, "should match pattern"),
        ({"provider": "Anthropic", "url": None}, "credentialsRef is required"),
        ({"url": "http://a:99999"}, "port must be between 1 and 65535"),
        ({"url": "http://a:0"}, "port must be between 1 and 65535"),
        ({"provider": "AWSBedrock"}, "AWSBedrock and GCPVertexAI are not served yet"),
        ({"provider": "GCPVertexAI"}, "AWSBedrock and GCPVertexAI are not served yet"),
    ],
)
def test_offline_validation_matches_the_schema(change: dict[str, Any], message: str) -> None:
    spec = base_spec(**change)
    spec["backends"][0] = {k: v for k, v in spec["backends"][0].items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        ModelEndpointSpec.model_validate(spec)


def test_offline_validation_of_lists_and_durations() -> None:
    spec = base_spec()
    with pytest.raises(ValidationError, match="backend names must be unique"):
        ModelEndpointSpec.model_validate({**spec, "backends": spec["backends"] * 2})
    with pytest.raises(ValidationError, match="at least 1 item"):
        ModelEndpointSpec.model_validate({**spec, "backends": []})
    many = [{**spec["backends"][0], "name": f"b{i}"} for i in range(17)]
    with pytest.raises(ValidationError, match="at most 16 items"):
        ModelEndpointSpec.model_validate({**spec, "backends": many})
    with pytest.raises(ValidationError, match="must be positive"):
        ModelEndpointSpec.model_validate({**spec, "healthCheck": {"interval": "0s"}})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        ModelEndpointSpec.model_validate({**spec, "healthCheck": {"healthyThreshold": 0}})


def test_plan_command_prints_shares_of_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "-f", str(ROOT / "examples" / "20-chat.yaml")]) == 0
    out = capsys.readouterr().out
    assert "team-a/chat: model 'chat' on gateway ai-gateway/shared" in out
    assert "split: azure-eastus=70% claude=30%" in out
    assert "standby" in out


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
