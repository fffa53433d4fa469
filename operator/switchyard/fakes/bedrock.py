"""A fake Amazon Bedrock runtime that speaks its real wire format: SigV4 (or a Bedrock API key),
Converse and ConverseStream, InvokeModel and InvokeModelWithResponseStream for Claude, and AWS
event streams.

Authentication is checked as AWS checks it, and refused with 403 in AWS's error format (a body
`{"message": ...}` and the type in `x-amzn-ErrorType`):
- no Authorization: MissingAuthenticationTokenException "Missing Authentication Token";
- an access key id it does not know, or a session token that is missing, wrong or sent with
  long-term keys: UnrecognizedClientException "The security token included in the request is
  invalid."; temporary credentials past their expiry: ExpiredTokenException;
- an Authorization that is not AWS4-HMAC-SHA256 with Credential, SignedHeaders and Signature,
  or `host` or `x-amz-date` not signed: IncompleteSignatureException;
- a credential scoped to another region, another service than `bedrock` or another day than
  X-Amz-Date: InvalidSignatureException;
- X-Amz-Date more than 5 minutes off: InvalidSignatureException "Signature expired: ..." (or
  "Signature not yet current: ...");
- `x-amz-content-sha256` other than the body's SHA-256 (UNSIGNED-PAYLOAD included), or a
  signature other than the one botocore computes from the signed headers only, the raw path
  and the body: InvalidSignatureException "The request signature we calculated does not match
  the signature you provided. ...".
A Bedrock API key goes as `Authorization: Bearer <key>`; a key it does not know gets 403
UnrecognizedClientException.

It serves POST /model/{modelId}/converse, /converse-stream, /invoke,
/invoke-with-response-stream and /count-tokens, and GET /async-invoke (ListAsyncInvokes, an
empty list: it starts no async invocations). The model id is percent-decoded (`:` raw or
as %3A, an ARN's `/` as %2F); one not in `models` gets 400 ValidationException "The provided
model identifier is invalid." Invoke serves Anthropic Claude models only (ids containing
`anthropic.`).

Converse requests are validated against the service model's shapes: an unknown field is 400
ValidationException `Unknown parameter in <path>: "<field>", must be one of: ...`; a shape
constraint is `1 validation error detected: Value at '<path>' failed to satisfy constraint:
...`, with AWS's paths (`messages.1.member.content`, lists counted from 1). The conversation
rules have Bedrock's own messages: it starts with a user message, alternates roles, has no
blank text, and each turn after tool uses answers each of them with a toolResult.

Invoke takes Anthropic's Messages body without `model` and `stream` (`#: extraneous key
[model] is not permitted`) and with `anthropic_version`: "bedrock-2023-05-31" (checked as API
version 2023-06-01) or "2026-10-21", which the anthropic SDK sends (checked as that version);
`anthropic_beta` a list of strings. The rest is checked as the Anthropic fake checks it.

CountTokens takes `{"input": {"invokeModel": {"body": "<base64 of an InvokeModel body>"}}}`
(Claude models only) or `{"input": {"converse": {"messages", "system"?, "toolConfig"?}}}`,
checks what it wraps as InvokeModel or Converse would, and answers `{"inputTokens": N}`, N the
words counted as for usage (the prompt cache aside); it uses no tokens and caches nothing. An
input that is not one of those is 400 ValidationException.

What it answers follows the rules of `switchyard.fakes.provider` (tool calls with sample
arguments, `Tool results: ...`, `I see an image: image/png <N> bytes`, stop sequences,
max tokens, usage by word count, a prompt cache), with the provider name AWSBedrock: the plain
reply is `Hello from AWSBedrock <modelId> on port <port>.` In Converse:
- a text answer is `{"text": ...}`; tool calls are `{"toolUse": {"toolUseId": "tooluse_...",
  "name", "input"}}` blocks with stopReason "tool_use"; a toolResult's text is its text blocks
  and the `json.dumps` of its json blocks, joined by " ";
- `toolChoice` auto and any call the first two tools, `tool` the named one;
- usage: inputTokens are the words after the last cachePoint (all of them without one),
  cacheReadInputTokens and cacheWriteInputTokens (present only with a cachePoint) the cached
  and newly cached prefix, totalTokens their sum with outputTokens.
ConverseStream sends messageStart, per tool call contentBlockStart (toolUse) + contentBlockDelta
(toolUse.input, JSON in fragments) + contentBlockStop, or for text a contentBlockDelta per word
+ contentBlockStop, then messageStop and metadata (usage, metrics); InvokeModelWithResponseStream
sends Anthropic's stream events (no ping) as `chunk` events, base64 in `bytes`, the last,
message_stop, with `amazon-bedrock-invocationMetrics`. Event payloads carry a padding field
`p`, as AWS's do. Frames go out in many writes, every third split across two.

Faults, records and the control port are FakeProvider's; the control port also takes
PUT /credentials {"accessKeyId", "secretAccessKey", "sessionToken"?, "expires"? (epoch s)} and
DELETE /credentials/{accessKeyId} (key rotation), and PUT /api-key {"apiKey"} replaces the
Bedrock API keys with that one.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import calendar
import contextlib
import hashlib
import hmac
import json
import re
import secrets
import ssl
import string
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest, HTTPHeaders
from botocore.credentials import Credentials

from switchyard.fakes.provider import (
    ANTHROPIC_STOP,
    ANTHROPIC_VERSION,
    IMAGE_TYPES,
    LATEST_ANTHROPIC_VERSION,
    Answer,
    Ask,
    FakeProvider,
    ProviderError,
    RecordedRequest,
    _base64,
    _EventWriter,
    _fragments,
    _image_type,
    _words,
    decide,
    read_messages_request,
)

PROVIDER = "AWSBedrock"
SERVICE = "bedrock"
DEFAULT_MODELS = ("anthropic.claude-3-5-sonnet-20240620-v1:0",)
# anthropic_version in an InvokeModel body -> the Anthropic API version it is checked as.
INVOKE_VERSIONS = {
    "bedrock-2023-05-31": ANTHROPIC_VERSION,
    LATEST_ANTHROPIC_VERSION: LATEST_ANTHROPIC_VERSION,
}
MAX_SKEW = 300  # seconds between X-Amz-Date and the fake's clock
OPERATIONS = (
    "converse", "converse-stream", "invoke", "invoke-with-response-stream", "count-tokens",
)  # fmt: skip
EVENT_STREAM = "application/vnd.amazon.eventstream"
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. Check your "
    "AWS Secret Access Key and signing method. Consult the service documentation for details."
)
INVALID_TOKEN = "The security token included in the request is invalid."
AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
    r"SignedHeaders=([a-z0-9;_.-]+),\s*Signature=([0-9a-f]{64})"
)
PATH = re.compile(r"/model/([^/]+)/([a-z-]+)")
# Where AWS's error types live, as `x-amzn-ErrorType` names them.
CORAL = "http://internal.amazon.com/coral/com.amazon.coral.service/"
BEDROCK_CORAL = "http://internal.amazon.com/coral/com.amazon.bedrock/"
ERROR_TYPES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}
AUTH_ERRORS = frozenset({
    "MissingAuthenticationTokenException", "UnrecognizedClientException",
    "InvalidSignatureException", "IncompleteSignatureException", "ExpiredTokenException",
})  # fmt: skip


@dataclass
class AwsCredentials:
    """A key pair the fake accepts; temporary ones carry a session token and an expiry."""

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None
    expires: float | None = None  # epoch seconds


class _ExactSigner(SigV4Auth):  # type: ignore[misc]  # botocore has no types
    """botocore's SigV4 over exactly the headers the request says it signed (botocore's own
    list leaves out user-agent and others, which Envoy signs)."""

    def __init__(self, credentials: Credentials, region: str, names: list[str]) -> None:
        super().__init__(credentials, SERVICE, region)
        self._names = names

    def headers_to_sign(self, request: AWSRequest) -> HTTPHeaders:
        headers = HTTPHeaders()
        for name in self._names:
            for value in request.headers.get_all(name) or []:
                headers[name] = value
        return headers


class FakeBedrock(FakeProvider):
    """Bedrock's runtime API on one port, plus FakeProvider's control port."""

    def __init__(
        self,
        credentials: Iterable[AwsCredentials] = (),
        api_keys: Iterable[str] = (),
        models: list[str] | None = None,
        region: str = "us-east-1",
        host: str = "127.0.0.1",
        port: int = 0,
        stream_chunk_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        keep_requests: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # FakeProvider checks the name against the providers it serves itself; Bedrock is
        # served here, so it starts as one of those and takes its own name.
        super().__init__(
            "Anthropic",
            "",
            models=list(models or DEFAULT_MODELS),
            host=host,
            port=port,
            stream_chunk_delay=stream_chunk_delay,
            ssl_context=ssl_context,
            keep_requests=keep_requests,
        )
        self.provider = PROVIDER
        self.region = region
        self.credentials = {c.access_key_id: c for c in credentials}
        self.api_keys = set(api_keys)
        self.clock = clock

    def add_credentials(self, credentials: AwsCredentials) -> None:
        self.credentials[credentials.access_key_id] = credentials

    def remove_credentials(self, access_key_id: str) -> None:
        self.credentials.pop(access_key_id, None)

    def reply_text(self, model: str) -> str:
        return f"Hello from {PROVIDER} {model} on port {self.port}."

    # --- the API

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._gate], client_max_size=64 * 2**20)
        app.on_response_prepare.append(self._stamp)
        app.router.add_post("/model/{tail:.+}", self._model)
        app.router.add_get("/async-invoke", self._list_async_invokes)
        return app

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        if "x-amzn-RequestId" not in response.headers:
            response.headers["x-amzn-RequestId"] = str(uuid.uuid4())

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        """Records the request, applies the fault, then checks the signature or API key."""
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers={k.lower(): v for k, v in request.headers.items()},
                body=body,
            )
        )
        fault = self.fault
        if fault.hang:
            await self._released.wait()
        if fault.latency_ms:
            await asyncio.sleep(fault.latency_ms / 1000)
        try:
            if fault.status is not None:
                kind = ERROR_TYPES.get(
                    fault.status,
                    "InternalServerException" if fault.status >= 500 else "ValidationException",
                )
                raise ProviderError(fault.status, kind, "injected fault")
            self._verify(request, raw)
            return await handler(request)  # type: ignore[no-any-return]
        except ProviderError as error:
            response = self._error(error)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
            return response

    def _error(self, error: ProviderError) -> web.Response:
        where = CORAL if error.kind in AUTH_ERRORS else BEDROCK_CORAL
        return web.json_response(
            {"message": error.message},
            status=error.status,
            headers={"x-amzn-ErrorType": f"{error.kind}:{where}"},
        )

    def _verify(self, request: web.Request, body: bytes) -> None:
        authorization = request.headers.get("Authorization")
        if not authorization:
            raise _denied("MissingAuthenticationTokenException", "Missing Authentication Token")
        if authorization.startswith("Bearer "):
            if authorization.removeprefix("Bearer ") not in self.api_keys:
                raise _denied(
                    "UnrecognizedClientException",
                    "Authentication failed: Please make sure your API Key is valid.",
                )
            return
        match = AUTHORIZATION.fullmatch(authorization)
        if match is None:
            raise _denied(
                "IncompleteSignatureException",
                f"Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' "
                f"parameters in AWS4-HMAC-SHA256 form. Authorization={authorization}",
            )
        key_id, day, region, service, signed, signature = match.groups()
        names = signed.split(";")
        if "host" not in names:
            raise _denied(
                "IncompleteSignatureException",
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            )
        stamp = request.headers.get("X-Amz-Date")
        if stamp is None or "x-amz-date" not in names:
            raise _denied(
                "IncompleteSignatureException",
                "Authorization header requires existence of a signed 'X-Amz-Date' header.",
            )
        if service != SERVICE:
            raise _denied(
                "InvalidSignatureException",
                f"Credential should be scoped to correct service: '{SERVICE}'.",
            )
        if region != self.region:
            raise _denied(
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{region}'.",
            )
        when = _parse_stamp(stamp)
        if when is None or day != stamp[:8]:
            raise _denied(
                "InvalidSignatureException",
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of "
                f"date from HTTP: '{day}' != '{stamp[:8]}', from '{stamp}'.",
            )
        now = self.clock()
        if when < now - MAX_SKEW:
            raise _denied(
                "InvalidSignatureException",
                f"Signature expired: {stamp} is now earlier than {_amz_date(now - MAX_SKEW)} "
                f"({_amz_date(now)} - 5 min.)",
            )
        if when > now + MAX_SKEW:
            raise _denied(
                "InvalidSignatureException",
                f"Signature not yet current: {stamp} is still later than "
                f"{_amz_date(now + MAX_SKEW)} ({_amz_date(now)} + 5 min.)",
            )
        known = self.credentials.get(key_id)
        token = request.headers.get("X-Amz-Security-Token")
        if known is None or token != known.session_token:
            raise _denied("UnrecognizedClientException", INVALID_TOKEN)
        if known.expires is not None and known.expires <= now:
            raise _denied(
                "ExpiredTokenException", "The security token included in the request is expired"
            )
        claimed = request.headers.get("X-Amz-Content-SHA256")
        if claimed is not None and claimed != hashlib.sha256(body).hexdigest():
            raise _denied("InvalidSignatureException", SIGNATURE_MISMATCH)
        headers = HTTPHeaders()
        for name in names:
            for value in request.headers.getall(name, []):
                headers[name] = value
        rebuilt = AWSRequest(
            method=request.method,
            url=f"https://{request.headers.get('Host', '')}{request.raw_path}",
            headers=headers,
            data=body,
        )
        rebuilt.context["timestamp"] = stamp
        signer = _ExactSigner(
            Credentials(key_id, known.secret_access_key, known.session_token), region, names
        )
        expected = signer.signature(
            signer.string_to_sign(rebuilt, signer.canonical_request(rebuilt)), rebuilt
        )
        if not hmac.compare_digest(expected, signature):
            raise _denied("InvalidSignatureException", SIGNATURE_MISMATCH)

    async def _model(self, request: web.Request) -> web.StreamResponse:
        match = PATH.fullmatch(request.raw_path.split("?", 1)[0])
        if match is None or match.group(2) not in OPERATIONS:
            raise ProviderError(404, "UnknownOperationException", "Not Found")
        model, operation = unquote(match.group(1)), match.group(2)
        if model not in self.models:
            raise _invalid_input("The provided model identifier is invalid.")
        try:
            body = json.loads(await request.read())
        except ValueError as error:
            raise _invalid_input(
                "Malformed input request, please reformat your input and try again."
            ) from error
        if not isinstance(body, dict):
            raise _invalid_input(
                "Malformed input request: #: expected type: JSONObject, please reformat your "
                "input and try again."
            )
        started = time.monotonic()
        if operation == "count-tokens":
            return web.json_response({"inputTokens": read_count_tokens_request(body, model).words})
        if operation.startswith("converse"):
            return await self._converse(
                request, model, body, operation == "converse-stream", started
            )
        if "anthropic." not in model:
            raise _invalid_input(
                "The fake serves InvokeModel only for Anthropic Claude models; use Converse."
            )
        return await self._invoke(request, model, body, operation != "invoke", started)

    async def _list_async_invokes(self, request: web.Request) -> web.Response:
        """ListAsyncInvokes: the fake starts none, so the list is empty."""
        return web.json_response({"asyncInvokeSummaries": []})

    # --- Converse

    async def _converse(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        stream: bool,
        started: float,
    ) -> web.StreamResponse:
        ask = read_converse_request(body)
        answer = decide(ask, self.reply_text(model))
        read, marked = self._prefixes.match(f"converse\0{model}", ask.pieces, ask.breakpoints)
        usage: dict[str, int] = {
            "inputTokens": ask.words - marked,
            "outputTokens": answer.output_tokens,
            "totalTokens": ask.words + answer.output_tokens,
        }
        if ask.breakpoints:
            usage["cacheReadInputTokens"] = read
            usage["cacheWriteInputTokens"] = marked - read
        self.report(ask.words, answer.output_tokens, read)
        calls = [(_bedrock_tool_use_id(), name, arguments) for name, arguments in answer.calls]
        stop = ANTHROPIC_STOP[answer.finish]
        if not stream:
            content: list[dict[str, Any]] = [
                {"toolUse": {"toolUseId": ident, "name": name, "input": arguments}}
                for ident, name, arguments in calls
            ]
            if answer.text and not calls:
                content.append({"text": answer.text})
            return web.json_response(
                {
                    "output": {"message": {"role": "assistant", "content": content}},
                    "stopReason": stop,
                    "usage": usage,
                    "metrics": {"latencyMs": _elapsed_ms(started)},
                }
            )
        response, writer = await self._event_stream(request)
        await writer.event("messageStart", {"role": "assistant"})
        for index, (ident, name, arguments) in enumerate(calls):
            start = {"toolUse": {"toolUseId": ident, "name": name}}
            await writer.event("contentBlockStart", {"contentBlockIndex": index, "start": start})
            for piece in _fragments(json.dumps(arguments, separators=(",", ":"))):
                delta = {"toolUse": {"input": piece}}
                await writer.event(
                    "contentBlockDelta", {"contentBlockIndex": index, "delta": delta}
                )
                await asyncio.sleep(self.stream_chunk_delay)
            await writer.event("contentBlockStop", {"contentBlockIndex": index})
        if answer.text and not calls:
            for word in _words(answer.text):
                await writer.event(
                    "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": word}}
                )
                await asyncio.sleep(self.stream_chunk_delay)
            await writer.event("contentBlockStop", {"contentBlockIndex": 0})
        await writer.event("messageStop", {"stopReason": stop})
        await writer.event(
            "metadata", {"usage": usage, "metrics": {"latencyMs": _elapsed_ms(started)}}
        )
        await response.write_eof()
        return response

    async def _event_stream(self, request: web.Request) -> tuple[web.StreamResponse, _Frames]:
        response = web.StreamResponse(
            headers={
                "Content-Type": EVENT_STREAM,
                "x-amzn-bedrock-content-type": "application/json",
            }
        )
        await response.prepare(request)
        return response, _Frames(_EventWriter(response))

    # --- InvokeModel (Claude)

    async def _invoke(
        self,
        request: web.Request,
        model: str,
        body: dict[str, Any],
        stream: bool,
        started: float,
    ) -> web.StreamResponse:
        ask = read_invoke_request(body, model)
        answer = decide(ask, self.reply_text(model))
        read, marked = self._prefixes.match(f"messages\0{model}", ask.pieces, ask.breakpoints)
        usage = {
            "input_tokens": ask.words - marked,
            "cache_creation_input_tokens": marked - read,
            "cache_read_input_tokens": read,
            "output_tokens": answer.output_tokens,
        }
        self.report(ask.words, answer.output_tokens, read)
        message = _anthropic_message(model, answer, usage)
        if not stream:
            return web.json_response(
                message,
                headers={
                    "X-Amzn-Bedrock-Input-Token-Count": str(usage["input_tokens"]),
                    "X-Amzn-Bedrock-Output-Token-Count": str(usage["output_tokens"]),
                    "X-Amzn-Bedrock-Invocation-Latency": str(_elapsed_ms(started)),
                },
            )
        response, writer = await self._event_stream(request)
        first_byte = _elapsed_ms(started)
        events = _anthropic_events(message)
        for n, event in enumerate(events):
            if n == len(events) - 1:
                event["amazon-bedrock-invocationMetrics"] = {
                    "inputTokenCount": usage["input_tokens"],
                    "outputTokenCount": usage["output_tokens"],
                    "invocationLatency": _elapsed_ms(started),
                    "firstByteLatency": first_byte,
                }
            data = base64.b64encode(json.dumps(event).encode()).decode()
            await writer.event("chunk", {"bytes": data})
            await asyncio.sleep(self.stream_chunk_delay)
        await response.write_eof()
        return response

    # --- control

    def _control_app(self) -> web.Application:
        app = super()._control_app()
        app.router.add_put("/credentials", self._put_credentials)
        app.router.add_delete("/credentials/{key}", self._delete_credentials)
        return app

    async def _put_api_key(self, request: web.Request) -> web.Response:
        self.api_keys = {(await request.json())["apiKey"]}
        return web.Response(status=204)

    async def _put_credentials(self, request: web.Request) -> web.Response:
        data = await request.json()
        credentials = AwsCredentials(
            data["accessKeyId"],
            data["secretAccessKey"],
            data.get("sessionToken"),
            data.get("expires"),
        )
        self.add_credentials(credentials)
        return web.Response(status=204)

    async def _delete_credentials(self, request: web.Request) -> web.Response:
        self.remove_credentials(request.match_info["key"])
        return web.Response(status=204)


# --- event streams


def event_frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One AWS event-stream message: prelude (total and headers length, their CRC32), string
    headers, the payload and the message's CRC32, all big-endian."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value.encode()))
        + value.encode()
        for name, value in headers.items()
    )  # fmt: skip
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", binascii.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", binascii.crc32(message))


class _Frames:
    """Writes event-stream events, padded as AWS pads them, through a writer that splits
    every third frame across two writes."""

    def __init__(self, writer: _EventWriter) -> None:
        self._writer = writer
        self._count = 0

    async def event(self, name: str, payload: dict[str, Any]) -> None:
        self._count += 1
        padding = string.ascii_letters[: 1 + self._count % 20]
        data = json.dumps({**payload, "p": padding}).encode()
        headers = {
            ":event-type": name,
            ":content-type": "application/json",
            ":message-type": "event",
        }
        await self._writer.write(event_frame(headers, data))


# --- Converse requests

CONVERSE_FIELDS = (
    "messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
    "additionalModelRequestFields", "promptVariables", "additionalModelResponseFieldPaths",
    "requestMetadata", "performanceConfig", "serviceTier", "outputConfig",
)  # fmt: skip
CONTENT_BLOCKS = (
    "text", "image", "document", "video", "audio", "toolUse", "toolResult", "guardContent",
    "cachePoint", "reasoningContent", "citationsContent", "searchResult",
)  # fmt: skip
SYSTEM_BLOCKS = ("text", "guardContent", "cachePoint")
RESULT_BLOCKS = ("json", "text", "image", "document", "video", "searchResult")
IMAGE_FORMATS = ("png", "jpeg", "gif", "webp")
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_.:-]{1,64}")


def _invalid_input(message: str) -> ProviderError:
    return ProviderError(400, "ValidationException", message)


def _constraint(path: str, constraint: str, value: Any = None) -> ProviderError:
    shown = "" if value is None else f" '{value}'"
    return _invalid_input(
        f"1 validation error detected: Value{shown} at '{path}' failed to satisfy constraint: "
        f"{constraint}"
    )


def _at(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _member(path: str, index: int) -> str:
    """AWS's path of a list's member: counted from 1."""
    return f"{path}.{index + 1}.member"


def _fields(value: Any, allowed: Iterable[str], path: str, required: Iterable[str] = ()) -> None:
    obj = _object(value, path)
    allowed = list(allowed)
    for key in obj:
        if key not in allowed:
            raise _invalid_input(
                f'Unknown parameter in {path or "input"}: "{key}", must be one of: '
                f"{', '.join(allowed)}"
            )
    for key in required:
        if obj.get(key) is None:
            raise _constraint(_at(path, key), "Member must not be null")


def _object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _constraint(path, "Member must be a structure")
    return value


def _array(value: Any, path: str, minimum: int = 0) -> list[Any]:
    if not isinstance(value, list):
        raise _constraint(path, "Member must be a list")
    if len(value) < minimum:
        raise _constraint(path, f"Member must have length greater than or equal to {minimum}", "[]")
    return value


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _constraint(path, "Member must be a string")
    return value


def _union(value: Any, members: Iterable[str], path: str) -> tuple[str, Any]:
    """The one member set of a union."""
    _fields(value, members, path)
    present = [(key, item) for key, item in value.items() if item is not None]
    if len(present) != 1:
        raise _constraint(path, "Member must have exactly one member set")
    return present[0]


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def read_converse_request(body: dict[str, Any]) -> Ask:
    """Checks a Converse request as Bedrock does (strictly: unknown fields are refused); what it
    asks for. The model id is in the path, so not in `body`."""
    _fields(body, CONVERSE_FIELDS, "")
    pieces: list[tuple[int, str]] = []
    breakpoints: list[int] = []

    def cache_point(value: Any, path: str) -> None:
        _fields(value, ("type", "ttl"), path, required=("type",))
        if value["type"] != "default":
            raise _constraint(
                _at(path, "type"), "Member must satisfy enum value set: [default]", value["type"]
            )
        if pieces:
            breakpoints.append(len(pieces) - 1)

    stops: list[str] = []
    max_tokens = None
    if body.get("inferenceConfig") is not None:
        config = body["inferenceConfig"]
        _fields(config, ("maxTokens", "temperature", "topP", "stopSequences"), "inferenceConfig")
        if config.get("maxTokens") is not None:
            max_tokens = config["maxTokens"]
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
                raise _constraint("inferenceConfig.maxTokens", "Member must be an integer")
            if max_tokens < 1:
                raise _constraint(
                    "inferenceConfig.maxTokens",
                    "Member must have value greater than or equal to 1",
                    max_tokens,
                )
        for name in ("temperature", "topP"):
            number = config.get(name)
            if number is None:
                continue
            path = f"inferenceConfig.{name}"
            if not isinstance(number, int | float) or isinstance(number, bool):
                raise _constraint(path, "Member must be a number")
            if number < 0:
                raise _constraint(path, "Member must have value greater than or equal to 0", number)
            if number > 1:
                raise _constraint(path, "Member must have value less than or equal to 1", number)
        for k, stop in enumerate(
            _array(config.get("stopSequences", []), "inferenceConfig.stopSequences")
        ):
            stops.append(_text(stop, _member("inferenceConfig.stopSequences", k)))
    for name in ("additionalModelRequestFields", "promptVariables", "requestMetadata"):
        if body.get(name) is not None:
            _object(body[name], name)

    tools: list[tuple[str, dict[str, Any]]] = []
    choice, named = "auto", None
    if body.get("toolConfig") is not None:
        config = body["toolConfig"]
        _fields(config, ("tools", "toolChoice"), "toolConfig", required=("tools",))
        for k, tool in enumerate(_array(config["tools"], "toolConfig.tools", minimum=1)):
            path = _member("toolConfig.tools", k)
            kind, spec = _union(tool, ("toolSpec", "systemTool", "cachePoint"), path)
            path = _at(path, kind)
            if kind == "cachePoint":
                cache_point(spec, path)
                continue
            if kind == "systemTool":
                _fields(spec, ("name",), path, required=("name",))
                pieces.append((0, _canonical(tool)))
                continue
            _fields(spec, ("name", "description", "inputSchema", "strict"), path,
                    required=("name", "inputSchema"))  # fmt: skip
            name = _text(spec["name"], _at(path, "name"))
            if not TOOL_NAME.fullmatch(name):
                raise _constraint(
                    _at(path, "name"),
                    "Member must satisfy regular expression pattern: [a-zA-Z0-9_-]+",
                    name,
                )
            if name in [known for known, _ in tools]:
                raise _invalid_input(f"The toolConfig contains more than one tool named {name}.")
            if spec.get("description") is not None and not _text(
                spec["description"], _at(path, "description")
            ):
                raise _constraint(
                    _at(path, "description"), "Member must have length greater than or equal to 1"
                )
            _, schema = _union(spec["inputSchema"], ("json",), _at(path, "inputSchema"))
            schema = _object(schema, _at(path, "inputSchema.json"))
            if schema.get("type") != "object":
                raise _invalid_input(
                    f"The value at {path}.inputSchema.json.type must be object. "
                    "Update the input schema and try again."
                )
            tools.append((name, schema))
            pieces.append((0, _canonical(tool)))
        if config.get("toolChoice") is not None:
            path = "toolConfig.toolChoice"
            kind, value = _union(config["toolChoice"], ("auto", "any", "tool"), path)
            if kind == "tool":
                _fields(value, ("name",), _at(path, "tool"), required=("name",))
                named = _text(value["name"], f"{path}.tool.name")
                if named not in [name for name, _ in tools]:
                    raise _invalid_input(
                        f"The tool {named} in toolChoice is not in toolConfig.tools."
                    )
                choice = "named"
            else:
                _fields(value, (), _at(path, kind))

    words = 0
    for k, block in enumerate(_array(body.get("system", []), "system")):
        path = _member("system", k)
        kind, value = _union(block, SYSTEM_BLOCKS, path)
        if kind == "cachePoint":
            cache_point(value, _at(path, kind))
        elif kind == "text":
            text = _text(value, _at(path, kind))
            if not text.strip():
                raise _invalid_input(
                    f"The text field in the SystemContentBlock object at system.{k} is blank. "
                    "Add text to the text field, and try again."
                )
            words += len(text.split())
            pieces.append((len(text.split()), _canonical(["system", block])))

    messages = _array(body.get("messages"), "messages") if "messages" in body else []
    if not messages:
        raise _invalid_input("A conversation must start with a user message. Try again with a "
                             "conversation that starts with a user message.")  # fmt: skip
    pending: list[str] = []  # the tool uses of the previous assistant turn
    last_results: list[tuple[str, str]] = []
    last_images: list[str] = []
    previous = None
    for i, message in enumerate(messages):
        path = _member("messages", i)
        _fields(message, ("role", "content"), path, required=("role", "content"))
        role = message["role"]
        if role not in ("user", "assistant"):
            raise _constraint(
                _at(path, "role"), "Member must satisfy enum value set: [user, assistant]", role
            )
        if i == 0 and role != "user":
            raise _invalid_input("A conversation must start with a user message. Try again with "
                                 "a conversation that starts with a user message.")  # fmt: skip
        if role == previous:
            raise _invalid_input(
                "A conversation must alternate between user and assistant roles. Make sure the "
                "conversation alternates between user and assistant roles and try again."
            )
        previous = role
        blocks = _array(message["content"], _at(path, "content"), minimum=1)
        results: list[tuple[str, str]] = []
        images: list[str] = []
        uses: list[str] = []
        for j, block in enumerate(blocks):
            block_path = _member(_at(path, "content"), j)
            kind, value = _union(block, CONTENT_BLOCKS, block_path)
            where = f"messages.{i}.content.{j}"
            count = 0
            if kind == "cachePoint":
                cache_point(value, _at(block_path, kind))
                continue
            if kind == "text":
                text = _text(value, _at(block_path, kind))
                if not text.strip():
                    raise _invalid_input(
                        f"The text field in the ContentBlock object at {where} is blank. Add "
                        "text to the text field, and try again."
                    )
                count = len(text.split())
            elif kind == "image":
                images.append(_converse_image(value, _at(block_path, kind)))
            elif kind == "toolUse":
                if role != "assistant":
                    raise _invalid_input(
                        f"The toolUse block at {where} is in a user message; toolUse blocks "
                        "can only be in assistant messages."
                    )
                uses.append(_converse_tool_use(value, _at(block_path, kind)))
            elif kind == "toolResult":
                if role != "user":
                    raise _invalid_input(
                        f"The toolResult block at {where} is in an assistant message; "
                        "toolResult blocks can only be in user messages."
                    )
                ident, text = _converse_tool_result(value, _at(block_path, kind))
                if ident not in pending:
                    raise _invalid_input(
                        f"The number of toolResult blocks at messages.{i}.content exceeds the "
                        "number of toolUse blocks of previous turn."
                    )
                pending.remove(ident)
                results.append((ident, text))
                count = len(text.split())
            else:
                _object(value, _at(block_path, kind))
            words += count
            pieces.append((count, _canonical([role, block])))
        if role == "user":
            if pending:
                raise _missing_results(i, pending)
            last_results, last_images = results, images
        else:
            pending = uses
    if pending:
        raise _missing_results(len(messages), pending)
    return Ask(
        words=max(words, 1),
        pieces=pieces,
        breakpoints=breakpoints,
        tools=tools,
        tool_choice=choice,
        named_tool=named,
        parallel=True,
        tool_results=last_results,
        images=last_images,
        stops=stops,
        max_tokens=max_tokens,
    )


def _missing_results(index: int, pending: list[str]) -> ProviderError:
    return _invalid_input(
        f"Expected toolResult blocks at messages.{index}.content for the following Ids: "
        f"{', '.join(pending)}"
    )


def _converse_image(value: Any, path: str) -> str:
    _fields(value, ("format", "source"), path, required=("format", "source"))
    kind = value["format"]
    if kind not in IMAGE_FORMATS:
        raise _constraint(
            _at(path, "format"), "Member must satisfy enum value set: [png, jpeg, gif, webp]", kind
        )
    where, source = _union(value["source"], ("bytes", "s3Location"), _at(path, "source"))
    if where == "s3Location":
        _fields(source, ("uri", "bucketOwner"), f"{path}.source.s3Location", required=("uri",))
        return f"I see an image at {source['uri']}"
    data = _base64(_text(source, f"{path}.source.bytes"))
    media_type = f"image/{kind}"
    if data is None or _image_type(data) != media_type or media_type not in IMAGE_TYPES:
        raise _invalid_input(
            f"The image at {path}.source.bytes is not a valid {kind} image. Check the image "
            "format and try again."
        )
    return f"I see an image: {media_type} {len(data)} bytes"


def _converse_tool_use(value: Any, path: str) -> str:
    _fields(value, ("toolUseId", "name", "input", "type"), path,
            required=("toolUseId", "name", "input"))  # fmt: skip
    ident = _text(value["toolUseId"], _at(path, "toolUseId"))
    if not TOOL_USE_ID.fullmatch(ident):
        raise _constraint(
            _at(path, "toolUseId"),
            "Member must satisfy regular expression pattern: [a-zA-Z0-9_.:-]+",
            ident,
        )
    _text(value["name"], _at(path, "name"))
    return ident


def _converse_tool_result(value: Any, path: str) -> tuple[str, str]:
    _fields(value, ("toolUseId", "content", "status", "type"), path,
            required=("toolUseId", "content"))  # fmt: skip
    ident = _text(value["toolUseId"], _at(path, "toolUseId"))
    if value.get("status") is not None and value["status"] not in ("success", "error"):
        raise _constraint(
            _at(path, "status"), "Member must satisfy enum value set: [success, error]",
            value["status"],
        )  # fmt: skip
    texts = []
    for k, block in enumerate(_array(value["content"], _at(path, "content"))):
        block_path = _member(_at(path, "content"), k)
        kind, inner = _union(block, RESULT_BLOCKS, block_path)
        if kind == "text":
            texts.append(_text(inner, _at(block_path, kind)))
        elif kind == "json":
            texts.append(json.dumps(inner))
        elif kind == "image":
            _converse_image(inner, _at(block_path, kind))
    return ident, " ".join(texts)


# --- InvokeModel (Claude) requests


def _malformed(detail: str) -> ProviderError:
    return _invalid_input(
        f"Malformed input request: {detail}, please reformat your input and try again."
    )


def read_invoke_request(body: dict[str, Any], model: str) -> Ask:
    """Checks an InvokeModel body for Claude: Anthropic's Messages body without model and
    stream, with anthropic_version (and maybe anthropic_beta)."""
    for key in ("model", "stream"):
        if key in body:
            raise _malformed(f"#: extraneous key [{key}] is not permitted")
    if "anthropic_version" not in body:
        raise _malformed("#: required key [anthropic_version] not found")
    version = body["anthropic_version"]
    if version not in INVOKE_VERSIONS:
        raise _malformed(
            f"#/anthropic_version: {version} is not a valid enum value; valid versions are "
            f"{', '.join(INVOKE_VERSIONS)}"
        )
    betas = body.get("anthropic_beta", [])
    if not isinstance(betas, list) or not all(isinstance(beta, str) for beta in betas):
        raise _malformed("#/anthropic_beta: expected type: JSONArray of strings")
    rest = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
    return read_messages_request({**rest, "model": model}, INVOKE_VERSIONS[version])


def read_count_tokens_request(body: dict[str, Any], model: str) -> Ask:
    """Checks a CountTokens body: the InvokeModel body (base64) or the Converse request it
    wraps, checked as that operation checks it."""
    _fields(body, ("input",), "", required=("input",))
    kind, value = _union(body["input"], ("invokeModel", "converse"), "input")
    if kind == "converse":
        _fields(value, ("messages", "system", "toolConfig", "additionalModelRequestFields"),
                "input.converse", required=("messages",))  # fmt: skip
        return read_converse_request(value)
    _fields(value, ("body",), "input.invokeModel", required=("body",))
    raw = _base64(_text(value["body"], "input.invokeModel.body"))
    try:
        inner = json.loads(raw) if raw is not None else None
    except ValueError:
        inner = None
    if not isinstance(inner, dict):
        raise _malformed("#: expected type: JSONObject")
    if "anthropic." not in model:
        raise _invalid_input(
            "The fake counts InvokeModel bodies only for Anthropic Claude models; use converse."
        )
    return read_invoke_request(inner, model)


def _anthropic_message(model: str, answer: Answer, usage: dict[str, int]) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "tool_use", "id": f"toolu_bdrk_{secrets.token_hex(12)}", "name": name,
         "input": arguments}
        for name, arguments in answer.calls
    ]  # fmt: skip
    if answer.text and not answer.calls:
        content.append({"type": "text", "text": answer.text})
    return {
        "id": f"msg_bdrk_{secrets.token_hex(12)}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": ANTHROPIC_STOP[answer.finish],
        "stop_sequence": answer.stop_sequence,
        "usage": usage,
    }


def _anthropic_events(message: dict[str, Any]) -> list[dict[str, Any]]:
    """Anthropic's stream events for `message`, as Bedrock sends them (no ping)."""
    usage = message["usage"]
    started = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": 1},
    }
    events: list[dict[str, Any]] = [{"type": "message_start", "message": started}]
    for index, block in enumerate(message["content"]):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": word} for word in _words(block["text"])]
        else:
            opening = {**block, "input": {}}
            deltas = [
                {"type": "input_json_delta", "partial_json": piece}
                for piece in ["", *_fragments(json.dumps(block["input"]))]
            ]
        events.append({"type": "content_block_start", "index": index, "content_block": opening})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    events.append(
        {
            "type": "message_delta",
            "delta": {
                "stop_reason": message["stop_reason"],
                "stop_sequence": message["stop_sequence"],
            },
            "usage": {"output_tokens": usage["output_tokens"]},
        }
    )
    events.append({"type": "message_stop"})
    return events


# --- helpers


def _denied(kind: str, message: str) -> ProviderError:
    return ProviderError(403, kind, message)


def _parse_stamp(stamp: str) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ")))
    except ValueError:
        return None


def _amz_date(when: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))


def _elapsed_ms(started: float) -> int:
    return max(1, int((time.monotonic() - started) * 1000))


def _bedrock_tool_use_id() -> str:
    alphabet = string.ascii_letters + string.digits
    return "tooluse_" + "".join(secrets.choice(alphabet) for _ in range(22))


@contextlib.asynccontextmanager
async def running_bedrock(
    fake: FakeBedrock, control_port: int | None = None
) -> AsyncIterator[FakeBedrock]:
    await fake.start(control_port)
    try:
        yield fake
    finally:
        await fake.stop()
