"""Gateway plans built from small specs, for the unit tests."""

from __future__ import annotations

from typing import Any

from switchyard.api.models import ModelClientSpec, ModelEndpointSpec, ModelGatewaySpec
from switchyard.plan.clients import ClientSource, ClientsPlan, key_digest, plan_clients
from switchyard.plan.gateway import (
    EndpointSource,
    GatewayPlan,
    GatewaySource,
    SecretKeys,
    plan_gateway,
)

GATEWAY_KEY = ("infra", "shared")
# The Secret every default endpoint references, with both of its keys present.
ALL_KEYS = {("team-a", "keys"): SecretKeys(frozenset({"openai", "anthropic"}))}


def gateway(namespaces: dict[str, Any] | None = None) -> GatewaySource:
    spec = ModelGatewaySpec.model_validate(
        {"allowedEndpoints": {"namespaces": namespaces or {"from": "All"}}}
    )
    return GatewaySource(*GATEWAY_KEY, 1, spec)


def endpoint(
    name: str,
    namespace: str = "team-a",
    model: str | None = None,
    created: str = "2026-01-01T00:00:00Z",
    backends: list[dict[str, Any]] | None = None,
) -> EndpointSource:
    """An endpoint on the `infra/shared` gateway; by default OpenAI 3 : Anthropic 1."""
    spec = ModelEndpointSpec.model_validate(
        {
            "gatewayRef": {"name": GATEWAY_KEY[1], "namespace": GATEWAY_KEY[0]},
            "model": model or name,
            "backends": backends
            or [
                {
                    "name": "oai",
                    "provider": "OpenAI",
                    "model": "gpt-4o",
                    "weight": 3,
                    "credentialsRef": {"name": "keys", "key": "openai"},
                },
                {
                    "name": "claude",
                    "provider": "Anthropic",
                    "model": "claude",
                    "weight": 1,
                    "credentialsRef": {"name": "keys", "key": "anthropic"},
                },
            ],
        }
    )
    return EndpointSource(namespace, name, 1, created, spec)


def sample_plan() -> GatewayPlan:
    return plan_gateway(GATEWAY_KEY, gateway(), [endpoint("chat")], {}, ALL_KEYS)


def client(name: str, namespace: str = "team-a", **spec: Any) -> ClientSource:
    """A ModelClient of the `infra/shared` gateway."""
    parsed = ModelClientSpec.model_validate(
        {"gatewayRef": {"name": GATEWAY_KEY[1], "namespace": GATEWAY_KEY[0]}, **spec}
    )
    return ClientSource(namespace, name, 1, "2026-01-01T00:00:00Z", parsed)


def sample_clients(plan: GatewayPlan, key: str = "sk-client") -> ClientsPlan:
    """One client of team-a, identified by `key` (in Secret team-a/client, key "key") and by
    its ServiceAccount "app"."""
    return plan_clients(
        GATEWAY_KEY,
        gateway(),
        [client("app", apiKeyRef={"name": "client", "key": "key"}, serviceAccounts=["app"])],
        plan,
        {},
        {("team-a", "client"): {"key": key_digest(key.encode())}},
    )
