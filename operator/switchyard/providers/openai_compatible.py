"""A self-hosted server with OpenAI's API (vLLM, Ollama, ...): as OpenAI, at its own URL."""

from switchyard.providers.base import BEARER, ClientApi, Provider

PROVIDER = Provider(
    name="OpenAICompatible",
    api=ClientApi.OPENAI,
    auth=BEARER,
    path_base=lambda url_path, model, api_version: f"{url_path}/v1",
    probe_path=lambda api_version: "/v1/models",
)
