"""CustomResourceDefinitions generated from the pydantic models.

Pydantic emits JSON Schema with `$ref`s, titles and `anyOf [X, null]` for optional fields;
a Kubernetes structural schema allows none of those, so they are inlined and dropped here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from switchyard.api.models import (
    GROUP,
    VERSION,
    ModelClientSpec,
    ModelClientStatus,
    ModelEndpointSpec,
    ModelEndpointStatus,
    ModelGatewaySpec,
    ModelGatewayStatus,
)


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI v3 schema of a model as the API server wants it: no refs, no nulls."""
    schema = model.model_json_schema(by_alias=True)
    definitions = schema.pop("$defs", {})
    cleaned: dict[str, Any] = _clean(schema, definitions)
    return cleaned


def _clean(node: Any, definitions: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_clean(item, definitions) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = definitions[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _clean(merged, definitions)
    if "anyOf" in node:
        # Optional[X] is X that may be left out; the API server has no use for null.
        choices = [c for c in node["anyOf"] if c.get("type") != "null"]
        if len(choices) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        return _clean({**choices[0], **rest}, definitions)
    cleaned: dict[str, Any] = {}
    for key, value in node.items():
        # extra="forbid" becomes additionalProperties: false, which structural schemas refuse.
        if key == "title" or (key == "additionalProperties" and value is False):
            continue
        if key == "default" and value is None:
            continue
        if key == "properties":
            cleaned[key] = {name: _clean(prop, definitions) for name, prop in value.items()}
        else:
            cleaned[key] = _clean(value, definitions)
    if "properties" in cleaned:
        cleaned.setdefault("type", "object")
    return cleaned


def _ready_column() -> dict[str, Any]:
    return {
        "name": "Ready",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
        "description": "Whether the object is served as specified.",
    }


def _age_column() -> dict[str, Any]:
    return {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _crd(
    kind: str,
    plural: str,
    short_names: list[str],
    description: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short_names,
                "categories": ["switchyard"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [*columns, _ready_column(), _age_column()],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"APIVersion of this object: {GROUP}/{VERSION}.",
                                },
                                "kind": {"type": "string", "description": f"Always {kind}."},
                                "metadata": {"type": "object"},
                                "spec": structural_schema(spec),
                                "status": structural_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def custom_resource_definitions() -> dict[str, dict[str, Any]]:
    """File name -> CRD manifest, for every kind Switchyard serves."""
    endpoint = _crd(
        kind="ModelEndpoint",
        plural="modelendpoints",
        short_names=["mep"],
        description="ModelEndpoint serves one public model name through a ModelGateway and "
        "splits its traffic across provider backends by weight and priority.",
        spec=ModelEndpointSpec,
        status=ModelEndpointStatus,
        columns=[
            {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
            {"name": "Gateway", "type": "string", "jsonPath": ".spec.gatewayRef.name"},
            {"name": "Split", "type": "string", "jsonPath": ".status.split"},
        ],
    )
    gateway = _crd(
        kind="ModelGateway",
        plural="modelgateways",
        short_names=["mgw"],
        description="ModelGateway is a data plane that serves the ModelEndpoints attached to it.",
        spec=ModelGatewaySpec,
        status=ModelGatewayStatus,
        columns=[
            {"name": "Type", "type": "string", "jsonPath": ".spec.dataPlane.type"},
            {"name": "Port", "type": "integer", "jsonPath": ".spec.listener.port"},
            {"name": "Client-Auth", "type": "string", "jsonPath": ".spec.clientAuth.mode"},
            {"name": "Endpoints", "type": "integer", "jsonPath": ".status.attachedEndpoints"},
        ],
    )
    client = _crd(
        kind="ModelClient",
        plural="modelclients",
        short_names=["mcl"],
        description="ModelClient names one application that calls a ModelGateway, how it "
        "proves who it is (an API key, ServiceAccount tokens), and which models it may call.",
        spec=ModelClientSpec,
        status=ModelClientStatus,
        columns=[
            {"name": "Gateway", "type": "string", "jsonPath": ".spec.gatewayRef.name"},
            {"name": "Models", "type": "string", "jsonPath": ".status.models"},
        ],
    )
    return {
        f"{GROUP}_modelclients.yaml": client,
        f"{GROUP}_modelendpoints.yaml": endpoint,
        f"{GROUP}_modelgateways.yaml": gateway,
    }
