"""Backend entries of ModelEndpoint specs, for tests."""

from __future__ import annotations

from typing import Any


def openai_backend(
    name: str, secret: str, key: str = "api-key", weight: int = 1, priority: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "OpenAI",
        "model": "gpt-4o",
        "credentialsRef": {"name": secret, "key": key},
        "weight": weight,
        "priority": priority,
    }


def anthropic_backend(
    name: str, secret: str, key: str = "api-key", weight: int = 1, priority: int = 0
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "Anthropic",
        "model": "claude-sonnet-4-5",
        "credentialsRef": {"name": secret, "key": key},
        "weight": weight,
        "priority": priority,
    }


def local_backend(name: str, weight: int = 1, priority: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "OpenAICompatible",
        "model": "llama",
        "url": f"http://{name}.models.svc:8000",
        "weight": weight,
        "priority": priority,
    }
