"""Azure OpenAI: with an `apiVersion`, the classic per-deployment paths
(`/openai/deployments/<deployment>/...?api-version=`); without, the v1 API (`/openai/v1`).
The key goes in `api-key`."""

from switchyard.providers.base import Auth, ClientApi, Placement, Provider


def _path_base(placement: Placement) -> str:
    if placement.api_version:
        return f"{placement.url_path}/openai/deployments/{placement.model}"
    return f"{placement.url_path}/openai/v1"


def _probe_path(placement: Placement) -> str:
    if placement.api_version:
        return f"/openai/deployments?api-version={placement.api_version}"
    return "/openai/v1/models"


PROVIDER = Provider(
    name="AzureOpenAI",
    api=ClientApi.OPENAI,
    auth=Auth("api-key"),
    path_base=_path_base,
    probe_path=_probe_path,
    query=lambda placement: f"api-version={placement.api_version}" if placement.api_version else "",
)
