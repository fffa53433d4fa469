"""ModelClients' limits, held across two Envoys of one gateway by the real rate limit service
(envoyproxy/ratelimit) over a real Redis, as the chart runs them: requests and tokens per
minute, the 429 each API's SDK expects, a stream admitted before the limit left whole, and a
limit that an operator restart does not reset."""

from __future__ import annotations

import datetime
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anthropic
import openai
import pytest
from anthropic.types import MessageParam
from openai.types.chat import ChatCompletionMessageParam

from e2e.conftest import Lab
from gatewaylab import LocalEnvoy
from ports import free_port
from tests_support.cluster import eventually

pytestmark = pytest.mark.e2e

# Forty words: as many input tokens at the fakes.
PROMPT = " ".join(["word"] * 40)
GPT_PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]
CLAUDE_PROMPT: list[MessageParam] = [{"role": "user", "content": PROMPT}]
HI: list[MessageParam] = [{"role": "user", "content": "hi"}]
# The lab's fakes each model of this module is served by.
MODELS = {"gpt": "openai", "claude": "anthropic", "slow": "slow"}


@dataclass
class LimitsLab:
    lab: Lab
    envoys: list[LocalEnvoy]

    def client(self, name: str, **limits: int) -> str:
        """A new ModelClient `name` with `limits`, known to every Envoy; its API key."""
        return self.lab.new_client(self.envoys, name=name, limits=limits)

    def current_minute(self, name: str) -> dict[str, Any]:
        body = self.lab.cluster.get("modelclients", name, self.lab.namespace) or {}
        return dict((body.get("status") or {}).get("currentMinute") or {})

    def openai(self, envoy: LocalEnvoy, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{envoy.url}/v1", api_key=key, max_retries=0)

    def anthropic(self, envoy: LocalEnvoy, key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=envoy.url, api_key=key, max_retries=0)

    def spent(self) -> int:
        """Tokens the fakes reported since they last forgot, input and output."""
        usages = [self.lab.fakes[fake].reported_usage() for fake in MODELS.values()]
        return sum(usage["input"] + usage["output"] for usage in usages)

    def forget(self) -> None:
        for fake in MODELS.values():
            self.lab.fakes[fake].forget_usage()


@pytest.fixture(scope="module")
def limits(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LimitsLab]:
    """The lab with a second Envoy of its gateway: one client, two data-plane replicas."""
    second = LocalEnvoy(
        f"{lab.namespace}/gw", free_port(), lab.operator.xds_address,
        tmp_path_factory.mktemp("envoy") / "second.log",
    )  # fmt: skip
    try:
        second.wait_listening()
        for model, fake in MODELS.items():
            lab.serve(model, [lab.backend(fake)])
        yield LimitsLab(lab, [lab.envoy, second])
    finally:
        second.stop()


def within_one_window(seconds: float) -> None:
    """Wait, if need be, for a fresh minute: the service counts in calendar minutes, and a
    measurement that straddles two would see two limits."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.5)


def run_in_threads(work: list[Callable[[], Any]], threads: int) -> list[Any]:
    """Each call of `work`, `threads` at a time: what each returned or raised."""
    results: list[Any] = []
    lock = threading.Lock()
    pending = iter(work)

    def worker() -> None:
        while True:
            with lock:
                call = next(pending, None)
            if call is None:
                return
            try:
                result: Any = call()
            except Exception as error:  # the outcome under test
                result = error
            with lock:
                results.append(result)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return results


def test_requests_per_minute_hold_across_two_envoys(limits: LimitsLab) -> None:
    limit = 60
    key = limits.client("rpm", requestsPerMinute=limit)
    clients = [limits.openai(envoy, key) for envoy in limits.envoys]

    def ask(number: int) -> Callable[[], Any]:
        return lambda: clients[number % 2].chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hello"}]
        )

    within_one_window(30)
    results = run_in_threads([ask(n) for n in range(2 * limit)], threads=4)
    served = sum(1 for r in results if not isinstance(r, Exception))
    refused = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert served + len(refused) == 2 * limit, [r for r in results if isinstance(r, Exception)][:3]
    assert abs(served - limit) <= limit * 0.1, served
    # The SDK's own error, with OpenAI's headers for the limit that was hit.
    headers = refused[0].response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-limit-requests"] == str(limit)
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    assert "x-ratelimit-limit" not in headers
    assert refused[0].code == "rate_limit_exceeded"
    assert f"{limit} requests per minute" in refused[0].message
    # The client's status shows the minute's count, as the service keeps it for both Envoys
    # (the refused requests included), read from its Redis.
    use = eventually(
        lambda: (u := limits.current_minute("rpm")) and u.get("requests") == 2 * limit and u,
        timeout=40,
    )
    assert set(use) == {"start", "requests"}


def test_tokens_per_minute_hold_across_two_envoys_and_both_apis(limits: LimitsLab) -> None:
    limit = 3000
    key = limits.client("tpm", tokensPerMinute=limit)
    gpt = [limits.openai(envoy, key) for envoy in limits.envoys]
    claude = [limits.anthropic(envoy, key) for envoy in limits.envoys]

    def ask(number: int) -> Callable[[], Any]:
        envoy = number % 2
        if number % 4 < 2:
            return lambda: gpt[envoy].chat.completions.create(model="gpt", messages=GPT_PROMPT)

        def streamed() -> Any:
            with claude[envoy].messages.stream(
                model="claude", max_tokens=64, messages=CLAUDE_PROMPT
            ) as stream:
                return stream.get_final_message()

        return streamed

    # One answer costs about 60 tokens: twice the limit is about 100 requests.
    within_one_window(40)
    limits.forget()
    results = run_in_threads([ask(n) for n in range(2 * limit // 60)], threads=2)
    errors = [r for r in results if isinstance(r, Exception)]
    refused = [r for r in errors if isinstance(r, openai.RateLimitError | anthropic.RateLimitError)]
    assert len(refused) == len(errors), errors[:3]
    assert refused, "the client was never refused"
    spent = limits.spent()
    assert abs(spent - limit) <= limit * 0.1, spent
    kinds = Counter(type(r).__module__.split(".")[0] for r in refused)
    assert set(kinds) == {"openai", "anthropic"}, kinds
    for error in refused:
        headers = error.response.headers
        if isinstance(error, anthropic.RateLimitError):
            assert headers["anthropic-ratelimit-tokens-limit"] == str(limit)
            assert headers["anthropic-ratelimit-tokens-remaining"] == "0"
            reset = datetime.datetime.fromisoformat(headers["anthropic-ratelimit-tokens-reset"])
            assert reset > datetime.datetime.now(datetime.UTC)
            assert error.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        else:
            assert headers["x-ratelimit-limit-tokens"] == str(limit)
            assert error.code == "rate_limit_exceeded"


def test_a_stream_admitted_before_the_limit_is_never_cut(limits: LimitsLab) -> None:
    limit = 400
    key = limits.client("stream", tokensPerMinute=limit)
    slow = limits.openai(limits.envoys[0], key)
    fast = limits.openai(limits.envoys[1], key)
    within_one_window(30)
    # Admitted: nothing is spent yet. It streams for a few seconds (0.2 s between chunks).
    stream = slow.chat.completions.create(model="slow", messages=GPT_PROMPT, stream=True)
    chunks, spent_meanwhile = [], 0
    for chunk in stream:
        chunks.append(chunk)
        if spent_meanwhile < 3 * limit:
            # The other Envoy spends the minute's tokens while the stream runs.
            try:
                answer = fast.chat.completions.create(model="gpt", messages=GPT_PROMPT)
                assert answer.usage is not None
                spent_meanwhile += answer.usage.total_tokens
            except openai.RateLimitError:
                spent_meanwhile = 3 * limit
    assert spent_meanwhile >= 3 * limit, "the limit was never reached during the stream"
    assert len(chunks) > 3
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The stream's tokens counted too, and the minute's are spent: refused, on either Envoy.
    with pytest.raises(openai.RateLimitError):
        slow.chat.completions.create(model="gpt", messages=GPT_PROMPT)


def test_a_limit_reached_stays_reached_across_an_operator_restart(limits: LimitsLab) -> None:
    limit = 5
    key = limits.client("restart", requestsPerMinute=limit)
    client = limits.anthropic(limits.envoys[0], key)
    within_one_window(45)
    for _ in range(limit):
        client.messages.create(model="claude", max_tokens=16, messages=HI)
    operator = limits.lab.operator
    operator.stop()
    operator.start()
    # The restarted operator serves the Envoys again: the client is still refused, on both.
    for envoy in limits.envoys:
        other = limits.anthropic(envoy, key)
        with pytest.raises(anthropic.RateLimitError) as refused:
            other.messages.create(model="claude", max_tokens=16, messages=HI)
        headers = refused.value.response.headers
        assert headers["anthropic-ratelimit-requests-limit"] == str(limit)
        assert int(headers["retry-after"]) >= 1
