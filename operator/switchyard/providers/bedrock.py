"""Amazon Bedrock in a region: Claude through InvokeModel, Anthropic's Messages API at
`/model/<model id>/invoke` (`/invoke-with-response-stream` when streamed, which answers in
AWS event-stream frames that the data plane turns back into Anthropic's SSE), the model in
the path and `anthropic_version: bedrock-2023-05-31` in the body, no `stream` field.

Authentication: SigV4 (`authentication: SigV4`), each attempt signed by the data plane with
the AWS shared-credentials file in the Secret; or a Bedrock API key as a bearer token.
A probe counts the tokens of a one-word message (CountTokens), signed as requests are: it
proves the key and costs no tokens.
"""

import base64
import json
from dataclasses import replace
from urllib.parse import quote

from switchyard.providers.base import BEARER, ChatCall, ClientApi, Family, Placement, Provider

NAME = "AWSBedrock"
ANTHROPIC_VERSION = "bedrock-2023-05-31"
SERVICE = "bedrock"
# The API's `authentication: SigV4`.
SIG_V4 = "SigV4"


def _model_path(placement: Placement) -> str:
    return f"{placement.url_path}/model/{quote(placement.model, safe='')}"


_COUNTED = {"anthropic_version": ANTHROPIC_VERSION, "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}]}  # fmt: skip
PROBE_BODY = json.dumps(
    {"input": {"invokeModel": {"body": base64.b64encode(json.dumps(_COUNTED).encode()).decode()}}}
).encode()

API_KEY = Provider(
    name=NAME,
    api=ClientApi.ANTHROPIC,
    auth=BEARER,
    path_base=_model_path,
    probe_path=lambda placement: f"/model/{quote(placement.model, safe='')}/count-tokens",
    other_apis=False,
    headers={},
    chat_call=ChatCall(whole="/invoke", streamed="/invoke-with-response-stream"),
    body_fields={"anthropic_version": ANTHROPIC_VERSION, "stream": None},
    probe_body=PROBE_BODY,
)
SIGNED = replace(API_KEY, signing=SERVICE)

FAMILY = Family(NAME, lambda _, authentication: SIGNED if authentication == SIG_V4 else API_KEY)
