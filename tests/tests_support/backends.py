"""Backend entries of ModelEndpoint specs, for tests."""

from __future__ import annotations

from typing import Any


def _hosted(
    provider: str, model: str, name: str, secret: str, key: str, weight: int, priority: int
) -> dict[str, Any]:
    return {
        "name": name,
        "provider": provider,
        "model": model,
        "credentialsRef": {"name": secret, "key": key},
        "weight": weight,
        "priority": priority,
    }


def openai_backend(
    name: str, secret: str, key: str = "api-key", weight: int = 1, priority: int = 0
) -> dict[str, Any]:
    return _hosted("OpenAI", "gpt-4o", name, secret, key, weight, priority)


def anthropic_backend(
    name: str, secret: str, key: str = "api-key", weight: int = 1, priority: int = 0
) -> dict[str, Any]:
    return _hosted("Anthropic", "claude-sonnet-4-5", name, secret, key, weight, priority)


def local_backend(name: str, weight: int = 1, priority: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "provider": "OpenAICompatible",
        "model": "llama",
        "url": f"http://{name}.models.svc:8000",
        "weight": weight,
        "priority": priority,
    }
