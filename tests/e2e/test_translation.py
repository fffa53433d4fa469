"""Both client APIs against every provider, through the real Envoy running the renderer's own
config, to the fake providers: the official `openai` and `anthropic` SDKs, unchanged but for
their base URL, as apps use them.

No operator and no Kubernetes API: the static config holds what ADS would push (as in
test_lua), so these tests cost one Envoy start.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest

from gatewaylab import FakeProcess
from ports import free_port
from switchyard.plan.gateway import SecretKeys, plan_gateway
from switchyard.render.envoy import render
from tests_support.plans import GATEWAY_KEY, endpoint, gateway

from .test_lua import Envoy, static_config

pytestmark = pytest.mark.e2e

# fake name -> (provider, the model it serves)
FAKES = {
    "openai": ("OpenAI", "gpt-4o"),
    "azure": ("AzureOpenAI", "chat-deploy"),
    "compatible": ("OpenAICompatible", "llama"),
    "anthropic": ("Anthropic", "claude-x"),
}
# Fakes that wait this long between streamed chunks, for the unbuffered-streaming checks.
SLOW = {"slow-openai": ("OpenAI", "gpt-4o"), "slow-anthropic": ("Anthropic", "claude-x")}
CHUNK_DELAY = 0.2
# The public model that reaches each fake alone is via-<fake>. Besides: one that splits over
# two vendors, and one that reaches the Anthropic fake for the overload test alone (the 5xx
# it gets there eject that backend from its cluster for a while).
MIXED = "mixed"
OVERLOADED = "overloaded"
SECRET = ("team-a", "keys")
TINY_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}


def spec(name: str, fake: FakeProcess) -> dict[str, Any]:
    backend: dict[str, Any] = {
        "name": name,
        "provider": fake.provider,
        "model": fake.model,
        "url": fake.url,
        "credentialsRef": {"name": SECRET[1], "key": name},
    }
    if fake.provider == "AzureOpenAI":
        backend["apiVersion"] = "2024-10-21"
    return backend


@dataclass
class Lab:
    envoy: Envoy
    fakes: dict[str, FakeProcess]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.envoy.port}"

    # Typed Any: the SDKs' overloads want literal TypedDicts, and these tests send plain
    # dicts, as apps built from JSON do.
    def openai(self) -> Any:
        return openai.OpenAI(base_url=f"{self.base}/v1", api_key="unused", max_retries=0)

    def anthropic(self) -> Any:
        return anthropic.Anthropic(base_url=self.base, api_key="unused", max_retries=0)

    def last_request(self, fake: str) -> dict[str, Any]:
        request: dict[str, Any] = self.fakes[fake].traffic()[-1]
        return request


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    workdir = tmp_path_factory.mktemp("translation")
    credentials = workdir / "credentials"
    credentials.mkdir()
    fakes = {
        name: FakeProcess(
            provider, f"sk-{name}-{uuid.uuid4().hex[:8]}", model, CHUNK_DELAY if name in SLOW else 0
        )
        for name, (provider, model) in {**FAKES, **SLOW}.items()
    }
    envoy: Envoy | None = None
    try:
        endpoints = [
            endpoint(f"via-{name}", backends=[spec(name, fake)]) for name, fake in fakes.items()
        ]
        endpoints.append(endpoint(OVERLOADED, backends=[spec("anthropic", fakes["anthropic"])]))
        endpoints.append(
            endpoint(
                MIXED,
                backends=[
                    {**spec("anthropic", fakes["anthropic"]), "weight": 1},
                    {**spec("openai", fakes["openai"]), "weight": 1},
                ],
            )
        )
        plan = plan_gateway(
            GATEWAY_KEY, gateway(), endpoints, {}, {SECRET: SecretKeys(frozenset(fakes))}
        )
        for endpoint_plan in plan.attached:
            for route in endpoint_plan.backends:
                assert route.credentials_key is not None
                (credentials / route.credentials_key).write_text(fakes[route.name].api_key)
        config = static_config(render(plan, free_port()), free_port())
        envoy = Envoy(config, credentials, workdir)
        yield Lab(envoy, fakes)
    finally:
        if envoy is not None:
            envoy.stop()
        for fake in fakes.values():
            fake.stop()


PAIRS = [(api, fake) for api in ("openai", "anthropic") for fake in FAKES]


def ask_openai(lab: Lab, model: str, stream: bool, **extra: Any) -> tuple[str, str | None, Any]:
    """Text, finish reason and usage of one OpenAI-format call."""
    client = lab.openai()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    if not stream:
        reply = client.chat.completions.create(model=model, messages=messages, **extra)
        choice = reply.choices[0]
        return choice.message.content or "", choice.finish_reason, reply.usage
    chunks = list(
        client.chat.completions.create(
            model=model, messages=messages, stream=True,
            stream_options={"include_usage": True}, **extra,
        )
    )  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    return text, finish[-1] if finish else None, chunks[-1].usage


def ask_anthropic(lab: Lab, model: str, stream: bool, **extra: Any) -> Any:
    client = lab.anthropic()
    request: dict[str, Any] = {
        "model": model,
        "max_tokens": 256,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hi"}],
        **extra,
    }
    if not stream:
        return client.messages.create(**request)
    with client.messages.stream(**request) as events:
        return events.get_final_message()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("api", "fake"), PAIRS)
def test_each_client_api_reaches_each_provider(lab: Lab, api: str, fake: str, stream: bool) -> None:
    provider, served = FAKES[fake]
    expected = f"Hello from {provider} {served}"
    if api == "openai":
        text, finish, usage = ask_openai(lab, f"via-{fake}", stream)
        assert finish == "stop"
        assert usage is not None
        assert usage.completion_tokens > 0
        assert usage.prompt_tokens > 0
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    else:
        message = ask_anthropic(lab, f"via-{fake}", stream)
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens > 0
        assert message.usage.input_tokens > 0
        text = "".join(b.text for b in message.content if b.type == "text")
    assert text.startswith(expected), text
    received = lab.last_request(fake)
    native = "anthropic" if provider == "Anthropic" else "openai"
    # What the provider received is its own API's request, whatever the client spoke.
    if native == "anthropic":
        assert received["path"] == "/v1/messages"
        assert received["body"]["system"] in ("Be brief.", [{"type": "text", "text": "Be brief."}])
    else:
        assert received["path"].endswith("/chat/completions")
        assert received["body"]["messages"][0] == {"role": "system", "content": "Be brief."}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_a_translated_stream_is_passed_on_event_by_event(lab: Lab, api: str) -> None:
    """The provider waits CHUNK_DELAY between its events: each reaches the client when the
    provider sends it, translated, not all together at the end."""
    arrivals: list[float] = []
    started = time.monotonic()
    if api == "openai":
        for chunk in lab.openai().chat.completions.create(
            model="via-slow-anthropic", stream=True, messages=[{"role": "user", "content": "Hi"}]
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                arrivals.append(time.monotonic())
    else:
        with lab.anthropic().messages.stream(
            model="via-slow-openai", max_tokens=100, messages=[{"role": "user", "content": "Hi"}]
        ) as stream:
            for _ in stream.text_stream:
                arrivals.append(time.monotonic())
    assert len(arrivals) >= 5
    assert arrivals[0] - started < CHUNK_DELAY * 2
    assert arrivals[-1] - arrivals[0] >= CHUNK_DELAY * (len(arrivals) - 2)


def test_a_tool_call_round_trip_openai_client_to_claude(lab: Lab) -> None:
    client = lab.openai()
    tools = [
        {
            "type": "function",
            "function": {
                "name": WEATHER["name"],
                "description": WEATHER["description"],
                "parameters": WEATHER["schema"],
            },
        }
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris for 2 days?"}]
    first = client.chat.completions.create(
        model="via-anthropic", messages=messages, tools=tools, tool_choice="required"
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    [call] = choice.message.tool_calls or []
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "sample", "days": 1}
    sent = lab.last_request("anthropic")["body"]
    assert sent["tools"][0]["input_schema"] == WEATHER["schema"]
    assert sent["tool_choice"]["type"] == "any"

    messages += [
        choice.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
    ]
    second = client.chat.completions.create(model="via-anthropic", messages=messages, tools=tools)
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content == f"Tool results: {call.id}=sunny"
    sent = lab.last_request("anthropic")["body"]
    assert sent["messages"][-1]["content"][0]["type"] == "tool_result"


def test_a_tool_call_round_trip_anthropic_client_to_gpt(lab: Lab) -> None:
    client = lab.anthropic()
    tools: list[Any] = [
        {
            "name": WEATHER["name"],
            "description": WEATHER["description"],
            "input_schema": WEATHER["schema"],
        }
    ]
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris for 2 days?"}]
    with client.messages.stream(
        model="via-openai", max_tokens=200, messages=messages, tools=tools,
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as events:  # fmt: skip
        first = events.get_final_message()
    assert first.stop_reason == "tool_use"
    [use] = [b for b in first.content if b.type == "tool_use"]
    assert (use.name, use.input) == ("get_weather", {"city": "sample", "days": 1})
    sent = lab.last_request("openai")["body"]
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["tools"][0]["function"]["parameters"] == WEATHER["schema"]

    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]},
    ]  # fmt: skip
    second = client.messages.create(
        model="via-openai", max_tokens=200, messages=messages, tools=tools
    )
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text"
    assert second.content[0].text == f"Tool results: {use.id}=sunny"
    sent = lab.last_request("openai")["body"]
    assert sent["messages"][-1] == {"role": "tool", "tool_call_id": use.id, "content": "sunny"}


def test_parallel_tool_calls_stream_to_an_openai_client(lab: Lab) -> None:
    tools = [
        {"type": "function", "function": {"name": n, "parameters": WEATHER["schema"]}}
        for n in ("first", "second")
    ]
    chunks = list(
        lab.openai().chat.completions.create(
            model="via-anthropic", stream=True, tools=tools,
            messages=[{"role": "user", "content": "both"}],
        )
    )  # fmt: skip
    calls: dict[int, dict[str, str]] = {}
    for chunk in chunks:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
            if call.function and call.function.name:
                entry["name"] = call.function.name
            if call.function and call.function.arguments:
                entry["arguments"] += call.function.arguments
    assert [calls[i]["name"] for i in sorted(calls)] == ["first", "second"]
    for call in calls.values():
        assert json.loads(call["arguments"]) == {"city": "sample", "days": 1}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.parametrize("form", ["base64", "url"])
def test_an_image_reaches_claude_from_an_openai_client(lab: Lab, form: str) -> None:
    url = (
        "data:image/png;base64," + base64.b64encode(TINY_PNG).decode()
        if form == "base64"
        else "https://example.com/cat.png"
    )
    reply = lab.openai().chat.completions.create(
        model="via-anthropic",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
    )
    expected = (
        f"I see an image: image/png {len(TINY_PNG)} bytes"
        if form == "base64"
        else f"I see an image at {url}"
    )
    assert reply.choices[0].message.content == expected


@pytest.mark.parametrize("form", ["base64", "url"])
def test_an_image_reaches_gpt_from_an_anthropic_client(lab: Lab, form: str) -> None:
    source: dict[str, Any] = (
        {"type": "base64", "media_type": "image/png", "data": base64.b64encode(TINY_PNG).decode()}
        if form == "base64"
        else {"type": "url", "url": "https://example.com/cat.png"}
    )
    reply = lab.anthropic().messages.create(
        model="via-openai",
        max_tokens=100,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image", "source": source},
                ],
            }
        ],
    )
    expected = (
        f"I see an image: image/png {len(TINY_PNG)} bytes"
        if form == "base64"
        else "I see an image at https://example.com/cat.png"
    )
    assert reply.content[0].type == "text"
    assert reply.content[0].text == expected


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_stop_reasons_read_as_each_sdk_expects(lab: Lab, stream: bool) -> None:
    _, finish, _ = ask_openai(lab, "via-anthropic", stream, max_tokens=2)
    assert finish == "length"
    message = ask_anthropic(lab, "via-openai", stream, max_tokens=2)
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 2
    text, finish, _ = ask_openai(lab, "via-anthropic", stream, stop=["from"])
    assert (text, finish) == ("Hello ", "stop")
    assert lab.last_request("anthropic")["body"]["stop_sequences"] == ["from"]


def test_cached_tokens_reach_an_anthropic_client_of_openai(lab: Lab) -> None:
    """OpenAI caches a long prompt by itself; its cached tokens are Anthropic's cache reads,
    and no longer part of `input_tokens`."""
    long = " ".join(["cacheable"] * 1500)
    for _ in range(2):
        message = lab.anthropic().messages.create(
            model="via-openai", max_tokens=50, messages=[{"role": "user", "content": long}]
        )
    usage = message.usage
    assert usage.cache_read_input_tokens == 1408  # 1,500 words, in whole blocks of 128
    assert usage.input_tokens + usage.cache_read_input_tokens == 1500
    assert usage.cache_creation_input_tokens == 0


def test_an_openai_client_is_not_cached_on_anthropic_unasked(lab: Lab) -> None:
    """Anthropic caches only what a request marks, and OpenAI's format has no marks: the
    gateway adds none (cache writes cost more on Anthropic), so usage says nothing was."""
    long = " ".join(["uncached"] * 1500)
    for _ in range(2):
        reply = lab.openai().chat.completions.create(
            model="via-anthropic", messages=[{"role": "user", "content": long}]
        )
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 1500
    assert reply.usage.prompt_tokens_details is not None
    assert reply.usage.prompt_tokens_details.cached_tokens == 0
    assert "cache_control" not in json.dumps(lab.last_request("anthropic")["body"])


@pytest.mark.parametrize(
    ("status", "openai_error", "anthropic_error"),
    [
        (400, openai.BadRequestError, anthropic.BadRequestError),
        (429, openai.RateLimitError, anthropic.RateLimitError),
        (404, openai.NotFoundError, anthropic.NotFoundError),
    ],
)
def test_a_provider_error_reaches_each_sdk_as_its_own_exception(
    lab: Lab, status: int, openai_error: type[Exception], anthropic_error: type[Exception]
) -> None:
    lab.fakes["anthropic"].fault(status=status)
    lab.fakes["openai"].fault(status=status)
    try:
        with pytest.raises(openai_error) as raised_openai:
            lab.openai().chat.completions.create(
                model="via-anthropic", messages=[{"role": "user", "content": "Hi"}]
            )
        with pytest.raises(anthropic_error) as raised_anthropic:
            lab.anthropic().messages.create(
                model="via-openai", max_tokens=10, messages=[{"role": "user", "content": "Hi"}]
            )
    finally:
        lab.fakes["anthropic"].heal()
        lab.fakes["openai"].heal()
    assert "injected fault" in str(raised_openai.value)
    assert "injected fault" in str(raised_anthropic.value)


def test_an_overloaded_provider_is_a_server_error_to_either_sdk(lab: Lab) -> None:
    lab.fakes["anthropic"].fault(status=529)
    try:
        with pytest.raises(openai.InternalServerError):
            lab.openai().chat.completions.create(
                model=OVERLOADED, messages=[{"role": "user", "content": "Hi"}]
            )
    finally:
        lab.fakes["anthropic"].heal()


def test_a_field_the_other_api_cannot_carry_is_refused_by_name(lab: Lab) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        lab.openai().chat.completions.create(
            model="via-anthropic", n=2, messages=[{"role": "user", "content": "Hi"}]
        )
    assert "n:" in str(raised.value)
    with pytest.raises(anthropic.BadRequestError) as refused:
        lab.anthropic().messages.create(
            model="via-openai", max_tokens=10,
            messages=[{"role": "user", "content": [{"type": "document", "source": {
                "type": "text", "media_type": "text/plain", "data": "x"}}]}],
        )  # fmt: skip
    assert "messages.0.content.0" in str(refused.value)
    # Natively, the same request is the provider's to judge.
    lab.openai().chat.completions.create(
        model="via-openai", n=1, messages=[{"role": "user", "content": "Hi"}]
    )


def test_json_schema_formats_cross_over(lab: Lab) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
    }
    reply = lab.openai().chat.completions.create(
        model="via-anthropic",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    assert json.loads(reply.choices[0].message.content or "") == {"answer": "sample"}
    assert lab.last_request("anthropic")["body"]["output_config"]["format"]["schema"] == schema
    message = lab.anthropic().messages.create(
        model="via-openai", max_tokens=100,
        messages=[{"role": "user", "content": "Answer in JSON"}],
        output_config={"format": {"type": "json_schema", "schema": schema}},
    )  # fmt: skip
    assert message.content[0].type == "text"
    assert json.loads(message.content[0].text) == {"answer": "sample"}


@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_models_are_listed_in_the_format_asked(lab: Lab, api: str) -> None:
    expected = {f"via-{name}" for name in {**FAKES, **SLOW}} | {MIXED, OVERLOADED}
    if api == "openai":
        listed = {m.id for m in lab.openai().models.list()}
    else:
        listed = {m.id for m in lab.anthropic().models.list()}
    assert listed == expected


def test_failover_between_claude_and_gpt_under_load_loses_nothing(lab: Lab) -> None:
    """Anthropic fails every request while both SDKs call the mixed model: each attempt that
    lands on it is retried on OpenAI, re-translated, re-authenticated and re-pathed."""
    lab.fakes["anthropic"].fault(status=503)
    lab.fakes["openai"].forget_requests()
    failures: list[str] = []
    lock = threading.Lock()

    def call(index: int) -> str:
        try:
            if index % 2:
                reply = lab.openai().chat.completions.create(
                    model=MIXED, messages=[{"role": "user", "content": "Hi"}]
                )
                return reply.choices[0].message.content or ""
            message = lab.anthropic().messages.create(
                model=MIXED, max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
            )
            return message.content[0].text if message.content[0].type == "text" else ""
        except Exception as error:
            with lock:
                failures.append(repr(error))
            return ""

    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(200)))
    finally:
        lab.fakes["anthropic"].heal()
    assert failures == []
    assert all(a.startswith("Hello from OpenAI gpt-4o") for a in answers), set(answers)
    received = lab.fakes["openai"].traffic()
    assert all(r["path"] == "/v1/chat/completions" for r in received)
    assert all(
        r["headers"]["authorization"] == f"Bearer {lab.fakes['openai'].api_key}" for r in received
    )
    assert not any(
        "x-api-key" in r["headers"] or "anthropic-version" in r["headers"] for r in received
    )
    # The Anthropic fake saw attempts too, in its own format, with its own key.
    attempts = lab.fakes["anthropic"].traffic()
    assert attempts
    assert all(r["path"] == "/v1/messages" for r in attempts)
    assert all(r["headers"]["x-api-key"] == lab.fakes["anthropic"].api_key for r in attempts)
