"""Fake LLM providers that speak the real wire formats: OpenAI, Azure OpenAI, Anthropic.

They check keys the way each provider does, serve model listings and completions (plain and
streamed), record every request they receive, and take faults at run time: any status code,
429 with Retry-After, added latency, refused connections and hung responses. The tests, the
demo and the benchmarks use them as backends; the operator never imports them.

They hold a gateway that translates between OpenAI Chat Completions and Anthropic Messages to
each API's contract. Requests are validated as the real APIs validate them, and refused with
400 `invalid_request_error` naming the field: Anthropic as `<path>: <message>`
(`messages.1.content.0.type: ...`, `n: Extra inputs are not permitted`), OpenAI with `param`
set (`messages[1].content[0].type`; `Unrecognized request argument supplied: top_k`), except
that OpenAICompatible ignores top-level fields it does not know, as vLLM does. Where
the real API is lenient, the fakes are strict, so that what passes them passes the real API:
Anthropic messages must alternate user/assistant, starting with user (the real API merges
consecutive turns), and may not have the role system (its SDK types allow it). Answers have
the real shapes; streams are the real event sequences, written in many writes, every third
event split across two of them, so that a reader must reassemble.

Anthropic takes its key as `x-api-key` or as a bearer token (its SDKs send the bearer token
since API version 2026-10-21), and requires `anthropic-version` 2023-06-01 or 2026-10-21. On
2026-10-21 it refuses `temperature`, `top_p` and `top_k`, document blocks in assistant
messages and citations on user text blocks; on 2023-06-01 it takes the sampling parameters
within their bounds. `max_tokens` 0 answers nothing (it only fills the prompt cache).

Azure OpenAI takes its key as `api-key` (or a bearer token, as on its v1 API); or, given an
`entra` (a FakeEntra), only that Entra's tokens as `Authorization: Bearer`, as a resource with
local auth disabled does: an `api-key` header is refused 403 `AuthenticationTypeDisabled`, a
token it did not issue, or that expired or was revoked, 401. Its control port then also
steers the Entra's tokens and client secret.

What they answer is deterministic, and the same on both APIs, so that a request translated
from one API to the other gets the answer the original would have got:

1. Tool calls. When the request has tools and a tool choice other than none, and its last user
   turn carries no tool results, the fake calls tools instead of answering: the tool that the
   tool choice names (Anthropic `{"type": "tool"}`, OpenAI `{"type": "function"}`); else the
   first two tools together, when there are at least two and parallel calls are allowed
   (OpenAI `parallel_tool_calls` not false, Anthropic `disable_parallel_tool_use` not true);
   else the first tool. A call's arguments fill each `required` property of the tool's schema
   with a sample of its type (`sample_arguments`): string "sample", integer 1, number 1.5,
   boolean true, array [], object {}; null, or no type, null; of a list of types the first that
   is not "null". Anthropic answers with only the tool_use blocks and stop_reason "tool_use";
   OpenAI with content null, the tool_calls and finish_reason "tool_calls". Call ids are random
   (`toolu_...`, `call_...`).
2. Otherwise text, the first of:
   - the last user turn carries tool results: `Tool results: <id>=<text>; <id>=<text>`, in the
     turn's order; a result's text is its string content, or its text blocks (parts) joined
     by " ";
   - it has images: `I see an image: <media type> <N> bytes` for base64 data (N decoded bytes;
     OpenAI: the data URL's media type) or `I see an image at <url>`, several joined by "; ";
   - else `Hello from <provider> <model> on port <port>.` (`reply_text`).
   The last user turn is Anthropic's last user message, and OpenAI's user and tool messages
   after the last assistant message. With a JSON schema output format (OpenAI
   `response_format` json_schema, Anthropic `output_config.format`) the text is instead
   `json.dumps` of the schema's required properties filled with samples as above; with OpenAI's
   `json_object`, `json.dumps({"text": <the text>})`.
3. Stop sequences (OpenAI `stop`, Anthropic `stop_sequences`): the text is cut before the
   first occurrence of any; Anthropic says stop_reason "stop_sequence" and which, OpenAI
   finish_reason "stop".
4. A token is a whitespace-separated word. Text longer than `max_tokens` (OpenAI:
   `max_completion_tokens` or `max_tokens`) is cut to that many words: Anthropic stop_reason
   "max_tokens", OpenAI finish_reason "length". Tool calls are never cut.
5. Usage. The request's tokens are the words of all its text, at least 1: system prompt,
   message strings, text blocks and parts, tool results' text; not tool definitions, tool
   calls or images. Output tokens: the words of the text, or 10 per tool call (for each of
   OpenAI's `n` choices). Each fake keeps a prompt cache: hashes of the request prefixes it
   has seen (the model, the tools, then the system prompt and messages in order).
   - Anthropic: the prefixes that end at a block with `cache_control` (or, with a top-level
     `cache_control`, at the last block). The longest one seen before is read
     (`cache_read_input_tokens`: its words); the rest up to the last marked block is written
     (`cache_creation_input_tokens`); `input_tokens` is the words after that, so the three add
     up to the request's tokens, as on the real API.
   - OpenAI: the prefixes that end at each message. `prompt_tokens_details.cached_tokens` is
     the words of the longest one seen before rounded down to a multiple of 128, when that
     prefix has at least 1024 words; else 0. `prompt_tokens` counts every word.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import re
import ssl
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from aiohttp import web

PROVIDERS = ("OpenAI", "AzureOpenAI", "Anthropic", "OpenAICompatible")
ANTHROPIC_VERSION = "2023-06-01"
# The API versions Anthropic serves; the newer refuses sampling parameters.
LATEST_ANTHROPIC_VERSION = "2026-10-21"
ANTHROPIC_VERSIONS = (ANTHROPIC_VERSION, LATEST_ANTHROPIC_VERSION)
EMBEDDING_DIMENSIONS = 8
# Output tokens a tool call counts for.
TOOL_CALL_TOKENS = 10
# OpenAI caches prompts of at least this many tokens, in steps of CACHE_STEP.
CACHE_MINIMUM, CACHE_STEP = 1024, 128
# Azure OpenAI's refusals of an Entra-only resource: a bad bearer token, and any key.
ENTRA_UNAUTHORIZED = (
    "Unauthorized. Access token is missing, invalid, audience is incorrect "
    "(https://cognitiveservices.azure.com), or have expired."
)
KEY_AUTH_DISABLED_CODE = "AuthenticationTypeDisabled"
KEY_AUTH_DISABLED = "Key based authentication is disabled for this resource."


class TokenIssuer(Protocol):
    """Where an Azure OpenAI fake's tokens come from (FakeEntra; a protocol, as the Entra fake
    is built on this module)."""

    def valid(self, token: str) -> bool: ...

    def token_control_routes(self, app: web.Application) -> None: ...


@dataclass
class Fault:
    """What the provider does instead of answering normally.

    status: answer every API request with this HTTP status, in the provider's error format.
    retry_after: seconds, sent as Retry-After (with status 429, say).
    latency_ms: wait this long before answering.
    hang: accept requests and never answer them.
    refuse: close the listening socket, so connections are refused.
    """

    status: int | None = None
    retry_after: int | None = None
    latency_ms: int = 0
    hang: bool = False
    refuse: bool = False

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Fault:
        return cls(
            status=data.get("status"),
            retry_after=data.get("retryAfter"),
            latency_ms=int(data.get("latencyMs", 0)),
            hang=bool(data.get("hang", False)),
            refuse=bool(data.get("refuse", False)),
        )


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any
    time: float = field(default_factory=time.time)


class ProviderError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message
        self.param, self.code = param, code


@dataclass
class Ask:
    """What a request asks for, read from either API: the fakes answer from this alone."""

    words: int
    # The prompt as the cache sees it, in order: (words, canonical JSON) of each piece; and
    # the indexes of the pieces that end a cacheable prefix.
    pieces: list[tuple[int, str]]
    breakpoints: list[int]
    tools: list[tuple[str, dict[str, Any]]]  # name, its input's JSON schema
    tool_choice: str = "auto"  # "auto" (or any, required), "none", "named"
    named_tool: str | None = None
    parallel: bool = True
    tool_results: list[tuple[str, str]] = field(default_factory=list)  # of the last user turn
    images: list[str] = field(default_factory=list)  # of the last user turn, as replies
    stops: list[str] = field(default_factory=list)
    max_tokens: int | None = None
    schema: dict[str, Any] | None = None  # a JSON schema output format
    json_object: bool = False


@dataclass
class Answer:
    text: str
    calls: list[tuple[str, dict[str, Any]]]
    finish: str  # "end", "stop_sequence", "max_tokens" or "tool_use"
    stop_sequence: str | None
    output_tokens: int


# The fields of FakeProvider.reported.
REPORTED = ("answers", "input", "output", "cached")

ANTHROPIC_STOP = {
    "end": "end_turn",
    "stop_sequence": "stop_sequence",
    "max_tokens": "max_tokens",
    "tool_use": "tool_use",
}
OPENAI_FINISH = {
    "end": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
}


class FakeProvider:
    """One provider on one port, plus an optional control port for faults, records and key
    rotation."""

    def __init__(
        self,
        provider: str,
        api_key: str,
        models: list[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        stream_chunk_delay: float = 0.0,
        ssl_context: ssl.SSLContext | None = None,
        keep_requests: int | None = None,
        entra: TokenIssuer | None = None,
    ) -> None:
        """`entra`: AzureOpenAI only; take this issuer's tokens instead of `api_key`."""
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
        if entra is not None and provider != "AzureOpenAI":
            raise ValueError(f"only AzureOpenAI takes Entra ID tokens, not {provider}")
        self.provider = provider
        self.api_key = api_key
        self.entra = entra
        self.models = models or ["fake-model"]
        self.host = host
        self.port = port
        self.stream_chunk_delay = stream_chunk_delay
        self.ssl_context = ssl_context
        self.fault = Fault()
        # Only the newest `keep_requests` (all if None): a long load run stays small.
        self.requests: deque[RecordedRequest] = deque(maxlen=keep_requests)
        # Every token this provider reported in an answer, the OpenTelemetry way (input
        # counts cached input too): what a gateway's accounting must add up to.
        self.reported: dict[str, int] = dict.fromkeys(REPORTED, 0)
        self._prefixes = _Prefixes()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._control: web.AppRunner | None = None
        self._released = asyncio.Event()

    # --- lifecycle

    async def start(self, control_port: int | None = None) -> None:
        self._runner = web.AppRunner(self._api_app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        await self._listen()
        if control_port is not None:
            self._control = web.AppRunner(self._control_app(), handle_signals=False)
            await self._control.setup()
            await web.TCPSite(self._control, self.host, control_port).start()

    async def stop(self) -> None:
        self._released.set()
        for runner in (self._runner, self._control):
            if runner is not None:
                await runner.cleanup()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(
            self._runner, self.host, self.port, reuse_address=True, ssl_context=self.ssl_context
        )
        await self._site.start()
        if self.port == 0:
            # Bound to a free port: keep it, so that a refuse-and-recover reopens the same one.
            self.port = int(self._runner.addresses[0][1])

    @property
    def url(self) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{self.host}:{self.port}"

    async def set_fault(self, fault: Fault) -> None:
        """Switch faults at run time; refusing closes the socket, clearing reopens it."""
        was_refusing, self.fault = self.fault.refuse, fault
        if fault.refuse and not was_refusing and self._site is not None:
            await self._site.stop()
            self._site = None
            # A dead provider drops its open connections too, not only the listening socket.
            assert self._runner is not None
            assert self._runner.server is not None
            for connection in list(self._runner.server.connections):
                connection.force_close()
        elif not fault.refuse and was_refusing:
            await self._listen()
        if not fault.hang:
            # Let hung requests finish, then arm the event again for the next hang.
            self._released.set()
            self._released = asyncio.Event()

    # --- the provider's API

    def _api_app(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_fault], client_max_size=64 * 2**20)
        app.on_response_prepare.append(self._stamp)
        if self.provider == "AzureOpenAI":
            app.router.add_get("/openai/models", self._list_models)
            app.router.add_get("/openai/deployments", self._list_models)
            app.router.add_post("/openai/deployments/{deployment}/{operation:.+}", self._azure)
            app.router.add_get("/openai/v1/models", self._list_models)
            app.router.add_post("/openai/v1/{operation:.+}", self._openai)
        elif self.provider == "Anthropic":
            app.router.add_get("/v1/models", self._list_models)
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
            app.router.add_post("/v1/chat/completions", self._openai)  # its OpenAI-compatible API
        else:
            app.router.add_get("/v1/models", self._list_models)
            app.router.add_post("/v1/{operation:.+}", self._openai)
        return app

    async def _stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer carries the provider's request id header."""
        name = "request-id" if self.provider == "Anthropic" else "x-request-id"
        if name not in response.headers:
            response.headers[name] = _request_id()

    @web.middleware
    async def _record_and_fault(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body: Any = None
        raw = await request.read()
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
                raise ProviderError(fault.status, _error_kind(fault.status), "injected fault")
            self._authenticate(request)
            return await handler(request)  # type: ignore[no-any-return]
        except ProviderError as error:
            response = self._error(error)
            if fault.retry_after is not None:
                response.headers["Retry-After"] = str(fault.retry_after)
            return response

    def _authenticate(self, request: web.Request) -> None:
        if self.provider == "AzureOpenAI":
            offered = request.headers.get("api-key")
            if offered is None and request.headers.get("Authorization", "").startswith("Bearer "):
                offered = request.headers["Authorization"].removeprefix("Bearer ")
            if not request.path.startswith("/openai/v1/") and "api-version" not in request.query:
                raise ProviderError(404, "NotFound", "Resource not found: api-version is missing")
            if self.entra is not None:
                self._authenticate_entra(request, self.entra)
                return
        elif self.provider == "Anthropic":
            offered = request.headers.get("x-api-key")
            authorization = request.headers.get("Authorization", "")
            if offered is None and authorization.startswith("Bearer "):
                # A key also goes as a bearer token: Anthropic's SDKs send it so since API
                # version 2026-10-21, and OpenAI's SDK to the OpenAI-compatible API.
                offered = authorization.removeprefix("Bearer ")
            version = request.headers.get("anthropic-version")
            if offered == self.api_key and request.path != "/v1/chat/completions":
                if version is None:
                    raise ProviderError(
                        400, "invalid_request_error", "anthropic-version: header is required"
                    )
                if version not in ANTHROPIC_VERSIONS:
                    raise ProviderError(
                        400,
                        "invalid_request_error",
                        f"anthropic-version: unknown version {version!r}; valid versions are "
                        f"{', '.join(ANTHROPIC_VERSIONS)}",
                    )
        else:
            authorization = request.headers.get("Authorization", "")
            offered = authorization.removeprefix("Bearer ") if authorization else None
        if offered != self.api_key:
            raise ProviderError(401, _error_kind(401), "Incorrect API key provided")

    def _authenticate_entra(self, request: web.Request, entra: TokenIssuer) -> None:
        # Local auth disabled: a key is refused whether or not it is right, and before any
        # token the request also carries.
        if "api-key" in request.headers:
            raise ProviderError(
                403, KEY_AUTH_DISABLED_CODE, KEY_AUTH_DISABLED, code=KEY_AUTH_DISABLED_CODE
            )
        authorization = request.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ")
        if not authorization.startswith("Bearer ") or not entra.valid(token):
            raise ProviderError(401, _error_kind(401), ENTRA_UNAUTHORIZED)

    def _error(self, error: ProviderError) -> web.Response:
        if self.provider == "Anthropic":
            ident = _request_id()
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": error.kind, "message": error.message},
                "request_id": ident,
            }
            return web.json_response(payload, status=error.status, headers={"request-id": ident})
        if self.provider == "AzureOpenAI" and error.status in (401, 404):
            payload = {"error": {"code": str(error.status), "message": error.message}}
        elif self.provider == "AzureOpenAI" and error.code == KEY_AUTH_DISABLED_CODE:
            payload = {"error": {"code": error.code, "message": error.message}}
        else:
            payload = {
                "error": {
                    "message": error.message,
                    "type": error.kind,
                    "param": error.param,
                    "code": error.code,
                },
            }
        return web.json_response(payload, status=error.status)

    async def _list_models(self, request: web.Request) -> web.Response:
        data: list[dict[str, Any]]
        if self.provider == "Anthropic":
            data = [
                {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in self.models
            ]
            return web.json_response(
                {
                    "data": data,
                    "has_more": False,
                    "first_id": self.models[0],
                    "last_id": self.models[-1],
                }
            )
        data = [
            {"id": m, "object": "model", "created": 1735689600, "owned_by": "fake"}
            for m in self.models
        ]
        return web.json_response({"object": "list", "data": data})

    async def _azure(self, request: web.Request) -> web.StreamResponse:
        deployment = request.match_info["deployment"]
        if deployment not in self.models:
            raise ProviderError(404, "DeploymentNotFound", f"deployment {deployment} not found")
        return await self._complete(request, request.match_info["operation"], deployment)

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        operation = request.match_info.get("operation", "chat/completions")
        return await self._complete(request, operation, None)

    async def _complete(
        self, request: web.Request, operation: str, deployment: str | None
    ) -> web.StreamResponse:
        body = await _json_body(request)
        model = deployment or body.get("model")
        if deployment is None and model not in self.models:
            raise ProviderError(
                404,
                "invalid_request_error",
                f"The model `{model}` does not exist",
                code="model_not_found",
            )
        if operation == "embeddings":
            inputs = body.get("input", "")
            count = len(inputs) if isinstance(inputs, list) else 1
            return web.json_response(
                {
                    "object": "list",
                    "model": model,
                    "data": [
                        {
                            "object": "embedding",
                            "index": i,
                            "embedding": [0.1 * (i + 1)] * EMBEDDING_DIMENSIONS,
                        }
                        for i in range(count)
                    ],
                    "usage": {"prompt_tokens": count, "total_tokens": count},
                }
            )
        if operation == "chat/completions":
            return await self._chat(request, body, str(model))
        if operation != "completions":
            raise ProviderError(404, "invalid_request_error", f"unknown operation {operation}")
        return await self._legacy_completion(request, body, str(model))

    # --- OpenAI Chat Completions

    async def _chat(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        ask = read_chat_request(
            body,
            azure=self.provider == "AzureOpenAI",
            lenient=self.provider == "OpenAICompatible",
        )
        answer = decide(ask, self.reply_text(model))
        prefix, _ = self._prefixes.match(f"chat\0{model}", ask.pieces, ask.breakpoints)
        cached = prefix // CACHE_STEP * CACHE_STEP if prefix >= CACHE_MINIMUM else 0
        choices = int(body.get("n") or 1)
        completion = answer.output_tokens * choices
        usage = {
            "prompt_tokens": ask.words,
            "completion_tokens": completion,
            "total_tokens": ask.words + completion,
            "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": 0,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            options = body.get("stream_options") or {}
            include_usage = bool(options.get("include_usage"))
            if include_usage:
                self.report(ask.words, completion, cached)
            return await self._stream_chat(
                request, ident, model, answer, choices, usage if include_usage else None
            )
        self.report(ask.words, completion, cached)
        return web.json_response(
            {
                "id": ident,
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": index,
                        "message": _chat_message(answer),
                        "logprobs": None,
                        "finish_reason": OPENAI_FINISH[answer.finish],
                    }
                    for index in range(choices)
                ],
                "usage": usage,
                "system_fingerprint": "fp_fake",
            }
        )

    async def _stream_chat(
        self,
        request: web.Request,
        ident: str,
        model: str,
        answer: Answer,
        choices: int,
        usage: dict[str, Any] | None,
    ) -> web.StreamResponse:
        response = await _sse(request)
        writer = _EventWriter(response)
        created = int(time.time())

        async def chunk(choice: list[dict[str, Any]], **extra: Any) -> None:
            data: dict[str, Any] = {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "fp_fake",
                "choices": choice,
            }
            if usage is not None:
                data["usage"] = None
            data.update(extra)
            await writer.write(f"data: {json.dumps(data)}\n\n".encode())

        def delta(index: int, value: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {"index": index, "delta": value, "logprobs": None, "finish_reason": finish}

        for index in range(choices):
            content = None if answer.calls else ""
            role = {"role": "assistant", "content": content, "refusal": None}
            await chunk([delta(index, role)])
            for position, (name, arguments) in enumerate(answer.calls):
                opening = {
                    "index": position,
                    "id": _call_id(),
                    "type": "function",
                    "function": {"name": name, "arguments": ""},
                }
                await chunk([delta(index, {"tool_calls": [opening]})])
                for piece in _fragments(json.dumps(arguments, separators=(",", ":"))):
                    call = {"index": position, "function": {"arguments": piece}}
                    await chunk([delta(index, {"tool_calls": [call]})])
                    await asyncio.sleep(self.stream_chunk_delay)
            for word in _words(answer.text) if answer.text else []:
                await chunk([delta(index, {"content": word})])
                await asyncio.sleep(self.stream_chunk_delay)
            await chunk([delta(index, {}, OPENAI_FINISH[answer.finish])])
        if usage is not None:
            await chunk([], usage=usage)
        await writer.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _legacy_completion(
        self, request: web.Request, body: dict[str, Any], model: str
    ) -> web.StreamResponse:
        """The legacy Completions API: the plain reply, plain or streamed."""
        text = self.reply_text(model)
        ident = f"cmpl-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            response = await _sse(request)
            for word in _words(text):
                chunk = {
                    "id": ident,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [{"index": 0, "text": word, "finish_reason": None}],
                }
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(self.stream_chunk_delay)
            done = {
                "id": ident,
                "object": "text_completion",
                "model": model,
                "choices": [{"index": 0, "text": "", "finish_reason": "stop"}],
            }
            await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
            await response.write_eof()
            return response
        return web.json_response(
            {
                "id": ident,
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 5 + len(text.split()),
                },
            }
        )

    # --- Anthropic Messages

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        ask = read_messages_request(body, _anthropic_version(request))
        model = str(body["model"])
        if model not in self.models:
            raise ProviderError(404, "not_found_error", f"model: {model}")
        answer = decide(ask, self.reply_text(model))
        read, marked = self._prefixes.match(f"messages\0{model}", ask.pieces, ask.breakpoints)
        usage = {
            "input_tokens": ask.words - marked,
            "cache_creation_input_tokens": marked - read,
            "cache_read_input_tokens": read,
            "output_tokens": answer.output_tokens,
        }
        self.report(ask.words, answer.output_tokens, read)
        ident = f"msg_{uuid.uuid4().hex[:24]}"
        content: list[dict[str, Any]] = [
            {"type": "tool_use", "id": _tool_use_id(), "name": name, "input": arguments}
            for name, arguments in answer.calls
        ]
        if answer.text and not answer.calls:
            content.append({"type": "text", "text": answer.text})
        message: dict[str, Any] = {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": content,
            "stop_reason": ANTHROPIC_STOP[answer.finish],
            "stop_sequence": answer.stop_sequence,
            "usage": usage,
        }
        if not body.get("stream"):
            return web.json_response(message)
        return await self._stream_messages(request, message)

    async def _stream_messages(
        self, request: web.Request, message: dict[str, Any]
    ) -> web.StreamResponse:
        response = await _sse(request)
        writer = _EventWriter(response)

        async def event(name: str, data: dict[str, Any]) -> None:
            data = {"type": name, **data}
            await writer.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        usage = message["usage"]
        started = {
            **message,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage, "output_tokens": 1},
        }
        await event("message_start", {"message": started})
        await event("ping", {})
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                await event(
                    "content_block_start",
                    {"index": index, "content_block": {"type": "text", "text": ""}},
                )
                for word in _words(block["text"]):
                    text_delta = {"type": "text_delta", "text": word}
                    await event("content_block_delta", {"index": index, "delta": text_delta})
                    await asyncio.sleep(self.stream_chunk_delay)
            else:
                await event(
                    "content_block_start",
                    {"index": index, "content_block": {**block, "input": {}}},
                )
                for piece in ["", *_fragments(json.dumps(block["input"]))]:
                    json_delta = {"type": "input_json_delta", "partial_json": piece}
                    await event("content_block_delta", {"index": index, "delta": json_delta})
                    await asyncio.sleep(self.stream_chunk_delay)
            await event("content_block_stop", {"index": index})
        await event(
            "message_delta",
            {
                "delta": {
                    "stop_reason": message["stop_reason"],
                    "stop_sequence": message["stop_sequence"],
                },
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await event("message_stop", {})
        await response.write_eof()
        return response

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body = await _json_body(request)
        ask = read_messages_request(body, _anthropic_version(request), counting=True)
        if body["model"] not in self.models:
            raise ProviderError(404, "not_found_error", f"model: {body['model']}")
        return web.json_response({"input_tokens": ask.words})

    def reply_text(self, model: str) -> str:
        """The answer every plain completion gets: it names who answered, for split tests."""
        return f"Hello from {self.provider} {model} on port {self.port}."

    def report(self, input_tokens: int, output_tokens: int, cached_tokens: int) -> None:
        """Tally the usage an answer reports as it is sent."""
        for key, tokens in zip(
            REPORTED, (1, input_tokens, output_tokens, cached_tokens), strict=True
        ):
            self.reported[key] += tokens

    # --- control API (a separate port, so it still answers while the API refuses)

    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/requests", self._get_requests)
        app.router.add_delete("/requests", self._clear_requests)
        app.router.add_get("/usage", self._get_usage)
        app.router.add_delete("/usage", self._clear_usage)
        app.router.add_get("/fault", self._get_fault)
        app.router.add_put("/fault", self._put_fault)
        app.router.add_delete("/fault", self._clear_fault)
        app.router.add_put("/api-key", self._put_api_key)
        if self.entra is not None:
            # One control port for both: a subprocess running them need not expose two.
            self.entra.token_control_routes(app)
        return app

    async def _put_api_key(self, request: web.Request) -> web.Response:
        """Rotate the key the provider accepts, as a provider's console does."""
        self.api_key = (await request.json())["apiKey"]
        return web.Response(status=204)

    async def _get_requests(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(r) for r in self.requests])

    async def _clear_requests(self, request: web.Request) -> web.Response:
        self.requests.clear()
        return web.Response(status=204)

    async def _get_usage(self, request: web.Request) -> web.Response:
        return web.json_response(self.reported)

    async def _clear_usage(self, request: web.Request) -> web.Response:
        self.reported = dict.fromkeys(REPORTED, 0)
        return web.Response(status=204)

    async def _get_fault(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.fault))

    async def _put_fault(self, request: web.Request) -> web.Response:
        await self.set_fault(Fault.from_json(await request.json()))
        return web.json_response(asdict(self.fault))

    async def _clear_fault(self, request: web.Request) -> web.Response:
        await self.set_fault(Fault())
        return web.Response(status=204)


# --- the deterministic answer


def decide(ask: Ask, plain: str) -> Answer:
    """What the fake answers to `ask`, whose plain answer is `plain` (see the module's doc)."""
    if ask.max_tokens == 0:
        return Answer("", [], "max_tokens", None, 0)
    if ask.tools and ask.tool_choice != "none" and not ask.tool_results:
        if ask.named_tool is not None:
            chosen = [tool for tool in ask.tools if tool[0] == ask.named_tool][:1]
        else:
            chosen = ask.tools[: 2 if ask.parallel else 1]
        calls = [(name, sample_arguments(schema)) for name, schema in chosen]
        return Answer("", calls, "tool_use", None, TOOL_CALL_TOKENS * len(calls))
    if ask.tool_results:
        text = "Tool results: " + "; ".join(f"{i}={t}" for i, t in ask.tool_results)
    elif ask.images:
        text = "; ".join(ask.images)
    else:
        text = plain
    if ask.schema is not None:
        text = json.dumps(sample_arguments(ask.schema))
    elif ask.json_object:
        text = json.dumps({"text": text})
    finish, stop_sequence = "end", None
    hits = [(text.find(stop), n, stop) for n, stop in enumerate(ask.stops) if stop and stop in text]
    if hits:
        at, _, stop_sequence = min(hits)
        text, finish = text[:at], "stop_sequence"
    tokens = re.findall(r"\s*\S+", text)
    if ask.max_tokens is not None and len(tokens) > ask.max_tokens:
        text, finish, stop_sequence = "".join(tokens[: ask.max_tokens]), "max_tokens", None
    return Answer(text, [], finish, stop_sequence, len(text.split()))


def sample_arguments(schema: Any) -> dict[str, Any]:
    """An object with each required property of `schema` set to a sample of its type."""
    if not isinstance(schema, dict):
        return {}
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    result: dict[str, Any] = {}
    for name in required if isinstance(required, list) else []:
        if isinstance(name, str):
            definition = properties.get(name)
            kind = definition.get("type") if isinstance(definition, dict) else None
            if isinstance(kind, list):
                kind = next((k for k in kind if k != "null"), None)
            result[name] = _sample(kind)
    return result


def _sample(kind: Any) -> Any:
    samples: dict[str, Any] = {
        "string": "sample",
        "integer": 1,
        "number": 1.5,
        "boolean": True,
        "array": [],
        "object": {},
    }
    return samples.get(kind) if isinstance(kind, str) else None


class _Prefixes:
    """A fake's prompt cache: the hashes of the request prefixes it has seen, the newest
    kept."""

    def __init__(self, size: int = 4096) -> None:
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def match(
        self, seed: str, pieces: list[tuple[int, str]], breakpoints: list[int]
    ) -> tuple[int, int]:
        """The words of the longest prefix ending at a breakpoint that was seen before (0 if
        none) and of the prefix up to the last breakpoint; remembers them all."""
        digest = hashlib.sha256(seed.encode())
        words, ends = 0, []
        marks = set(breakpoints)
        for index, (count, text) in enumerate(pieces):
            digest.update(text.encode() + b"\0")
            words += count
            if index in marks:
                ends.append((digest.hexdigest(), words))
        read = max((at for key, at in ends if key in self._seen), default=0)
        for key, _ in ends:
            self._seen[key] = None
            self._seen.move_to_end(key)
        while len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return read, ends[-1][1] if ends else 0


def _words_in(text: str) -> int:
    return len(text.split())


def _canonical(value: Any) -> str:
    """JSON of `value` without its cache_control markers: what a prompt cache compares."""

    def strip(item: Any) -> Any:
        if isinstance(item, dict):
            return {k: strip(v) for k, v in item.items() if k != "cache_control"}
        if isinstance(item, list):
            return [strip(v) for v in item]
        return item

    return json.dumps(strip(value), sort_keys=True)


# --- images

IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def _image_type(data: bytes) -> str | None:
    """The media type the image's bytes say it is, as a provider sniffs it."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def _base64(data: str) -> bytes | None:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


# --- Anthropic Messages requests

ANTHROPIC_FIELDS = frozenset({
    "model", "messages", "max_tokens", "cache_control", "container", "context_management",
    "mcp_servers", "metadata", "output_config", "service_tier", "stop_sequences", "stream",
    "system", "temperature", "thinking", "tool_choice", "tools", "top_k", "top_p",
})  # fmt: skip
COUNT_TOKENS_FIELDS = frozenset({
    "model", "messages", "cache_control", "context_management", "mcp_servers", "output_config",
    "system", "thinking", "tool_choice", "tools",
})  # fmt: skip
ANTHROPIC_BLOCKS = {
    "text": {"type", "text", "cache_control", "citations"},
    "image": {"type", "source", "cache_control", "transformations"},
    "document": {"type", "source", "cache_control", "citations", "context", "title"},
    "tool_use": {"type", "id", "name", "input", "cache_control", "caller", "toolset_name"},
    "tool_result": {
        "type",
        "tool_use_id",
        "content",
        "is_error",
        "cache_control",
        "toolset_name",
    },
    "thinking": {"type", "thinking", "signature"},
    "redacted_thinking": {"type", "data"},
}
# Blocks the fake takes as they come: search results, and server tools' calls and results.
OTHER_BLOCKS = (
    "search_result",
    "server_tool_use",
    "web_search_tool_result",
    "web_fetch_tool_result",
    "code_execution_tool_result",
    "bash_code_execution_tool_result",
    "text_editor_code_execution_tool_result",
    "tool_search_tool_result",
    "container_upload",
)
ASSISTANT_ONLY = ("tool_use", "thinking", "redacted_thinking")
TOOL_FIELDS = {
    "type",
    "name",
    "description",
    "input_schema",
    "cache_control",
    "strict",
    "input_examples",
    "defer_loading",
    "eager_input_streaming",
    "allowed_callers",
}
TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
TOOL_USE_ID = re.compile(r"[a-zA-Z0-9_-]+")
SERVER_TOOL = re.compile(r"[a-z_]+_\d{8}")
MAX_CACHE_BREAKPOINTS = 4


def _bad(path: str, message: str) -> ProviderError:
    return ProviderError(400, "invalid_request_error", f"{path}: {message}", param=path)


def _at(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


def _only(value: dict[str, Any], allowed: Iterable[str], path: str) -> None:
    allowed = set(allowed)
    for key in value:
        if key not in allowed:
            raise _bad(_at(path, key), "Extra inputs are not permitted")


def _required(value: dict[str, Any], key: str, path: str) -> Any:
    if key not in value:
        raise _bad(_at(path, key), "Field required")
    return value[key]


def _dict(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(path, "Input should be a valid dictionary")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _bad(path, "Input should be a valid list")
    return value


def _str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "Input should be a valid string")
    return value


def _int(value: Any, path: str, minimum: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _bad(path, "Input should be a valid integer")
    if minimum is not None and value < minimum:
        raise _bad(path, f"Input should be greater than or equal to {minimum}")
    return value


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "Input should be a valid boolean")
    return value


def _number(value: Any, path: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _bad(path, "Input should be a valid number")
    if value < low:
        raise _bad(path, f"Input should be greater than or equal to {low:g}")
    if value > high:
        raise _bad(path, f"Input should be less than or equal to {high:g}")
    return float(value)


def _one_of(value: Any, path: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        names = [f"'{name}'" for name in allowed]
        listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise _bad(path, f"Input should be {listed}")
    return str(value)


def _tag(block: Any, path: str, allowed: Iterable[str]) -> str:
    """The `type` of a tagged union member, which must be one of `allowed`."""
    block = _dict(block, path)
    kind = _required(block, "type", path)
    allowed = list(allowed)
    if kind not in allowed:
        expected = ", ".join(f"'{name}'" for name in allowed)
        raise _bad(
            _at(path, "type"),
            f"Input tag '{kind}' found using 'type' does not match any of the expected tags: "
            f"{expected}",
        )
    return str(kind)


class _Reading:
    """The state of reading one Anthropic request: cache breakpoints and prompt pieces."""

    def __init__(self) -> None:
        self.pieces: list[tuple[int, str]] = []
        self.breakpoints: list[int] = []
        self.marks = 0

    def piece(self, words: int, value: Any, marked: bool) -> None:
        self.pieces.append((words, _canonical(value)))
        if marked:
            self.breakpoints.append(len(self.pieces) - 1)

    def cache_control(self, block: dict[str, Any], path: str) -> bool:
        value = block.get("cache_control")
        if value is None:
            return False
        path = _at(path, "cache_control")
        value = _dict(value, path)
        _only(value, ("type", "ttl"), path)
        _one_of(_required(value, "type", path), _at(path, "type"), ("ephemeral",))
        if "ttl" in value:
            _one_of(value["ttl"], _at(path, "ttl"), ("5m", "1h"))
        self.marks += 1
        if self.marks > MAX_CACHE_BREAKPOINTS:
            raise ProviderError(
                400,
                "invalid_request_error",
                f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be "
                f"provided. Found {self.marks}.",
                param=path,
            )
        return True


def _text_block(block: dict[str, Any], path: str) -> str:
    _only(block, ANTHROPIC_BLOCKS["text"], path)
    text = _str(_required(block, "text", path), _at(path, "text"))
    if not text:
        raise _bad(_at(path, "text"), "text content blocks must be non-empty")
    if "citations" in block and block["citations"] is not None:
        _list(block["citations"], _at(path, "citations"))
    return text


def _image_block(block: dict[str, Any], path: str) -> str:
    """Checks an image block; says what the fake sees in it."""
    _only(block, ANTHROPIC_BLOCKS["image"], path)
    source = _required(block, "source", path)
    path = _at(path, "source")
    kind = _tag(source, path, ("base64", "url"))
    if kind == "url":
        path = _at(path, "url")
        _only(source, ("type", "url"), path)
        url = _str(_required(source, "url", path), _at(path, "url"))
        if not url.startswith(("https://", "http://")):
            raise _bad(_at(path, "url"), "Only http and https URLs are supported")
        return f"I see an image at {url}"
    path = _at(path, "base64")
    _only(source, ("type", "media_type", "data"), path)
    media_type = _one_of(
        _required(source, "media_type", path), _at(path, "media_type"), IMAGE_TYPES
    )
    data = _base64(_str(_required(source, "data", path), _at(path, "data")))
    if data is None:
        raise _bad(_at(path, "data"), "The image data is not valid base64")
    actual = _image_type(data)
    if actual is None:
        raise _bad(_at(path, "data"), "Could not process image")
    if actual != media_type:
        raise _bad(
            _at(path, "data"),
            f"The image was specified using the {media_type} media type, but the image "
            f"appears to be a {actual} image",
        )
    return f"I see an image: {media_type} {len(data)} bytes"


def _tool_result(block: dict[str, Any], path: str) -> tuple[str, str, int]:
    """Checks a tool_result block: its tool_use id, its text and the text's words."""
    _only(block, ANTHROPIC_BLOCKS["tool_result"], path)
    ident = _str(_required(block, "tool_use_id", path), _at(path, "tool_use_id"))
    if not TOOL_USE_ID.fullmatch(ident):
        raise _bad(_at(path, "tool_use_id"), "String should match pattern '^[a-zA-Z0-9_-]+$'")
    if "is_error" in block:
        _bool(block["is_error"], _at(path, "is_error"))
    content = block.get("content", "")
    texts: list[str] = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for k, inner in enumerate(_list(content, _at(path, "content"))):
            inner_path = _at(_at(path, "content"), k)
            kind = _tag(inner, inner_path, ("text", "image", "document"))
            if kind == "text":
                texts.append(_text_block(inner, inner_path))
            elif kind == "image":
                _image_block(inner, inner_path)
    text = " ".join(texts)
    return ident, text, _words_in(text)


def read_messages_request(
    body: dict[str, Any], version: str = ANTHROPIC_VERSION, counting: bool = False
) -> Ask:
    """Checks a Messages API request as Anthropic does in API `version`; what it asks for.

    `counting`: a request to count its tokens, which has no max_tokens and no sampling."""
    latest = version == LATEST_ANTHROPIC_VERSION
    _only(body, COUNT_TOKENS_FIELDS if counting else ANTHROPIC_FIELDS, "")
    max_tokens = None
    if not counting:
        # 0 only fills the prompt cache.
        max_tokens = _int(_required(body, "max_tokens", ""), "max_tokens", minimum=0)
    _str(_required(body, "model", ""), "model")
    for name in ("temperature", "top_p", "top_k"):
        if name in body and latest:
            raise _bad(
                name,
                f"Extra inputs are not permitted: API version {version} has no sampling parameters",
            )
    for name in ("temperature", "top_p"):
        if name in body:
            _number(body[name], name, 0, 1)
    if "top_k" in body:
        _int(body["top_k"], "top_k", minimum=0)
    if "stream" in body:
        _bool(body["stream"], "stream")
    stops = [
        _str(stop, f"stop_sequences.{k}")
        for k, stop in enumerate(_list(body.get("stop_sequences", []), "stop_sequences"))
    ]
    if "metadata" in body:
        metadata = _dict(body["metadata"], "metadata")
        _only(metadata, ("user_id",), "metadata")
        if metadata.get("user_id") is not None:
            _str(metadata["user_id"], "metadata.user_id")
    if "service_tier" in body:
        _one_of(body["service_tier"], "service_tier", ("auto", "standard_only"))
    _thinking(body, max_tokens)
    schema = _output_format(body)

    reading = _Reading()
    tools = _anthropic_tools(body, reading)
    choice, named, parallel = _anthropic_tool_choice(body, [name for name, _ in tools])
    words = _system(body, reading)
    messages = _list(_required(body, "messages", ""), "messages")
    if not messages:
        raise _bad("messages", "at least one message is required")
    pending: set[str] = set()  # the tool_use ids of the previous assistant turn
    used: set[str] = set()
    last_user: tuple[list[tuple[str, str]], list[str]] = ([], [])
    previous = None
    for i, message in enumerate(messages):
        path = f"messages.{i}"
        message = _dict(message, path)
        _only(message, ("role", "content"), path)
        role = _required(message, "role", path)
        if role == "system":
            raise _bad(
                _at(path, "role"),
                'Unexpected role "system". The Messages API accepts a top-level `system` '
                'parameter, not "system" as an input message role.',
            )
        _one_of(role, _at(path, "role"), ("user", "assistant"))
        if i == 0 and role != "user":
            raise _bad(_at(path, "role"), 'the first message must use the "user" role')
        if role == previous:
            raise _bad(
                _at(path, "role"),
                'roles must alternate between "user" and "assistant", but found multiple '
                f'"{role}" roles in a row',
            )
        previous = role
        final_assistant = i == len(messages) - 1 and role == "assistant"
        content = _required(message, "content", path)
        plain = isinstance(content, str)
        blocks = [{"type": "text", "text": content}] if plain else _list(content, f"{path}.content")
        if (not blocks or content == "") and not final_assistant:
            raise _bad(
                path,
                "all messages must have non-empty content except for the optional final "
                "assistant message",
            )
        results: list[tuple[str, str]] = []
        images: list[str] = []
        uses: list[str] = []
        others = False
        for j, block in enumerate(blocks):
            block_path = f"{path}.content.{j}"
            kind = _tag(block, block_path, [*ANTHROPIC_BLOCKS, *OTHER_BLOCKS])
            if kind in ASSISTANT_ONLY and role != "assistant":
                raise _bad(block_path, f"`{kind}` blocks can only be in `assistant` messages")
            if kind == "tool_result" and role != "user":
                raise _bad(block_path, "`tool_result` blocks can only be in `user` messages")
            if latest and kind == "document" and role == "assistant":
                raise _bad(
                    block_path,
                    f"document blocks are not allowed in assistant messages in API version "
                    f"{version}; send documents in user messages",
                )
            if latest and kind == "text" and role == "user" and block.get("citations"):
                raise _bad(
                    f"{block_path}.citations",
                    f"citations are not allowed on text blocks of user messages in API version "
                    f"{version}",
                )
            block_words = 0
            if kind == "text":
                if plain:
                    block_words = _words_in(content)
                else:
                    block_words = _words_in(_text_block(block, block_path))
            elif kind == "image":
                images.append(_image_block(block, block_path))
            elif kind == "document":
                _only(block, ANTHROPIC_BLOCKS["document"], block_path)
                _dict(_required(block, "source", block_path), f"{block_path}.source")
            elif kind == "tool_use":
                uses.append(_tool_use(block, block_path, used))
            elif kind == "tool_result":
                if others:
                    raise _bad(
                        block_path,
                        "`tool_result` blocks must come first in a user message, before any "
                        "other content",
                    )
                ident, text, block_words = _tool_result(block, block_path)
                if ident not in pending:
                    raise _bad(
                        block_path,
                        f"unexpected `tool_use_id` found in `tool_result` blocks: {ident}. "
                        "Each `tool_result` block must have a corresponding `tool_use` block "
                        "in the previous message.",
                    )
                pending.discard(ident)
                results.append((ident, text))
            elif kind == "thinking":
                _only(block, ANTHROPIC_BLOCKS["thinking"], block_path)
                _str(_required(block, "thinking", block_path), f"{block_path}.thinking")
                _str(_required(block, "signature", block_path), f"{block_path}.signature")
            elif kind == "redacted_thinking":
                _only(block, ANTHROPIC_BLOCKS["redacted_thinking"], block_path)
                _str(_required(block, "data", block_path), f"{block_path}.data")
            others = others or kind != "tool_result"
            marked = not plain and reading.cache_control(block, block_path)
            words += block_words
            reading.piece(block_words, [role, block], marked)
        if role == "user":
            if pending:
                raise _missing_results(path, pending)
            last_user = (results, images)
        else:
            pending = set(uses)
        if final_assistant and blocks and blocks[-1].get("type") == "text":
            ending = blocks[-1].get("text")
            if isinstance(ending, str) and ending != ending.rstrip():
                raise _bad(path, "final assistant content cannot end with trailing whitespace")
    if pending:
        raise _missing_results(f"messages.{len(messages) - 1}", pending)
    if body.get("cache_control") is not None:
        # Top-level: a marker on the last block.
        reading.cache_control(body, "")
        reading.breakpoints.append(len(reading.pieces) - 1)
    return Ask(
        words=max(words, 1),
        pieces=reading.pieces,
        breakpoints=reading.breakpoints,
        tools=tools,
        tool_choice=choice,
        named_tool=named,
        parallel=parallel,
        tool_results=last_user[0],
        images=last_user[1],
        stops=stops,
        max_tokens=max_tokens,
        schema=schema,
    )


def _missing_results(path: str, pending: set[str]) -> ProviderError:
    return _bad(
        path,
        "`tool_use` ids were found without `tool_result` blocks immediately after: "
        f"{', '.join(sorted(pending))}. Each `tool_use` block must have a corresponding "
        "`tool_result` block in the next message.",
    )


def _tool_use(block: dict[str, Any], path: str, used: set[str]) -> str:
    _only(block, ANTHROPIC_BLOCKS["tool_use"], path)
    ident = _str(_required(block, "id", path), f"{path}.id")
    if not TOOL_USE_ID.fullmatch(ident):
        raise _bad(f"{path}.id", "String should match pattern '^[a-zA-Z0-9_-]+$'")
    if ident in used:
        raise _bad(f"{path}.id", f"`tool_use` ids must be unique, but {ident} is repeated")
    used.add(ident)
    _str(_required(block, "name", path), f"{path}.name")
    _dict(_required(block, "input", path), f"{path}.input")
    return ident


def _system(body: dict[str, Any], reading: _Reading) -> int:
    """Checks the system prompt; its words."""
    if "system" not in body:
        return 0
    system = body["system"]
    if isinstance(system, str):
        reading.piece(_words_in(system), ["system", {"type": "text", "text": system}], False)
        return _words_in(system)
    words = 0
    for k, block in enumerate(_list(system, "system")):
        path = f"system.{k}"
        _tag(block, path, ("text",))
        count = _words_in(_text_block(block, path))
        reading.piece(count, ["system", block], reading.cache_control(block, path))
        words += count
    return words


def _anthropic_tools(body: dict[str, Any], reading: _Reading) -> list[tuple[str, dict[str, Any]]]:
    tools: list[tuple[str, dict[str, Any]]] = []
    names: set[str] = set()
    for k, tool in enumerate(_list(body.get("tools", []), "tools")):
        path = f"tools.{k}"
        tool = _dict(tool, path)
        kind = tool.get("type")
        if isinstance(kind, str) and SERVER_TOOL.fullmatch(kind):
            # A server tool (web search, code execution...): the fake never calls it.
            name = _str(_required(tool, "name", path), f"{path}.name")
            reading.piece(0, tool, reading.cache_control(tool, path))
        else:
            if kind is not None:
                _tag(tool, path, ("custom",))
            _only(tool, TOOL_FIELDS, path)
            name = _str(_required(tool, "name", path), f"{path}.name")
            if not TOOL_NAME.fullmatch(name):
                raise _bad(f"{path}.name", "String should match pattern '^[a-zA-Z0-9_-]{1,128}$'")
            if "description" in tool:
                _str(tool["description"], f"{path}.description")
            schema = _dict(_required(tool, "input_schema", path), f"{path}.input_schema")
            _one_of(
                _required(schema, "type", f"{path}.input_schema"),
                f"{path}.input_schema.type",
                ("object",),
            )
            tools.append((name, schema))
            reading.piece(0, tool, reading.cache_control(tool, path))
        if name in names:
            raise _bad("tools", "Tool names must be unique.")
        names.add(name)
    return tools


def _anthropic_tool_choice(body: dict[str, Any], names: list[str]) -> tuple[str, str | None, bool]:
    if "tool_choice" not in body:
        return "auto", None, True
    choice = body["tool_choice"]
    kind = _tag(choice, "tool_choice", ("auto", "any", "tool", "none"))
    if kind == "none":
        _only(choice, ("type",), "tool_choice")
        return "none", None, True
    if not names:
        raise _bad("tool_choice", "tool_choice may only be specified while providing tools")
    allowed = ["type", "disable_parallel_tool_use"] + (["name"] if kind == "tool" else [])
    _only(choice, allowed, "tool_choice")
    parallel = not _bool(
        choice.get("disable_parallel_tool_use", False), "tool_choice.disable_parallel_tool_use"
    )
    if kind != "tool":
        return "auto", None, parallel
    name = _str(_required(choice, "name", "tool_choice"), "tool_choice.name")
    if name not in names:
        raise _bad("tool_choice.name", f"Tool '{name}' not found in the provided tools")
    return "named", name, parallel


def _thinking(body: dict[str, Any], max_tokens: int | None) -> None:
    if "thinking" not in body:
        return
    thinking = body["thinking"]
    kind = _tag(thinking, "thinking", ("enabled", "disabled", "adaptive"))
    if kind == "disabled":
        _only(thinking, ("type",), "thinking")
    elif kind == "adaptive":
        _only(thinking, ("type", "display"), "thinking")
    else:
        _only(thinking, ("type", "budget_tokens", "display"), "thinking")
        budget = _int(
            _required(thinking, "budget_tokens", "thinking"),
            "thinking.enabled.budget_tokens",
            minimum=1024,
        )
        if max_tokens is not None and max_tokens <= budget:
            raise _bad("max_tokens", "`max_tokens` must be greater than `thinking.budget_tokens`")


def _output_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """Checks `output_config`; the JSON schema the answer must follow, if any."""
    if "output_config" not in body:
        return None
    config = _dict(body["output_config"], "output_config")
    _only(config, ("format", "effort"), "output_config")
    if config.get("effort") is not None:
        _one_of(config["effort"], "output_config.effort", ("low", "medium", "high", "xhigh", "max"))
    if config.get("format") is None:
        return None
    path = "output_config.format"
    fmt = config["format"]
    _tag(fmt, path, ("json_schema",))
    _only(fmt, ("type", "schema"), path)
    return _dict(_required(fmt, "schema", path), f"{path}.schema")


# --- OpenAI Chat Completions requests

OPENAI_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions",
    "logit_bias", "logprobs", "max_completion_tokens", "max_tokens", "metadata", "modalities",
    "n", "parallel_tool_calls", "prediction", "presence_penalty", "prompt_cache_key",
    "prompt_cache_retention", "reasoning_effort", "response_format", "safety_identifier",
    "seed", "service_tier", "stop", "store", "stream", "stream_options", "temperature",
    "tool_choice", "tools", "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})  # fmt: skip
MESSAGE_FIELDS = {
    "system": ("role", "content", "name"),
    "developer": ("role", "content", "name"),
    "user": ("role", "content", "name"),
    # As answers have them too, so that an answer's message can be sent back as it came.
    "assistant": (
        "role",
        "content",
        "name",
        "tool_calls",
        "function_call",
        "refusal",
        "audio",
        "annotations",
    ),
    "tool": ("role", "content", "tool_call_id"),
    "function": ("role", "content", "name"),
}
PART_TYPES = {
    "system": ("text",),
    "developer": ("text",),
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
    "tool": ("text",),
    "function": ("text",),
}
PART_FIELDS = {
    "text": ("type", "text"),
    "image_url": ("type", "image_url"),
    "input_audio": ("type", "input_audio"),
    "file": ("type", "file"),
    "refusal": ("type", "refusal"),
}
FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.DOTALL)


def _invalid(param: str, message: str, code: str = "invalid_value") -> ProviderError:
    return ProviderError(400, "invalid_request_error", message, param=param, code=code)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _type_error(value: Any, param: str, expected: str) -> ProviderError:
    return _invalid(
        param,
        f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
        "invalid_type",
    )


def _missing(param: str) -> ProviderError:
    return _invalid(param, f"Missing required parameter: '{param}'.", "missing_required_parameter")


def _unknown(param: str) -> ProviderError:
    return _invalid(param, f"Unknown parameter: '{param}'.", "unknown_parameter")


def _value_error(value: Any, param: str, supported: Sequence[str]) -> ProviderError:
    names = [f"'{name}'" for name in supported]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])}, and {names[-1]}"
    return _invalid(param, f"Invalid value: '{value}'. Supported values are: {listed}.")


def _fields(value: dict[str, Any], allowed: Iterable[str], param: str) -> None:
    allowed = set(allowed)
    for key in value:
        if key not in allowed:
            raise _unknown(f"{param}.{key}")


def _need(value: dict[str, Any], key: str, param: str) -> Any:
    if key not in value:
        raise _missing(f"{param}.{key}" if param else key)
    return value[key]


def _o_dict(value: Any, param: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _type_error(value, param, "an object")
    return value


def _o_list(value: Any, param: str, allow_empty: bool = False) -> list[Any]:
    if not isinstance(value, list):
        raise _type_error(value, param, "an array")
    if not value and not allow_empty:
        raise _invalid(
            param,
            f"Invalid '{param}': empty array. Expected an array with minimum length 1, but got "
            "an empty array instead.",
            "empty_array",
        )
    return value


def _o_str(value: Any, param: str) -> str:
    if not isinstance(value, str):
        raise _type_error(value, param, "a string")
    return value


def _o_bool(value: Any, param: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error(value, param, "a boolean")
    return value


def _o_int(value: Any, param: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error(value, param, "an integer")
    if value < low:
        raise _invalid(
            param,
            f"Invalid '{param}': integer below minimum value. Expected a value >= {low}, but "
            f"got {value} instead.",
            "integer_below_min_value",
        )
    if high is not None and value > high:
        raise _invalid(
            param,
            f"Invalid '{param}': integer above maximum value. Expected a value <= {high}, but "
            f"got {value} instead.",
            "integer_above_max_value",
        )
    return value


def _o_number(value: Any, param: str, low: float, high: float) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _type_error(value, param, "a number")
    if not low <= value <= high:
        raise _invalid(
            param,
            f"Invalid '{param}': expected a value between {low:g} and {high:g}, but got "
            f"{value} instead.",
            "decimal_out_of_range",
        )
    return float(value)


def read_chat_request(body: dict[str, Any], azure: bool = False, lenient: bool = False) -> Ask:
    """Checks a Chat Completions request as OpenAI does; what it asks for.

    `azure`: Azure OpenAI's, which also takes `data_sources`. `lenient`: an OpenAI-compatible
    server's (vLLM, say), which ignores top-level fields it does not know."""
    for key in body:
        known = key in OPENAI_FIELDS or (azure and key == "data_sources")
        if not known and not lenient:
            raise ProviderError(
                400,
                "invalid_request_error",
                f"Unrecognized request argument supplied: {key}",
                param=key,
            )
    stream = body.get("stream")
    if stream is not None:
        _o_bool(stream, "stream")
    if body.get("stream_options") is not None:
        if stream is not True:
            raise _invalid(
                "stream_options",
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            )
        options = _o_dict(body["stream_options"], "stream_options")
        _fields(options, ("include_usage", "include_obfuscation"), "stream_options")
        for key, value in options.items():
            _o_bool(value, f"stream_options.{key}")
    limits = [key for key in ("max_completion_tokens", "max_tokens") if body.get(key) is not None]
    if len(limits) == 2:
        raise _invalid(
            "max_tokens",
            "max_tokens and max_completion_tokens cannot both be set: max_tokens is deprecated "
            "in favor of max_completion_tokens.",
        )
    max_tokens = _o_int(body[limits[0]], limits[0], 1) if limits else None
    if body.get("n") is not None:
        _o_int(body["n"], "n", 1, 128)
    for name, low, high in (
        ("temperature", 0.0, 2.0),
        ("top_p", 0.0, 1.0),
        ("presence_penalty", -2.0, 2.0),
        ("frequency_penalty", -2.0, 2.0),
    ):
        if body.get(name) is not None:
            _o_number(body[name], name, low, high)
    for name in ("seed", "top_logprobs"):
        if body.get(name) is not None:
            _o_int(body[name], name, -(2**63) if name == "seed" else 0)
    for name in ("logprobs", "store", "parallel_tool_calls"):
        if body.get(name) is not None:
            _o_bool(body[name], name)
    if body.get("user") is not None:
        _o_str(body["user"], "user")
    stops = _stops(body.get("stop"))
    schema, json_object = _response_format(body.get("response_format"))
    tools = _openai_tools(body.get("tools"))
    choice, named = _openai_tool_choice(body, [name for name, _ in tools])
    if body.get("parallel_tool_calls") is not None and not tools:
        raise _invalid(
            "parallel_tool_calls",
            "Invalid value for 'parallel_tool_calls': 'parallel_tool_calls' is only allowed when "
            "'tools' are specified.",
        )
    pieces: list[tuple[int, str]] = []
    if tools:
        pieces.append((0, _canonical(body["tools"])))
    words, texts, turn = _openai_messages(_need(body, "messages", ""), pieces)
    if json_object and "json" not in " ".join(texts).lower():
        raise _invalid(
            "messages",
            "'messages' must contain the word 'json' in some form, to use 'response_format' of "
            "type 'json_object'.",
        )
    return Ask(
        words=max(words, 1),
        pieces=pieces,
        breakpoints=list(range(len(pieces) - len(body["messages"]), len(pieces))),
        tools=tools,
        tool_choice=choice,
        named_tool=named,
        parallel=body.get("parallel_tool_calls") is not False,
        tool_results=turn[0],
        images=turn[1],
        stops=stops,
        max_tokens=max_tokens,
        schema=schema,
        json_object=json_object,
    )


def _stops(stop: Any) -> list[str]:
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop]
    if not isinstance(stop, list):
        raise _type_error(stop, "stop", "one of a string or array of strings")
    if len(stop) > 4:
        raise _invalid(
            "stop",
            f"Invalid 'stop': array too long. Expected an array with maximum length 4, but got "
            f"an array with length {len(stop)} instead.",
            "array_above_max_length",
        )
    return [_o_str(value, f"stop[{k}]") for k, value in enumerate(stop)]


def _response_format(value: Any) -> tuple[dict[str, Any] | None, bool]:
    """Checks `response_format`: the JSON schema the answer must follow, and whether it must
    be a JSON object."""
    if value is None:
        return None, False
    fmt = _o_dict(value, "response_format")
    kind = _need(fmt, "type", "response_format")
    if kind not in ("text", "json_object", "json_schema"):
        raise _value_error(kind, "response_format.type", ("text", "json_object", "json_schema"))
    if kind != "json_schema":
        _fields(fmt, ("type",), "response_format")
        return None, kind == "json_object"
    _fields(fmt, ("type", "json_schema"), "response_format")
    param = "response_format.json_schema"
    definition = _o_dict(_need(fmt, "json_schema", "response_format"), param)
    _fields(definition, ("name", "description", "schema", "strict"), param)
    name = _o_str(_need(definition, "name", param), f"{param}.name")
    if not FUNCTION_NAME.fullmatch(name):
        raise _invalid(
            f"{param}.name",
            f"Invalid '{param}.name': string does not match pattern. Expected a string that "
            "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            "invalid_value",
        )
    return _o_dict(definition.get("schema", {}), f"{param}.schema"), False


def _openai_tools(value: Any) -> list[tuple[str, dict[str, Any]]]:
    if value is None:
        return []
    tools: list[tuple[str, dict[str, Any]]] = []
    for k, tool in enumerate(_o_list(value, "tools")):
        param = f"tools[{k}]"
        tool = _o_dict(tool, param)
        kind = _need(tool, "type", param)
        if kind != "function":
            raise _value_error(kind, f"{param}.type", ("function",))
        _fields(tool, ("type", "function"), param)
        function = _o_dict(_need(tool, "function", param), f"{param}.function")
        param = f"{param}.function"
        _fields(function, ("name", "description", "parameters", "strict"), param)
        name = _o_str(_need(function, "name", param), f"{param}.name")
        if not FUNCTION_NAME.fullmatch(name):
            raise _invalid(
                f"{param}.name",
                f"Invalid '{param}.name': string does not match pattern. Expected a string that "
                "matches the pattern '^[a-zA-Z0-9_-]+$'.",
            )
        if function.get("description") is not None:
            _o_str(function["description"], f"{param}.description")
        parameters = _o_dict(function.get("parameters", {}), f"{param}.parameters")
        tools.append((name, parameters))
    return tools


def _openai_tool_choice(body: dict[str, Any], names: list[str]) -> tuple[str, str | None]:
    choice = body.get("tool_choice")
    if choice is None:
        return "auto", None
    if not names:
        raise _invalid(
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
            "specified.",
        )
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _value_error(choice, "tool_choice", ("none", "auto", "required"))
        return ("none" if choice == "none" else "auto"), None
    choice = _o_dict(choice, "tool_choice")
    kind = _need(choice, "type", "tool_choice")
    if kind != "function":
        raise _value_error(kind, "tool_choice.type", ("function",))
    _fields(choice, ("type", "function"), "tool_choice")
    function = _o_dict(_need(choice, "function", "tool_choice"), "tool_choice.function")
    _fields(function, ("name",), "tool_choice.function")
    name = _o_str(_need(function, "name", "tool_choice.function"), "tool_choice.function.name")
    if name not in names:
        raise _invalid(
            "tool_choice.function.name",
            f"Invalid value for 'tool_choice': function '{name}' was not found in 'tools'.",
        )
    return "named", name


def _openai_messages(
    value: Any, pieces: list[tuple[int, str]]
) -> tuple[int, list[str], tuple[list[tuple[str, str]], list[str]]]:
    """Checks the messages: their words, their texts, and the tool results and images of the
    last user turn; adds a cache piece per message."""
    messages = _o_list(value, "messages")
    words = 0
    texts: list[str] = []
    awaited: list[str] = []  # tool_call ids of the last assistant message not yet answered
    answerable: set[str] = set()  # ...and all of them, while its tool messages follow
    calls_at = 0
    turn: tuple[list[tuple[str, str]], list[str]] = ([], [])
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        message = _o_dict(message, param)
        role = _need(message, "role", param)
        if role not in MESSAGE_FIELDS:
            raise _value_error(role, f"{param}.role", tuple(MESSAGE_FIELDS))
        _fields(message, MESSAGE_FIELDS[role], param)
        if role == "tool":
            ident = _o_str(_need(message, "tool_call_id", param), f"{param}.tool_call_id")
            if ident not in answerable or ident not in awaited:
                raise _invalid(
                    f"{param}.role",
                    "Invalid parameter: messages with role 'tool' must be a response to a "
                    "preceeding message with 'tool_calls'.",
                )
            awaited.remove(ident)
        else:
            if awaited:
                raise _invalid(
                    f"messages[{calls_at}].role",
                    "An assistant message with 'tool_calls' must be followed by tool messages "
                    "responding to each 'tool_call_id'. The following tool_call_ids did not "
                    f"have response messages: {', '.join(awaited)}",
                )
            answerable = set()
        has_calls = role == "assistant" and message.get("tool_calls") is not None
        if role == "assistant":
            turn = ([], [])
            if message.get("function_call") is not None:
                _o_dict(message["function_call"], f"{param}.function_call")
            if has_calls:
                awaited = _tool_calls(message["tool_calls"], f"{param}.tool_calls")
                answerable, calls_at = set(awaited), i
        content = message.get("content")
        if content is None and not (
            role == "assistant" and (has_calls or "function_call" in message)
        ):
            if "content" not in message:
                raise _missing(f"{param}.content")
            raise _type_error(content, f"{param}.content", "a string or array")
        message_texts, images = _content(content, param, role)
        count = sum(_words_in(text) for text in message_texts)
        words += count
        texts += message_texts
        pieces.append((count, _canonical(message)))
        if role == "tool":
            turn[0].append((message["tool_call_id"], " ".join(message_texts)))
        elif role == "user":
            turn[1].extend(images)
    if awaited:
        raise _invalid(
            f"messages[{calls_at}].role",
            "An assistant message with 'tool_calls' must be followed by tool messages "
            "responding to each 'tool_call_id'. The following tool_call_ids did not have "
            f"response messages: {', '.join(awaited)}",
        )
    return words, texts, turn


def _tool_calls(value: Any, param: str) -> list[str]:
    idents: list[str] = []
    for k, call in enumerate(_o_list(value, param)):
        call_param = f"{param}[{k}]"
        call = _o_dict(call, call_param)
        _fields(call, ("id", "type", "function"), call_param)
        idents.append(_o_str(_need(call, "id", call_param), f"{call_param}.id"))
        kind = _need(call, "type", call_param)
        if kind != "function":
            raise _value_error(kind, f"{call_param}.type", ("function",))
        function = _o_dict(_need(call, "function", call_param), f"{call_param}.function")
        call_param = f"{call_param}.function"
        _fields(function, ("name", "arguments"), call_param)
        _o_str(_need(function, "name", call_param), f"{call_param}.name")
        arguments = _o_str(_need(function, "arguments", call_param), f"{call_param}.arguments")
        try:
            parsed = json.loads(arguments)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise _invalid(
                f"{call_param}.arguments",
                f"Invalid '{call_param}.arguments': expected a JSON object encoded as a string.",
            )
    return idents


def _content(content: Any, param: str, role: str) -> tuple[list[str], list[str]]:
    """Checks a message's content: its texts, and its images as the fake describes them."""
    if content is None:
        return [], []
    if isinstance(content, str):
        return [content], []
    parts = _o_list(content, f"{param}.content")
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(parts):
        part_param = f"{param}.content[{j}]"
        part = _o_dict(part, part_param)
        kind = _need(part, "type", part_param)
        if kind not in PART_TYPES[role]:
            raise _value_error(kind, f"{part_param}.type", PART_TYPES[role])
        _fields(part, PART_FIELDS[kind], part_param)
        if kind == "text":
            texts.append(_o_str(_need(part, "text", part_param), f"{part_param}.text"))
        elif kind == "refusal":
            _o_str(_need(part, "refusal", part_param), f"{part_param}.refusal")
        elif kind == "image_url":
            images.append(_image_url(_need(part, "image_url", part_param), part_param))
        else:
            _o_dict(_need(part, kind, part_param), f"{part_param}.{kind}")
    return texts, images


def _image_url(value: Any, param: str) -> str:
    """Checks an image_url part; says what the fake sees in it."""
    param = f"{param}.image_url"
    image = _o_dict(value, param)
    _fields(image, ("url", "detail"), param)
    if image.get("detail") is not None and image["detail"] not in ("auto", "low", "high"):
        raise _value_error(image["detail"], f"{param}.detail", ("auto", "low", "high"))
    url = _o_str(_need(image, "url", param), f"{param}.url")
    if url.startswith(("https://", "http://")):
        return f"I see an image at {url}"
    data_url = DATA_URL.fullmatch(url)
    if data_url is None or not data_url.group(1).startswith("image/"):
        raise _invalid(
            f"{param}.url",
            f"Invalid '{param}.url': expected a URL or a base64-encoded data URL with an image "
            "MIME type (e.g. 'data:image/png;base64,aW1nIGJ5dGVzIGhlcmU=').",
            "invalid_image_url",
        )
    data = _base64(data_url.group(2))
    if data is None or _image_type(data) is None:
        raise _invalid(
            f"{param}.url",
            "You uploaded an unsupported image. Please make sure your image is valid.",
            "invalid_image_format",
        )
    return f"I see an image: {data_url.group(1)} {len(data)} bytes"


# --- helpers


def _error_kind(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


def _anthropic_version(request: web.Request) -> str:
    return request.headers.get("anthropic-version", ANTHROPIC_VERSION)


def _request_id() -> str:
    return f"req_{uuid.uuid4().hex[:24]}"


def _tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def _chat_message(answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if answer.calls else answer.text,
        "refusal": None,
        "annotations": [],
    }
    if answer.calls:
        message["tool_calls"] = [
            {
                "id": _call_id(),
                "type": "function",
                "function": {
                    "name": name,
                    "arguments": json.dumps(arguments, separators=(",", ":")),
                },
            }
            for name, arguments in answer.calls
        ]
    return message


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as error:
        raise ProviderError(400, "invalid_request_error", "the body is not valid JSON") from error
    if not isinstance(body, dict):
        raise ProviderError(400, "invalid_request_error", "the body must be a JSON object")
    return body


async def _sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)
    return response


class _EventWriter:
    """Writes server-sent events one write each, but every third in two halves: a reader
    must put events together from the chunks they arrive in."""

    def __init__(self, response: web.StreamResponse) -> None:
        self._response = response
        self._count = 0

    async def write(self, event: bytes) -> None:
        self._count += 1
        if self._count % 3 == 0 and len(event) > 1:
            await self._response.write(event[: len(event) // 2])
            await self._response.write(event[len(event) // 2 :])
        else:
            await self._response.write(event)


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


# How a streamed tool call's JSON arguments are cut: pieces of these lengths, in turn, so that
# cuts fall inside names, strings and escapes.
FRAGMENT_SIZES = (4, 1, 9, 3, 6)


def _fragments(text: str) -> list[str]:
    pieces, at, turn = [], 0, 0
    while at < len(text):
        size = FRAGMENT_SIZES[turn % len(FRAGMENT_SIZES)]
        pieces.append(text[at : at + size])
        at, turn = at + size, turn + 1
    return pieces


@contextlib.asynccontextmanager
async def running(
    provider: FakeProvider, control_port: int | None = None
) -> AsyncIterator[FakeProvider]:
    await provider.start(control_port)
    try:
        yield provider
    finally:
        await provider.stop()


async def serve_forever(provider: FakeProvider, control_port: int | None) -> None:
    async with running(provider, control_port):
        print(f"{provider.provider} fake provider on {provider.url}", flush=True)
        if control_port is not None:
            print(f"control API on http://{provider.host}:{control_port}", flush=True)
        await asyncio.Event().wait()
