"""Anthropic's Messages API under `<url>/v1`, the key in `x-api-key`. Claude on Azure AI
Foundry is this provider too, with the Foundry resource's URL (it takes the same header)."""

from switchyard.providers.base import Auth, ClientApi, Provider

PROVIDER = Provider(
    name="Anthropic",
    api=ClientApi.ANTHROPIC,
    auth=Auth("x-api-key"),
    path_base=lambda placement: f"{placement.url_path}/v1",
    probe_path=lambda placement: "/v1/models",
    # Embeddings, legacy completions and the rest are OpenAI's alone.
    other_apis=False,
)
