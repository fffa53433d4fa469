"""Azure OpenAI: with an `apiVersion`, the classic per-deployment paths
(`/openai/deployments/<deployment>/...?api-version=`); without, the v1 API (`/openai/v1`).
The key goes in `api-key`; with Entra ID, an access token the operator mints goes in
`Authorization: Bearer`."""

from dataclasses import replace

from switchyard.providers.base import BEARER, Auth, ClientApi, Exchange, Family, Placement, Provider


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

ENTRA_ID = replace(PROVIDER, auth=BEARER, exchange=Exchange.ENTRA_ID)

# The API's `authentication: EntraID` is this exchange's name.
FAMILY = Family(
    PROVIDER.name,
    lambda _, authentication: ENTRA_ID if authentication == Exchange.ENTRA_ID else PROVIDER,
)
