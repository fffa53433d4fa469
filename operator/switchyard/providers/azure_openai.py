"""Azure OpenAI: with an `apiVersion`, the classic per-deployment paths
(`/openai/deployments/<deployment>/...?api-version=`); without, the v1 API (`/openai/v1`).
The key goes in `api-key`."""

from switchyard.providers.base import Auth, ClientApi, Provider


def _path_base(url_path: str, model: str, api_version: str | None) -> str:
    if api_version:
        return f"{url_path}/openai/deployments/{model}"
    return f"{url_path}/openai/v1"


PROVIDER = Provider(
    name="AzureOpenAI",
    api=ClientApi.OPENAI,
    auth=Auth("api-key"),
    path_base=_path_base,
    probe_path=lambda api_version: (
        f"/openai/deployments?api-version={api_version}" if api_version else "/openai/v1/models"
    ),
    query=lambda api_version: f"api-version={api_version}" if api_version else "",
)
