"""The fake providers as the vendors' own SDKs see them, unchanged but for the base URL: the
shapes of their answers and streams, their deterministic replies (tool calls, tool results,
images, stop sequences, token limits, usage and prompt caching), and what they refuse."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import aiohttp
import anthropic
import openai
import pytest
from openai.types.chat import ChatCompletion

from switchyard.fakes.provider import FakeProvider, Fault, running

pytestmark = pytest.mark.e2e

KEY = "sk-test-fidelity-key"
CLAUDE, GPT, DEPLOYMENT, LLAMA = "claude-x", "gpt-4o", "chat-deploy", "llama"
Check = Callable[[FakeProvider], Awaitable[None]]

# Two tools, and the arguments the fakes call them with: each required property a sample.
WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "days": {"type": "integer"},
        "units": {"type": "string"},
    },
    "required": ["city", "days"],
}
CLOCK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "precise": {"type": "boolean"},
        "zone": {"type": ["null", "string"]},
        "offset": {"type": "number"},
        "tags": {"type": "array"},
        "extra": {"type": "object"},
    },
    "required": ["precise", "zone", "offset", "tags", "extra"],
}
WEATHER_ARGS = {"city": "sample", "days": 1}
CLOCK_ARGS = {"precise": True, "zone": "sample", "offset": 1.5, "tags": [], "extra": {}}
CLAUDE_TOOLS: list[Any] = [
    {"name": "get_weather", "description": "The weather", "input_schema": WEATHER_SCHEMA},
    {"name": "get_time", "input_schema": CLOCK_SCHEMA},
]
GPT_TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
    {"type": "function", "function": {"name": "get_time", "parameters": CLOCK_SCHEMA}},
]


def with_fake(provider: str, model: str) -> Callable[[Check], Callable[[], None]]:
    """Run the test body against a started fake provider serving `model`."""

    def decorate(check: Check) -> Callable[[], None]:
        def test() -> None:
            async def body() -> None:
                async with running(FakeProvider(provider, KEY, models=[model])) as fake:
                    await check(fake)

            asyncio.run(body())

        test.__name__ = check.__name__
        test.__doc__ = check.__doc__
        return test

    return decorate


@asynccontextmanager
async def claude(fake: FakeProvider) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.url, max_retries=0) as c:
        yield c


@asynccontextmanager
async def gpt(fake: FakeProvider) -> AsyncIterator[openai.AsyncOpenAI]:
    client: openai.AsyncOpenAI
    if fake.provider == "AzureOpenAI":
        client = openai.AsyncAzureOpenAI(
            azure_endpoint=fake.url, api_key=KEY, api_version="2024-10-21", max_retries=0
        )
    else:
        client = openai.AsyncOpenAI(api_key=KEY, base_url=f"{fake.url}/v1", max_retries=0)
    async with client:
        yield client


def png() -> bytes:
    """A real 1x1 PNG."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
        + chunk(b"IEND", b"")
    )


def user(content: Any) -> Any:
    """A user message, untyped: the SDKs' types would refuse the invalid ones."""
    return {"role": "user", "content": content}


# --- Anthropic


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_answers_in_its_shape_with_usage(fake: FakeProvider) -> None:
    async with claude(fake) as client:
        message = await client.messages.create(
            model=CLAUDE,
            max_tokens=64,
            system="Be brief.",
            messages=[user("Say hello to me")],
        )
        counted = await client.messages.count_tokens(
            model=CLAUDE, system="Be brief.", messages=[user("Say hello to me")]
        )
    assert message.id.startswith("msg_")
    assert message._request_id is not None
    assert message._request_id.startswith("req_")
    assert [block.type for block in message.content] == ["text"]
    assert cast(anthropic.types.TextBlock, message.content[0]).text == fake.reply_text(CLAUDE)
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (6, 7), "words in, words out"
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (0, 0)
    assert counted.input_tokens == 6


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_streams_its_event_sequence(fake: FakeProvider) -> None:
    request: dict[str, Any] = {
        "model": CLAUDE,
        "max_tokens": 64,
        "messages": [user("hi there")],
    }
    async with claude(fake) as client, client.messages.stream(**request) as stream:
        texts = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(texts) == fake.reply_text(CLAUDE)
    assert len(texts) == 7, "a delta per word"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (2, 7)

    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            f"{fake.url}/v1/messages", json={**request, "stream": True}, headers=headers
        ) as reply,
    ):
        raw = (await reply.read()).decode()
    events = [event.split("\n") for event in raw.strip().split("\n\n")]
    names = [lines[0].removeprefix("event: ") for lines in events]
    data = [json.loads(lines[1].removeprefix("data: ")) for lines in events]
    assert names == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 7,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert [d["type"] for d in data] == names
    started = data[0]["message"]
    assert started["content"] == []
    assert started["stop_reason"] is None
    assert started["usage"]["input_tokens"] == 2
    assert started["usage"]["output_tokens"] == 1
    assert data[-2]["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert data[-2]["usage"] == {"output_tokens": 7}


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_tool_calls_and_their_results(fake: FakeProvider) -> None:
    question = user("What is the weather, and the time?")
    async with claude(fake) as client:
        first = await client.messages.create(
            model=CLAUDE, max_tokens=256, tools=CLAUDE_TOOLS, messages=[question]
        )
        assert first.stop_reason == "tool_use"
        uses = [cast(anthropic.types.ToolUseBlock, block) for block in first.content]
        assert [(u.type, u.name, u.input) for u in uses] == [
            ("tool_use", "get_weather", WEATHER_ARGS),
            ("tool_use", "get_time", CLOCK_ARGS),
        ]
        assert all(u.id.startswith("toolu_") for u in uses)
        assert first.usage.output_tokens == 20, "10 per call"

        one = await client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            tools=CLAUDE_TOOLS,
            tool_choice={"type": "auto", "disable_parallel_tool_use": True},
            messages=[question],
        )
        assert [cast(anthropic.types.ToolUseBlock, b).name for b in one.content] == ["get_weather"]
        named = await client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            tools=CLAUDE_TOOLS,
            tool_choice={"type": "tool", "name": "get_time"},
            messages=[question],
        )
        assert [cast(anthropic.types.ToolUseBlock, b).name for b in named.content] == ["get_time"]
        none = await client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            tools=CLAUDE_TOOLS,
            tool_choice={"type": "none"},
            messages=[question],
        )
        assert none.stop_reason == "end_turn"

        # Streamed, the arguments arrive as JSON fragments the SDK puts together.
        async with client.messages.stream(
            model=CLAUDE, max_tokens=256, tools=CLAUDE_TOOLS, messages=[question]
        ) as stream:
            streamed = await stream.get_final_message()
        assert [cast(anthropic.types.ToolUseBlock, b).input for b in streamed.content] == [
            WEATHER_ARGS,
            CLOCK_ARGS,
        ]

        results: list[Any] = [
            {"type": "tool_result", "tool_use_id": uses[0].id, "content": "Sunny, 21 C"},
            {
                "type": "tool_result",
                "tool_use_id": uses[1].id,
                "content": [{"type": "text", "text": "about"}, {"type": "text", "text": "noon"}],
            },
            {"type": "text", "text": "Thanks!"},
        ]
        second = await client.messages.create(
            model=CLAUDE,
            max_tokens=256,
            tools=CLAUDE_TOOLS,
            messages=[question, {"role": "assistant", "content": first.content}, user(results)],
        )
    assert second.stop_reason == "end_turn"
    expected = f"Tool results: {uses[0].id}=Sunny, 21 C; {uses[1].id}=about noon"
    assert cast(anthropic.types.TextBlock, second.content[0]).text == expected
    # Words of all text: the question (7), the results (3 + 2) and "Thanks!" (1).
    assert second.usage.input_tokens == 13


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_sees_images(fake: FakeProvider) -> None:
    image = png()
    encoded = base64.b64encode(image).decode()
    async with claude(fake) as client:
        seen = await client.messages.create(
            model=CLAUDE,
            max_tokens=64,
            messages=[
                user(
                    [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "image/png",
                                "data": encoded,
                            },
                        },
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.png"}},
                        {"type": "text", "text": "What are these?"},
                    ]
                )
            ],
        )
        text = cast(anthropic.types.TextBlock, seen.content[0]).text
        assert text == (
            f"I see an image: image/png {len(image)} bytes; I see an image at https://x.test/a.png"
        )
        with pytest.raises(anthropic.BadRequestError) as wrong_type:
            await client.messages.create(
                model=CLAUDE,
                max_tokens=64,
                messages=[
                    user(
                        [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/jpeg",
                                    "data": encoded,
                                },
                            }
                        ]
                    )
                ],
            )
    assert "messages.0.content.0.source.base64.data" in message_of(wrong_type.value)


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_stop_sequences_and_max_tokens(fake: FakeProvider) -> None:
    async with claude(fake) as client:
        stopped = await client.messages.create(
            model=CLAUDE,
            max_tokens=64,
            stop_sequences=["nowhere", "on port"],
            messages=[user("hi")],
        )
        assert cast(anthropic.types.TextBlock, stopped.content[0]).text == (
            f"Hello from Anthropic {CLAUDE} "
        )
        assert (stopped.stop_reason, stopped.stop_sequence) == ("stop_sequence", "on port")
        assert stopped.usage.output_tokens == 4

        async with client.messages.stream(
            model=CLAUDE, max_tokens=3, messages=[user("hi")]
        ) as stream:
            cut = await stream.get_final_message()
    assert cast(anthropic.types.TextBlock, cut.content[0]).text == "Hello from Anthropic"
    assert (cut.stop_reason, cut.stop_sequence) == ("max_tokens", None)
    assert cut.usage.output_tokens == 3


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_prompt_cache_and_json_output(fake: FakeProvider) -> None:
    system: Any = [
        {"type": "text", "text": "You know a lot about the weather."},
        {
            "type": "text",
            "text": "Answer in one line.",
            "cache_control": {"type": "ephemeral"},
        },
    ]
    async with claude(fake) as client:
        first = await client.messages.create(
            model=CLAUDE, max_tokens=64, system=system, messages=[user("Is it sunny?")]
        )
        second = await client.messages.create(
            model=CLAUDE, max_tokens=64, system=system, messages=[user("Will it rain?")]
        )
        formatted = await client.messages.create(
            model=CLAUDE,
            max_tokens=64,
            messages=[user("Describe the weather")],
            output_config={"format": {"type": "json_schema", "schema": WEATHER_SCHEMA}},
        )
    # The system prompt is 11 words, the question 3.
    written, read = first.usage, second.usage
    assert (written.input_tokens, written.cache_creation_input_tokens) == (3, 11)
    assert written.cache_read_input_tokens == 0
    assert (read.input_tokens, read.cache_creation_input_tokens) == (3, 0)
    assert read.cache_read_input_tokens == 11
    text = cast(anthropic.types.TextBlock, formatted.content[0]).text
    assert json.loads(text) == WEATHER_ARGS


@with_fake("Anthropic", CLAUDE)
async def test_anthropic_refuses_what_the_api_refuses(fake: FakeProvider) -> None:
    hi = user("hi")
    use = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "x"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": [hi]}, "max_tokens: Field required"),
        ({"max_tokens": 8, "messages": [hi, user("again")]}, "messages.1.role: roles must alter"),
        ({"max_tokens": 8, "messages": [hi], "n": 2}, "n: Extra inputs are not permitted"),
        (
            {"max_tokens": 8, "messages": [hi], "stream_options": {"include_usage": True}},
            "stream_options: Extra inputs are not permitted",
        ),
        (
            {"max_tokens": 8, "messages": [hi], "max_completion_tokens": 8},
            "max_completion_tokens: Extra inputs are not permitted",
        ),
        ({"max_tokens": 8, "messages": []}, "messages: at least one message is required"),
        (
            {"max_tokens": 8, "messages": [user([result])]},
            "messages.0.content.0: unexpected `tool_use_id`",
        ),
        (
            {"max_tokens": 8, "messages": [{"role": "system", "content": "x"}, hi]},
            'messages.0.role: Unexpected role "system"',
        ),
        ({"max_tokens": 8, "messages": [{"role": "assistant", "content": "x"}]}, "messages.0.role"),
        (
            {
                "max_tokens": 8,
                "messages": [user([{"type": "image_url", "image_url": {"url": "x"}}])],
            },
            "messages.0.content.0.type: Input tag 'image_url'",
        ),
        (
            {"max_tokens": 8, "messages": [hi, {"role": "assistant", "content": [use]}]},
            "messages.1: `tool_use` ids were found without `tool_result` blocks",
        ),
        (
            {
                "max_tokens": 8,
                "messages": [
                    hi,
                    {"role": "assistant", "content": [use]},
                    user([{"type": "text", "text": "here"}, result]),
                ],
            },
            "messages.2.content.1: `tool_result` blocks must come first",
        ),
        (
            {
                "max_tokens": 8,
                "messages": [hi, {"role": "assistant", "content": [{**use, "input": "{}"}]}],
            },
            "messages.1.content.0.input: Input should be a valid dictionary",
        ),
        (
            {"max_tokens": 8, "messages": [hi, {"role": "assistant", "content": [use]}, hi]},
            "messages.2: `tool_use` ids were found without `tool_result` blocks",
        ),
        (
            {
                "max_tokens": 8,
                "messages": [
                    hi,
                    {"role": "assistant", "content": [{"type": "text", "text": ""}, use]},
                    user([result]),
                ],
            },
            "messages.1.content.0.text: text content blocks must be non-empty",
        ),
        ({"max_tokens": 8, "messages": [hi], "tools": GPT_TOOLS}, "tools.0.type: Input tag"),
        (
            {"max_tokens": 8, "messages": [hi], "tools": CLAUDE_TOOLS, "tool_choice": "auto"},
            "tool_choice: Input should be a valid dictionary",
        ),
        (
            {
                "max_tokens": 8,
                "messages": [hi],
                "tools": CLAUDE_TOOLS,
                "tool_choice": {"type": "tool", "name": "nope"},
            },
            "tool_choice.name: Tool 'nope' not found",
        ),
        (
            {"max_tokens": 8, "messages": [hi], "tools": [{"name": "a b", "input_schema": {}}]},
            "tools.0.name: String should match pattern",
        ),
        ({"max_tokens": 8, "messages": [hi], "temperature": 1}, "temperature: Extra inputs"),
    ]
    async with claude(fake) as client:
        for body, expected in cases:
            message = await refused_by_claude(client, {"model": CLAUDE, **body})
            assert expected in message, (body, message)
        # On API version 2023-06-01, sampling parameters are still taken, within bounds.
        old = {"anthropic-version": "2023-06-01"}
        body = {"model": CLAUDE, "max_tokens": 8, "messages": [hi], "temperature": 0.5}
        await client.post(
            "/v1/messages", body=body, cast_to=anthropic.types.Message, options={"headers": old}
        )
        message = await refused_by_claude(client, {**body, "temperature": 1.5}, old)
        assert "temperature: Input should be less than or equal to 1" in message

        await fake.set_fault(Fault(status=529))
        with pytest.raises(anthropic.OverloadedError) as overloaded:
            await client.messages.create(model=CLAUDE, max_tokens=8, messages=[hi])
    assert isinstance(overloaded.value, anthropic.InternalServerError)
    assert cast(dict[str, Any], overloaded.value.body)["error"]["type"] == "overloaded_error"


async def refused_by_claude(
    client: anthropic.AsyncAnthropic, body: dict[str, Any], headers: dict[str, str] | None = None
) -> str:
    """The message of the 400 that the Messages API answers `body` with."""
    with pytest.raises(anthropic.BadRequestError) as refused:
        await client.post(
            "/v1/messages",
            body=body,
            cast_to=anthropic.types.Message,
            options={"headers": headers or {}},
        )
    return message_of(refused.value)


def message_of(error: anthropic.APIStatusError) -> str:
    payload = cast(dict[str, Any], error.body)
    assert payload["error"]["type"] == "invalid_request_error"
    return str(payload["error"]["message"])


# --- OpenAI, Azure OpenAI and OpenAI-compatible


@pytest.mark.parametrize(
    ("provider", "model"),
    [("OpenAI", GPT), ("AzureOpenAI", DEPLOYMENT), ("OpenAICompatible", LLAMA)],
)
def test_openai_family_answers_plain_and_streamed(provider: str, model: str) -> None:
    @with_fake(provider, model)
    async def check(fake: FakeProvider) -> None:
        async with gpt(fake) as client:
            completion = await client.chat.completions.create(
                model=model,
                messages=[{"role": "system", "content": "Be brief."}, user("Say hello")],
            )
            chunks = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model=model,
                    messages=[user("Say hello")],
                    stream=True,
                    stream_options={"include_usage": True},
                )
            ]
            plain_stream = [
                chunk
                async for chunk in await client.chat.completions.create(
                    model=model, messages=[user("Say hello")], stream=True
                )
            ]
        reply = fake.reply_text(model)
        assert completion.object == "chat.completion"
        [choice] = completion.choices
        assert (choice.message.content, choice.finish_reason) == (reply, "stop")
        assert choice.message.tool_calls is None
        usage = completion.usage
        assert usage is not None
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (4, 7, 11)
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 0
        assert usage.completion_tokens_details is not None

        *answer, last = chunks
        assert answer[0].choices[0].delta.role == "assistant"
        text = "".join(chunk.choices[0].delta.content or "" for chunk in answer)
        assert text == reply
        assert [c.choices[0].finish_reason for c in answer][-1] == "stop"
        assert all(chunk.usage is None for chunk in answer)
        assert last.choices == []
        assert last.usage is not None
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (2, 7)
        assert all(chunk.usage is None and chunk.choices for chunk in plain_stream)

    check()


@with_fake("OpenAI", GPT)
async def test_openai_tool_calls_and_their_results(fake: FakeProvider) -> None:
    question = user("What is the weather, and the time?")
    async with gpt(fake) as client:
        first = await client.chat.completions.create(
            model=GPT, tools=GPT_TOOLS, messages=[question]
        )
        [choice] = first.choices
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content is None
        calls = cast(list[Any], choice.message.tool_calls)
        assert [(c.type, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("function", "get_weather", WEATHER_ARGS),
            ("function", "get_time", CLOCK_ARGS),
        ]
        assert first.usage is not None
        assert first.usage.completion_tokens == 20

        one = await client.chat.completions.create(
            model=GPT, tools=GPT_TOOLS, parallel_tool_calls=False, messages=[question]
        )
        assert [c.function.name for c in cast(list[Any], one.choices[0].message.tool_calls)] == [
            "get_weather"
        ]
        named = await client.chat.completions.create(
            model=GPT,
            tools=GPT_TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            messages=[question],
        )
        assert [c.function.name for c in cast(list[Any], named.choices[0].message.tool_calls)] == [
            "get_time"
        ]
        none = await client.chat.completions.create(
            model=GPT, tools=GPT_TOOLS, tool_choice="none", messages=[question]
        )
        assert none.choices[0].finish_reason == "stop"

        # Streamed as OpenAI streams calls: id, type and name first, then argument pieces.
        deltas = [
            call
            async for chunk in await client.chat.completions.create(
                model=GPT, tools=GPT_TOOLS, messages=[question], stream=True
            )
            for call in (chunk.choices[0].delta.tool_calls or [] if chunk.choices else [])
        ]
        openers = [d for d in deltas if d.id is not None]
        assert [(d.index, d.type, d.function.name) for d in openers if d.function] == [
            (0, "function", "get_weather"),
            (1, "function", "get_time"),
        ]
        assert all(d.function and d.function.arguments == "" for d in openers)
        for index, arguments in enumerate((WEATHER_ARGS, CLOCK_ARGS)):
            pieces = [d.function.arguments or "" for d in deltas if d.index == index and d.function]
            assert len(pieces) > 2
            assert json.loads("".join(pieces)) == arguments

        second = await client.chat.completions.create(
            model=GPT,
            tools=GPT_TOOLS,
            messages=[
                question,
                cast(Any, choice.message),
                {"role": "tool", "tool_call_id": calls[0].id, "content": "Sunny, 21 C"},
                {
                    "role": "tool",
                    "tool_call_id": calls[1].id,
                    "content": [
                        {"type": "text", "text": "about"},
                        {"type": "text", "text": "noon"},
                    ],
                },
                user("Thanks!"),
            ],
        )
    expected = f"Tool results: {calls[0].id}=Sunny, 21 C; {calls[1].id}=about noon"
    assert second.choices[0].message.content == expected
    assert second.choices[0].finish_reason == "stop"
    assert second.usage is not None
    assert second.usage.prompt_tokens == 13


@with_fake("OpenAI", GPT)
async def test_openai_sees_images(fake: FakeProvider) -> None:
    image = png()
    data_url = f"data:image/png;base64,{base64.b64encode(image).decode()}"
    async with gpt(fake) as client:
        seen = await client.chat.completions.create(
            model=GPT,
            messages=[
                user(
                    [
                        {"type": "image_url", "image_url": {"url": data_url}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}},
                        {"type": "text", "text": "What are these?"},
                    ]
                )
            ],
        )
    assert seen.choices[0].message.content == (
        f"I see an image: image/png {len(image)} bytes; I see an image at https://x.test/a.png"
    )


@with_fake("OpenAI", GPT)
async def test_openai_stop_length_n_and_json_schema(fake: FakeProvider) -> None:
    async with gpt(fake) as client:
        stopped = await client.chat.completions.create(
            model=GPT, stop=["on port"], messages=[user("hi")]
        )
        assert stopped.choices[0].message.content == f"Hello from OpenAI {GPT} "
        assert stopped.choices[0].finish_reason == "stop"
        for limit in ({"max_completion_tokens": 3}, {"max_tokens": 3}):
            cut = await client.chat.completions.create(
                model=GPT, messages=[user("hi")], **cast(Any, limit)
            )
            assert cut.choices[0].message.content == "Hello from OpenAI"
            assert cut.choices[0].finish_reason == "length"
            assert cut.usage is not None
            assert cut.usage.completion_tokens == 3
        two = await client.chat.completions.create(model=GPT, n=2, messages=[user("hi")])
        assert [c.index for c in two.choices] == [0, 1]
        assert two.usage is not None
        assert two.usage.completion_tokens == 14
        formatted = await client.chat.completions.create(
            model=GPT,
            messages=[user("Describe the weather")],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "weather", "schema": WEATHER_SCHEMA},
            },
        )
    assert json.loads(formatted.choices[0].message.content or "") == WEATHER_ARGS


@with_fake("OpenAI", GPT)
async def test_openai_caches_long_prompt_prefixes(fake: FakeProvider) -> None:
    system: Any = {"role": "system", "content": " ".join(["rule"] * 1100)}
    async with gpt(fake) as client:
        first = await client.chat.completions.create(
            model=GPT, messages=[system, user("Is it sunny?")]
        )
        second = await client.chat.completions.create(
            model=GPT, messages=[system, user("Will it rain today?")]
        )
    assert first.usage is not None
    assert second.usage is not None
    assert first.usage.prompt_tokens == 1103
    assert cast(Any, first.usage.prompt_tokens_details).cached_tokens == 0
    assert second.usage.prompt_tokens == 1104
    assert cast(Any, second.usage.prompt_tokens_details).cached_tokens == 1024


@with_fake("OpenAI", GPT)
async def test_openai_refuses_what_the_api_refuses(fake: FakeProvider) -> None:
    hi = user("hi")
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    calling = {"role": "assistant", "content": None, "tool_calls": [call]}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"messages": [hi], "top_k": 5}, "top_k"),
        ({"messages": [hi], "stop_sequences": ["x"]}, "stop_sequences"),
        ({"messages": [hi], "system": "Be brief."}, "system"),
        ({"messages": [hi], "stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [hi], "max_tokens": 5, "max_completion_tokens": 5}, "max_tokens"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "human", "content": "hi"}]}, "messages[0].role"),
        (
            {"messages": [hi, {"role": "tool", "tool_call_id": "call_1", "content": "x"}]},
            "messages[1].role",
        ),
        ({"messages": [hi, calling, hi]}, "messages[1].role"),
        (
            {
                "messages": [
                    hi,
                    {
                        **calling,
                        "tool_calls": [{**call, "function": {"name": "f", "arguments": {}}}],
                    },
                    {"role": "tool", "tool_call_id": "call_1", "content": "x"},
                ]
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [user([{"type": "tool_result", "tool_use_id": "x", "content": "y"}])]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [user([{"type": "image", "source": {"type": "url", "url": "x"}}])]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    user(
                        [{"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]
                    )
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        ({"messages": [hi], "tools": CLAUDE_TOOLS}, "tools[0].type"),
        (
            {"messages": [hi], "tools": GPT_TOOLS, "tool_choice": {"type": "auto"}},
            "tool_choice.type",
        ),
        ({"messages": [hi], "tool_choice": "auto"}, "tool_choice"),
        (
            {
                "messages": [
                    user([{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}])
                ]
            },
            "messages[0].content[0].cache_control",
        ),
    ]
    async with gpt(fake) as client:
        for body, param in cases:
            with pytest.raises(openai.BadRequestError) as refused:
                await client.post(
                    "/chat/completions", body={"model": GPT, **body}, cast_to=ChatCompletion
                )
            error = refused.value
            assert (error.param, error.type) == (param, "invalid_request_error"), (body, error)
        assert "Unrecognized request argument supplied: top_k" in (
            await openai_message(client, {"model": GPT, "messages": [hi], "top_k": 5})
        )


async def openai_message(client: openai.AsyncOpenAI, body: dict[str, Any]) -> str:
    with pytest.raises(openai.BadRequestError) as refused:
        await client.post("/chat/completions", body=body, cast_to=ChatCompletion)
    return str(cast(dict[str, Any], refused.value.body)["message"])


@with_fake("OpenAICompatible", LLAMA)
async def test_openai_compatible_ignores_unknown_fields_but_checks_the_rest(
    fake: FakeProvider,
) -> None:
    """As vLLM does: a field OpenAI does not know is ignored, a malformed message is not."""
    async with gpt(fake) as client:
        answer = await client.chat.completions.create(
            model=LLAMA, messages=[user("hi")], extra_body={"top_k": 5}
        )
        assert answer.choices[0].message.content == fake.reply_text(LLAMA)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(
                model=LLAMA, messages=[user([{"type": "tool_use", "id": "x"}])]
            )
    assert refused.value.param == "messages[0].content[0].type"
