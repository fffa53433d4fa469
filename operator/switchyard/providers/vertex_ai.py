"""Google Vertex AI, in a project and a region, with a bearer OAuth access token that the
operator mints from the service-account key JSON in the Secret (`Exchange`), or with no
Secret gets for the gateway's Google service account (`Exchange.GOOGLE_WORKLOAD_IDENTITY`).

- Claude (`claude-sonnet-4@20250514`, as Vertex names it) speaks Anthropic's Messages API
  at `publishers/anthropic/models/<model>:rawPredict` (`:streamRawPredict` when streamed):
  the model in the path, not the body, and `anthropic_version` in the body, not a header.
- Every other model is named `<publisher>/<model>` (`google/gemini-2.5-flash`) and speaks
  OpenAI's Chat Completions at Vertex's OpenAI-compatible `endpoints/openapi`, the model in
  the body as named.

Errors Vertex answers itself (a token refused, a quota) come in Google's format, rewritten
into the client's by the data plane.

A probe reads the publisher model (`GET /v1beta1/publishers/<publisher>/models/<model>`):
it takes the token as a request does, and costs none.
"""

from switchyard.providers.base import (
    BEARER,
    ChatCall,
    ClientApi,
    Exchange,
    Family,
    Placement,
    Provider,
)

NAME = "GCPVertexAI"
# The Messages API version Vertex takes, in the body.
ANTHROPIC_VERSION = "vertex-2023-10-16"
CLAUDE_PREFIX = "claude-"


def is_claude(model: str) -> bool:
    return model.startswith(CLAUDE_PREFIX)


def _location(placement: Placement) -> str:
    return f"{placement.url_path}/v1/projects/{placement.project}/locations/{placement.region}"


def _publisher_model(model: str) -> str:
    publisher, _, name = model.rpartition("/")
    if is_claude(model):
        publisher, name = "anthropic", model
    return f"/v1beta1/publishers/{publisher}/models/{name}"


CLAUDE = Provider(
    name=NAME,
    api=ClientApi.ANTHROPIC,
    auth=BEARER,
    path_base=lambda p: f"{_location(p)}/publishers/anthropic/models/{p.model}",
    probe_path=lambda p: _publisher_model(p.model),
    other_apis=False,
    headers={},
    chat_call=ChatCall(whole=":rawPredict", streamed=":streamRawPredict"),
    body_fields={"anthropic_version": ANTHROPIC_VERSION},
    exchange=Exchange.GOOGLE_SERVICE_ACCOUNT,
    cloud_errors=True,
    workload_identity=Exchange.GOOGLE_WORKLOAD_IDENTITY,
)

OPENAI_COMPATIBLE = Provider(
    name=NAME,
    api=ClientApi.OPENAI,
    auth=BEARER,
    path_base=lambda p: f"{_location(p)}/endpoints/openapi",
    probe_path=lambda p: _publisher_model(p.model),
    # Only chat completions: Vertex's OpenAI-compatible API has no embeddings or listing.
    other_apis=False,
    exchange=Exchange.GOOGLE_SERVICE_ACCOUNT,
    cloud_errors=True,
    workload_identity=Exchange.GOOGLE_WORKLOAD_IDENTITY,
)

FAMILY = Family(NAME, lambda model, _: CLAUDE if is_claude(model) else OPENAI_COMPATIBLE)
