"""Small plans shared by the unit tests."""

from __future__ import annotations

from switchyard.api.models import ModelEndpointSpec, ModelGatewaySpec
from switchyard.plan.gateway import (
    EndpointSource,
    GatewayPlan,
    GatewaySource,
    SecretKeys,
    plan_gateway,
)


def sample_plan() -> GatewayPlan:
    spec = ModelEndpointSpec.model_validate(
        {
            "gatewayRef": {"name": "shared", "namespace": "team-a"},
            "model": "chat",
            "backends": [
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
    gateway = GatewaySource("team-a", "shared", 1, ModelGatewaySpec())
    return plan_gateway(
        ("team-a", "shared"),
        gateway,
        [EndpointSource("team-a", "chat", 1, "2026-01-01T00:00:00Z", spec)],
        {},
        {("team-a", "keys"): SecretKeys(frozenset({"openai", "anthropic"}))},
    )
