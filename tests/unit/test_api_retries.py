"""The API client asks again after a 429, as client-go does, instead of failing the call."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from switchyard.kube.client import TOO_MANY_REQUESTS_RETRIES, Kube

LIST = "/apis/switchyard.dev/v1alpha1/modelendpoints"
BUSY = {"kind": "Status", "reason": "TooManyRequests", "code": 429,
        "message": "storage is (re)initializing", "details": {"retryAfterSeconds": 0}}  # fmt: skip


@asynccontextmanager
async def api_server(busy_answers: int) -> AsyncIterator[tuple[Kube, Callable[[], int]]]:
    """An HTTP server answering the list with 429 `busy_answers` times, then the list."""
    asked = 0

    async def listing(_: web.Request) -> web.Response:
        nonlocal asked
        asked += 1
        if asked <= busy_answers:
            return web.json_response(BUSY, status=429, headers={"Retry-After": "0"})
        return web.json_response({"kind": "List", "items": [{"metadata": {"name": "chat"}}]})

    app = web.Application()
    app.router.add_get(LIST, listing)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    configuration = client.Configuration(host=f"http://127.0.0.1:{port}")
    kube = Kube(configuration)
    try:
        yield kube, lambda: asked
    finally:
        await kube.api.close()
        await runner.cleanup()


def test_a_busy_api_server_is_asked_again() -> None:
    async def scenario() -> tuple[list[str], int]:
        async with api_server(busy_answers=2) as (kube, asked):
            items = await kube.list_custom("modelendpoints")
            return [item["metadata"]["name"] for item in items], asked()

    assert asyncio.run(scenario()) == (["chat"], 3)


def test_an_api_server_busy_for_good_is_an_error_in_the_end() -> None:
    async def scenario() -> int:
        async with api_server(busy_answers=100) as (kube, asked):
            with pytest.raises(ApiException) as raised:
                await kube.list_custom("modelendpoints")
            assert raised.value.status == 429
            assert json.loads(raised.value.body or b"")["reason"] == "TooManyRequests"
            return asked()

    assert asyncio.run(scenario()) == TOO_MANY_REQUESTS_RETRIES + 1
