"""The fake providers over real HTTP on loopback: wire formats, auth, records and faults."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from ports import free_port
from switchyard.fakes.provider import FakeProvider, Fault, running

KEY = "sk-test-fake-provider-key"
Check = Callable[[FakeProvider, aiohttp.ClientSession], Awaitable[None]]


def with_provider(
    provider: str, models: list[str] | None = None, **kwargs: Any
) -> Callable[[Check], Callable[[], None]]:
    """Run the test body against a started provider and an HTTP client session."""

    def decorate(check: Check) -> Callable[[], None]:
        def test() -> None:
            async def body() -> None:
                fake = FakeProvider(provider, KEY, models=models, **kwargs)
                async with running(fake), aiohttp.ClientSession() as session:
                    await check(fake, session)

            asyncio.run(body())

        test.__name__ = check.__name__
        test.__doc__ = check.__doc__
        return test

    return decorate


async def sse_events(response: aiohttp.ClientResponse) -> list[str]:
    return [
        line.decode().removeprefix("data: ").strip()
        async for line in response.content
        if line.startswith(b"data: ")
    ]


@with_provider("OpenAI", ["gpt-4o", "text-embedding-3-small"])
async def test_openai_chat_plain_and_streamed(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    request = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    async with http.post(f"{fake.url}/v1/chat/completions", json=request, headers=auth) as reply:
        assert reply.status == 200
        answer = await reply.json()
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"]["content"] == fake.reply_text("gpt-4o")

    streamed = {**request, "stream": True}
    async with http.post(f"{fake.url}/v1/chat/completions", json=streamed, headers=auth) as reply:
        assert reply.headers["Content-Type"].startswith("text/event-stream")
        events = await sse_events(reply)
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert text == fake.reply_text("gpt-4o")

    async with http.post(
        f"{fake.url}/v1/embeddings",
        json={"model": "text-embedding-3-small", "input": ["a", "b"]},
        headers=auth,
    ) as reply:
        assert len((await reply.json())["data"]) == 2
    async with http.get(f"{fake.url}/v1/models", headers=auth) as reply:
        assert [m["id"] for m in (await reply.json())["data"]] == fake.models


@with_provider("OpenAI", ["gpt-4o"])
async def test_openai_refuses_a_wrong_key_in_its_error_format(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {}, {"api-key": KEY}):
        async with http.get(f"{fake.url}/v1/models", headers=headers) as reply:
            assert reply.status == 401
            assert (await reply.json())["error"]["type"] == "authentication_error"
    async with http.post(
        f"{fake.url}/v1/chat/completions",
        json={"model": "unknown", "messages": []},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as reply:
        assert reply.status == 404


@with_provider("AzureOpenAI", ["gpt-4o-deployment"])
async def test_azure_deployment_paths_api_version_and_api_key_header(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    path = "/openai/deployments/gpt-4o-deployment/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    async with http.post(
        f"{fake.url}{path}?api-version=2024-10-21", json=body, headers={"api-key": KEY}
    ) as reply:
        assert reply.status == 200
        assert (await reply.json())["model"] == "gpt-4o-deployment"
    async with http.post(f"{fake.url}{path}", json=body, headers={"api-key": KEY}) as reply:
        assert reply.status == 404, "api-version is required on deployment paths"
    async with http.post(
        f"{fake.url}{path}?api-version=2024-10-21",
        json=body,
        headers={"Authorization": f"Bearer {KEY}x"},
    ) as reply:
        assert reply.status == 401
    async with http.get(
        f"{fake.url}/openai/deployments?api-version=2024-10-21", headers={"api-key": KEY}
    ) as reply:
        assert [m["id"] for m in (await reply.json())["data"]] == ["gpt-4o-deployment"]
    v1 = {"model": "gpt-4o-deployment", **body}
    async with http.post(
        f"{fake.url}/openai/v1/chat/completions", json=v1, headers={"api-key": KEY}
    ) as reply:
        assert reply.status == 200
    recorded = fake.requests[0]
    assert recorded.path == path
    assert recorded.query == {"api-version": "2024-10-21"}
    assert recorded.headers["api-key"] == KEY


@with_provider("Anthropic", ["claude-sonnet-4-5"])
async def test_anthropic_messages_plain_streamed_and_its_headers(
    fake: FakeProvider, http: aiohttp.ClientSession
) -> None:
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    request = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with http.post(f"{fake.url}/v1/messages", json=request, headers=headers) as reply:
        message = await reply.json()
    assert message["type"] == "message"
    assert message["content"][0]["text"] == fake.reply_text("claude-sonnet-4-5")

    async with http.post(
        f"{fake.url}/v1/messages", json={**request, "stream": True}, headers=headers
    ) as reply:
        lines = [line.decode().strip() async for line in reply.content]
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert "content_block_delta" in names

    async with http.post(
        f"{fake.url}/v1/messages", json=request, headers={"x-api-key": KEY}
    ) as reply:
        assert reply.status == 400, "anthropic-version is required"
    # The key as a bearer token, as Anthropic's SDKs send it since API version 2026-10-21.
    versioned = {"anthropic-version": "2023-06-01"}
    for key, status in ((KEY, 200), (f"{KEY}x", 401)):
        async with http.post(
            f"{fake.url}/v1/messages",
            json=request,
            headers={"Authorization": f"Bearer {key}", **versioned},
        ) as reply:
            assert reply.status == status
            if status == 401:
                assert (await reply.json())["error"]["type"] == "authentication_error"
    async with http.post(
        f"{fake.url}/v1/messages",
        json=request,
        headers={"x-api-key": KEY, "anthropic-version": "2024-01-01"},
    ) as reply:
        assert reply.status == 400, "an unknown API version"
    async with http.post(
        f"{fake.url}/v1/chat/completions",
        json={"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {KEY}"},
    ) as reply:
        assert reply.status == 200, "Anthropic's OpenAI-compatible endpoint"


@with_provider("OpenAI", ["gpt-4o"])
async def test_faults_switch_at_run_time(fake: FakeProvider, http: aiohttp.ClientSession) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    models = f"{fake.url}/v1/models"

    await fake.set_fault(Fault(status=429, retry_after=7))
    async with http.get(models, headers=auth) as reply:
        assert reply.status == 429
        assert reply.headers["Retry-After"] == "7"
        assert (await reply.json())["error"]["type"] == "rate_limit_error"

    await fake.set_fault(Fault(status=503))
    async with http.get(models, headers=auth) as reply:
        assert reply.status == 503

    await fake.set_fault(Fault(latency_ms=300))
    started = time.monotonic()
    async with http.get(models, headers=auth) as reply:
        assert reply.status == 200
    assert time.monotonic() - started >= 0.3

    await fake.set_fault(Fault(refuse=True))
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(models, headers=auth)

    await fake.set_fault(Fault(hang=True))
    with pytest.raises(asyncio.TimeoutError):
        await http.get(models, headers=auth, timeout=aiohttp.ClientTimeout(total=0.5))

    await fake.set_fault(Fault())
    async with http.get(models, headers=auth) as reply:
        assert reply.status == 200
    assert all(r.path == "/v1/models" for r in fake.requests)


def test_the_control_port_sets_faults_and_reads_records() -> None:
    async def body() -> None:
        fake = FakeProvider("OpenAICompatible", KEY, models=["llama"])
        control_port = free_port()
        async with running(fake, control_port), aiohttp.ClientSession() as http:
            control = f"http://127.0.0.1:{control_port}"
            async with http.put(f"{control}/fault", json={"refuse": True}) as reply:
                assert (await reply.json())["refuse"] is True
            with pytest.raises(aiohttp.ClientConnectorError):
                await http.get(f"{fake.url}/v1/models")
            async with http.delete(f"{control}/fault") as reply:
                assert reply.status == 204
            async with http.get(
                f"{fake.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}
            ) as reply:
                assert reply.status == 200
            async with http.get(f"{control}/requests") as reply:
                recorded = await reply.json()
            assert [r["path"] for r in recorded] == ["/v1/models"]
            assert recorded[0]["headers"]["authorization"] == f"Bearer {KEY}"

    asyncio.run(body())
