"""What it takes to reach each provider, one module per provider behind one small interface
(`base.Provider`).

The renderer and the probes ask a `Provider`; they do not know providers by name. A provider
says which client API it speaks natively (the data plane translates the other one), where
its API lives under the backend's URL, how it takes a key, and what cheap read proves it
is up. Envoy's Lua gets these facts as endpoint metadata, never a provider's name. A provider
name whose terms depend on the backend (Vertex AI's on its model, Azure OpenAI's on its
authentication) is a `Family`.
"""

from switchyard.providers import (
    anthropic,
    azure_openai,
    bedrock,
    openai,
    openai_compatible,
    vertex_ai,
)
from switchyard.providers.base import (
    ANTHROPIC_VERSION,
    API_HEADERS,
    API_PATHS,
    ChatCall,
    ClientApi,
    Exchange,
    Family,
    Placement,
    Provider,
)

__all__ = [
    "ANTHROPIC_VERSION",
    "API_HEADERS",
    "API_PATHS",
    "PROVIDERS",
    "ChatCall",
    "ClientApi",
    "Exchange",
    "Placement",
    "Provider",
    "provider",
]

# Every set of terms a backend can get.
PROVIDERS = (
    openai.PROVIDER,
    azure_openai.PROVIDER,
    anthropic.PROVIDER,
    openai_compatible.PROVIDER,
    azure_openai.ENTRA_ID,
    vertex_ai.CLAUDE,
    vertex_ai.OPENAI_COMPATIBLE,
    bedrock.CLAUDE_KEY,
    bedrock.CLAUDE_SIGNED,
    bedrock.CONVERSE_KEY,
    bedrock.CONVERSE_SIGNED,
)
_KNOWN: dict[str, Provider | Family] = {
    p.name: p
    for p in (
        openai.PROVIDER,
        azure_openai.FAMILY,
        anthropic.PROVIDER,
        openai_compatible.PROVIDER,
        vertex_ai.FAMILY,
        bedrock.FAMILY,
    )
}


def provider(name: str, model: str = "", authentication: str = "APIKey") -> Provider:
    """The terms of a backend whose `provider`, `model` and `authentication` fields say so."""
    try:
        known = _KNOWN[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}") from None
    return known.variant(model, authentication) if isinstance(known, Family) else known
