"""OpenAI: Chat Completions and the rest of its API under `<url>/v1`, a bearer key."""

from switchyard.providers.base import BEARER, ClientApi, Provider

PROVIDER = Provider(
    name="OpenAI",
    api=ClientApi.OPENAI,
    auth=BEARER,
    path_base=lambda placement: f"{placement.url_path}/v1",
    probe_path=lambda placement: "/v1/models",
)
