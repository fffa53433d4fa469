"""What it takes to reach each provider, one module per provider behind one small interface
(`base.Provider`).

The renderer and the probes ask a `Provider`; they do not know providers by name. A provider
says which client API it speaks natively (the data plane translates the other one), where
its API lives under the backend's URL, how it takes a key, and what cheap listing proves it
is up. Envoy's Lua gets these facts as endpoint metadata, never a provider's name.
"""

from switchyard.providers import anthropic, azure_openai, openai, openai_compatible
from switchyard.providers.base import ANTHROPIC_VERSION, API_HEADERS, ClientApi, Provider

__all__ = ["ANTHROPIC_VERSION", "API_HEADERS", "PROVIDERS", "ClientApi", "Provider", "provider"]

PROVIDERS = (openai.PROVIDER, azure_openai.PROVIDER, anthropic.PROVIDER, openai_compatible.PROVIDER)
_KNOWN = {p.name: p for p in PROVIDERS}


def provider(name: str) -> Provider:
    """The provider a backend's `provider` field names."""
    try:
        return _KNOWN[name]
    except KeyError:
        raise ValueError(f"unknown provider {name!r}") from None
