"""Fake LLM providers that speak the real wire formats: OpenAI, Azure OpenAI, Anthropic.

They check keys the way each provider does, serve model listings and completions (plain and
streamed), record every request they receive, and take faults at run time: any status code,
429 with Retry-After, added latency, refused connections and hung responses. The tests, the
demo and the benchmarks use them as backends; the operator never imports them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

PROVIDERS = ("OpenAI", "AzureOpenAI", "Anthropic", "OpenAICompatible")
ANTHROPIC_VERSION = "2023-06-01"
EMBEDDING_DIMENSIONS = 8


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
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


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
    ) -> None:
        if provider not in PROVIDERS:
            raise ValueError(f"provider must be one of {', '.join(PROVIDERS)}, not {provider!r}")
        self.provider = provider
        self.api_key = api_key
        self.models = models or ["fake-model"]
        self.host = host
        self.port = port
        self.stream_chunk_delay = stream_chunk_delay
        self.ssl_context = ssl_context
        self.fault = Fault()
        # Only the newest `keep_requests` (all if None): a long load run stays small.
        self.requests: deque[RecordedRequest] = deque(maxlen=keep_requests)
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
        if self.provider == "AzureOpenAI":
            app.router.add_get("/openai/models", self._list_models)
            app.router.add_get("/openai/deployments", self._list_models)
            app.router.add_post("/openai/deployments/{deployment}/{operation:.+}", self._azure)
            app.router.add_get("/openai/v1/models", self._list_models)
            app.router.add_post("/openai/v1/{operation:.+}", self._openai)
        elif self.provider == "Anthropic":
            app.router.add_get("/v1/models", self._list_models)
            app.router.add_post("/v1/messages", self._messages)
            app.router.add_post("/v1/chat/completions", self._openai)  # its OpenAI-compatible API
        else:
            app.router.add_get("/v1/models", self._list_models)
            app.router.add_post("/v1/{operation:.+}", self._openai)
        return app

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
        elif self.provider == "Anthropic":
            offered = request.headers.get("x-api-key")
            compatible = request.path == "/v1/chat/completions"
            if compatible and offered is None:
                # The OpenAI-compatible API also takes the OpenAI SDK's bearer token.
                offered = request.headers.get("Authorization", "").removeprefix("Bearer ")
            versioned = compatible or "anthropic-version" in request.headers
            if offered == self.api_key and not versioned:
                raise ProviderError(
                    400, "invalid_request_error", "anthropic-version: header is required"
                )
        else:
            authorization = request.headers.get("Authorization", "")
            offered = authorization.removeprefix("Bearer ") if authorization else None
        if offered != self.api_key:
            raise ProviderError(401, _error_kind(401), "Incorrect API key provided")

    def _error(self, error: ProviderError) -> web.Response:
        if self.provider == "Anthropic":
            payload: dict[str, Any] = {
                "type": "error",
                "error": {"type": error.kind, "message": error.message},
            }
        elif self.provider == "AzureOpenAI" and error.status in (401, 404):
            payload = {"error": {"code": str(error.status), "message": error.message}}
        else:
            payload = {
                "error": {
                    "message": error.message,
                    "type": error.kind,
                    "param": None,
                    "code": None,
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
            raise ProviderError(404, "model_not_found", f"The model `{model}` does not exist")
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
        if operation not in ("chat/completions", "completions"):
            raise ProviderError(404, "invalid_request_error", f"unknown operation {operation}")
        text = self.reply_text(str(model))
        chat = operation == "chat/completions"
        if body.get("stream"):
            return await self._stream_openai(request, str(model), text, chat)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop"}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return web.json_response(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 5 + len(text.split()),
                },
            }
        )

    async def _stream_openai(
        self, request: web.Request, model: str, text: str, chat: bool
    ) -> web.StreamResponse:
        response = await _sse(request)
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        for word in _words(text):
            choice: dict[str, Any] = {"index": 0, "finish_reason": None}
            if chat:
                choice["delta"] = {"content": word}
            else:
                choice["text"] = word
            chunk = {
                "id": ident,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [choice],
            }
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            await asyncio.sleep(self.stream_chunk_delay)
        done = {
            "id": ident,
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        model = body.get("model")
        if model not in self.models:
            raise ProviderError(404, "not_found_error", f"model: {model}")
        if not isinstance(body.get("max_tokens"), int):
            raise ProviderError(400, "invalid_request_error", "max_tokens: Field required")
        text = self.reply_text(str(model))
        ident = f"msg_{uuid.uuid4().hex[:20]}"
        usage = {"input_tokens": 5, "output_tokens": len(text.split())}
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": ident,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [{"type": "text", "text": text}],
                    "stop_reason": "end_turn",
                    "stop_sequence": None,
                    "usage": usage,
                }
            )
        response = await _sse(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())

        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": ident,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 5, "output_tokens": 0},
                },
            },
        )
        await event(
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 0,
                "content_block": {"type": "text", "text": ""},
            },
        )
        for word in _words(text):
            await event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": 0,
                    "delta": {"type": "text_delta", "text": word},
                },
            )
            await asyncio.sleep(self.stream_chunk_delay)
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await response.write_eof()
        return response

    def reply_text(self, model: str) -> str:
        """The answer every completion gets: it names who answered, for split tests."""
        return f"Hello from {self.provider} {model} on port {self.port}."

    # --- control API (a separate port, so it still answers while the API refuses)

    def _control_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/requests", self._get_requests)
        app.router.add_delete("/requests", self._clear_requests)
        app.router.add_get("/fault", self._get_fault)
        app.router.add_put("/fault", self._put_fault)
        app.router.add_delete("/fault", self._clear_fault)
        app.router.add_put("/api-key", self._put_api_key)
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

    async def _get_fault(self, request: web.Request) -> web.Response:
        return web.json_response(asdict(self.fault))

    async def _put_fault(self, request: web.Request) -> web.Response:
        await self.set_fault(Fault.from_json(await request.json()))
        return web.json_response(asdict(self.fault))

    async def _clear_fault(self, request: web.Request) -> web.Response:
        await self.set_fault(Fault())
        return web.Response(status=204)


def _error_kind(status: int) -> str:
    return {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
        529: "overloaded_error",
    }.get(status, "api_error" if status >= 500 else "invalid_request_error")


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


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else f" {w}" for i, w in enumerate(words)]


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
