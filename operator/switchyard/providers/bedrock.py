"""Amazon Bedrock in a region, each model at `/model/<model id>`:

- Claude, for Anthropic-format clients, through InvokeModel: Anthropic's Messages API at
  `/invoke` (`/invoke-with-response-stream` when streamed), the model in the path and
  `anthropic_version: bedrock-2023-05-31` in the body, no `stream` field.
- Every model, Claude too, for OpenAI-format clients (and any model for Anthropic-format
  clients), through Converse at `/converse` (`/converse-stream`): the data plane translates
  the request to Converse and the answer back (render/lua/converse.lua).
Streamed answers come as AWS event-stream frames, which the data plane turns back into the
client's SSE. Errors come as `{"message": ...}`, rewritten into the client's format.

Authentication: SigV4 (`authentication: SigV4`), each attempt signed by the data plane with
the AWS shared-credentials file in the Secret, or with no Secret the temporary credentials of
the gateway's IRSA role (`Exchange.AWS_WORKLOAD_IDENTITY`); or a Bedrock API key as a bearer
token.
A Claude probe counts the tokens of a one-word message (CountTokens, which serves Claude
only); any other model's lists the account's async invocations (ListAsyncInvokes). Both
are signed as requests are: they prove the key and cost no tokens.
"""

import base64
import json
from dataclasses import replace
from urllib.parse import quote

from switchyard.providers.base import (
    BEARER,
    ChatCall,
    ClientApi,
    Exchange,
    Family,
    Placement,
    Provider,
)

NAME = "AWSBedrock"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
SERVICE = "bedrock"
# The API's `authentication: SigV4`.
SIG_V4 = "SigV4"
CONVERSE = ChatCall(whole="/converse", streamed="/converse-stream")


def is_claude(model: str) -> bool:
    """A Claude model id or inference profile (`us.anthropic.claude-...`, or its ARN)."""
    return "anthropic.claude-" in model


def _model_path(placement: Placement) -> str:
    return f"{placement.url_path}/model/{quote(placement.model, safe='')}"


_COUNTED = {"anthropic_version": ANTHROPIC_VERSION, "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}]}  # fmt: skip
PROBE_BODY = json.dumps(
    {"input": {"invokeModel": {"body": base64.b64encode(json.dumps(_COUNTED).encode()).decode()}}}
).encode()

CONVERSE_KEY = Provider(
    name=NAME,
    api=None,
    auth=BEARER,
    path_base=_model_path,
    probe_path=lambda placement: "/async-invoke",
    other_apis=False,
    headers={},
    converse=CONVERSE,
    cloud_errors=True,
)
CLAUDE_KEY = replace(
    CONVERSE_KEY,
    api=ClientApi.ANTHROPIC,
    probe_path=lambda placement: f"/model/{quote(placement.model, safe='')}/count-tokens",
    chat_call=ChatCall(whole="/invoke", streamed="/invoke-with-response-stream"),
    body_fields={"anthropic_version": ANTHROPIC_VERSION, "stream": None},
    probe_body=PROBE_BODY,
)
# Signed; with no Secret, with the temporary credentials of the gateway's IRSA role.
IRSA = Exchange.AWS_WORKLOAD_IDENTITY
CONVERSE_SIGNED = replace(CONVERSE_KEY, signing=SERVICE, workload_identity=IRSA)
CLAUDE_SIGNED = replace(CLAUDE_KEY, signing=SERVICE, workload_identity=IRSA)


def _variant(model: str, authentication: str) -> Provider:
    signed = authentication == SIG_V4
    if is_claude(model):
        return CLAUDE_SIGNED if signed else CLAUDE_KEY
    return CONVERSE_SIGNED if signed else CONVERSE_KEY


FAMILY = Family(NAME, _variant)
