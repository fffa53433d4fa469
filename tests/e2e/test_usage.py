"""Tokens, latency and cost, counted from the answers the real Envoy serves: both SDKs, both
APIs, streamed and not, across providers, added up on the operator's /metrics and checked
against what the fake providers themselves reported."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import anthropic
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from e2e.conftest import Lab
from gatewaylab import CLIENT_HEADERS, CLIENT_KEY
from tests_support.cluster import eventually

pytestmark = pytest.mark.e2e

PRICES = {
    "openai": {"currency": "USD", "inputPerMillion": "2.50", "outputPerMillion": "10.00",
               "cachedInputPerMillion": "1.25"},
    "anthropic": {"currency": "USD", "inputPerMillion": "3", "outputPerMillion": "15"},
}  # fmt: skip
PROMPT = "Count the words of this prompt please, every one of them."


def samples(lab: Lab) -> list[Any]:
    with urllib.request.urlopen(f"http://{lab.operator.metrics_address}/metrics") as reply:
        text = reply.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def counted(lab: Lab, model: str) -> dict[tuple[str, str], float]:
    """(backend, token type or `answers`) -> what the operator counted for `model`'s endpoint,
    whatever the other labels."""
    totals: Counter[tuple[str, str]] = Counter()
    for sample in samples(lab):
        if sample.labels.get("endpoint") != model:
            continue
        if sample.name == "gen_ai_client_token_usage_sum":
            totals[(sample.labels["backend"], sample.labels["gen_ai_token_type"])] += sample.value
        elif sample.name == "gen_ai_client_operation_duration_seconds_count":
            totals[(sample.labels["backend"], "answers")] += sample.value
    return dict(totals)


def reported(lab: Lab, fakes: list[str]) -> dict[tuple[str, str], float]:
    out: dict[tuple[str, str], float] = {}
    for name in fakes:
        usage = lab.fakes[name].reported_usage()
        for kind, label in (("input", "input"), ("output", "output"), ("cached", "cached_input")):
            out[(name, label)] = usage[kind]
        out[(name, "answers")] = usage["answers"]
    return out


def quiet(lab: Lab, model: str, fakes: list[str]) -> dict[tuple[str, str], float]:
    """The counts once the records of earlier requests are in (Envoy sends them within a
    second), with the fakes' tallies zeroed at the same point."""

    def settled() -> dict[tuple[str, str], float] | None:
        first = counted(lab, model)
        time.sleep(1.5)
        return first if counted(lab, model) == first else None

    before = eventually(settled, timeout=30)
    for name in fakes:
        lab.fakes[name].forget_usage()
    return before


def minus(after: dict[Any, float], before: dict[Any, float]) -> dict[Any, float]:
    return {key: value - before.get(key, 0) for key, value in after.items()}


def counts_match(
    lab: Lab, model: str, before: dict[Any, float], expected: dict[Any, float]
) -> bool:
    counted_now = minus(counted(lab, model), before)
    assert counted_now == expected, f"counted {counted_now}, reported {expected}"
    return True


def test_every_token_the_providers_reported_is_counted_per_backend_and_client(lab: Lab) -> None:
    fakes = ["openai", "anthropic"]
    backends = [{**lab.backend(name), "pricing": PRICES[name]} for name in fakes]
    lab.serve("metered", backends)
    before = quiet(lab, "metered", fakes)
    gpt = openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    claude = anthropic.Anthropic(base_url=lab.envoy.url, api_key=CLIENT_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT}]
    hidden_streams = 0
    for _ in range(4):
        assert gpt.chat.completions.create(model="metered", messages=messages).usage
        # A stream whose client did not ask for usage: it gets none, the gateway counts it.
        chunks = list(gpt.chat.completions.create(model="metered", messages=messages, stream=True))
        assert all(chunk.choices and chunk.usage is None for chunk in chunks), chunks[-1]
        hidden_streams += 1
        asked = list(
            gpt.chat.completions.create(
                model="metered",
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert asked[-1].usage is not None
        assert asked[-1].choices == []
        assert claude.messages.create(model="metered", max_tokens=64, messages=messages).usage
        with claude.messages.stream(model="metered", max_tokens=64, messages=messages) as stream:
            assert stream.get_final_message().usage.output_tokens > 0
    expected = reported(lab, fakes)
    assert sum(expected[(name, "answers")] for name in fakes) == 5 * 4
    eventually(lambda: counts_match(lab, "metered", before, expected), timeout=15)
    # The gateway asked the provider for the hidden streams' usage.
    openai_bodies = [r["body"] for r in lab.fakes["openai"].traffic() if r["body"].get("stream")]
    assert all(b["stream_options"]["include_usage"] is True for b in openai_bodies)

    client = f"{lab.namespace}/lab"
    latest = samples(lab)
    cost = {
        s.labels["backend"]: s.value
        for s in latest
        if s.name == "switchyard_cost_total" and s.labels["endpoint"] == "metered"
    }
    for s in latest:
        if s.labels.get("endpoint") == "metered" and s.name.startswith(
            ("gen_ai_", "switchyard_cost")
        ):
            assert s.labels["client"] == client
            assert s.labels["gen_ai_request_model"] == "metered"
    # Each backend's cost is its price times everything it ever answered (counted from the
    # start, like the counter): at least this run's share, and priced as the spec says.
    for name in fakes:
        price = PRICES[name]
        cached_price = Decimal(price.get("cachedInputPerMillion", price["inputPerMillion"]))
        tokens = minus(counted(lab, "metered"), {})
        spent = (
            (Decimal(tokens[(name, "input")]) - Decimal(tokens[(name, "cached_input")]))
            * Decimal(price["inputPerMillion"])
            + Decimal(tokens[(name, "cached_input")]) * cached_price
            + Decimal(tokens[(name, "output")]) * Decimal(price["outputPerMillion"])
        ) / 1_000_000
        assert cost[name] == pytest.approx(float(spent), rel=1e-9)
    assert hidden_streams


def test_streamed_answers_have_time_to_first_token_and_per_output_token(lab: Lab) -> None:
    lab.serve("timed", [lab.backend("slow")])
    gpt = openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    messages: Any = [{"role": "user", "content": PROMPT}]
    list(gpt.chat.completions.create(model="timed", messages=messages, stream=True))

    def timings() -> dict[str, float] | None:
        found = {
            s.name: s.value
            for s in samples(lab)
            if s.labels.get("endpoint") == "timed"
            and s.name.startswith("gen_ai_server_")
            and s.name.endswith(("_sum", "_count"))
        }
        return found if found.get("gen_ai_server_time_per_output_token_seconds_count") else None

    found = eventually(timings, timeout=15)
    assert found["gen_ai_server_time_to_first_token_seconds_count"] == 1
    # The fake sends its first chunk at once, then waits 0.2 s after each word.
    assert found["gen_ai_server_time_to_first_token_seconds_sum"] < 0.15
    assert 0.1 < found["gen_ai_server_time_per_output_token_seconds_sum"] < 1


def _ask(lab: Lab, index: int) -> None:
    """One of five kinds of request, by `index`: both APIs, streamed or not, with and
    without OpenAI's stream usage."""
    kind = index % 5
    anthropic_api = kind >= 3
    body: dict[str, Any] = {
        "model": "bulk",
        "messages": [{"role": "user", "content": f"{PROMPT} {'word ' * (index % 7)}"}],
    }
    if anthropic_api:
        body["max_tokens"] = 32
    if kind in (1, 2, 4):
        body["stream"] = True
    if kind == 2:
        body["stream_options"] = {"include_usage": True}
    path = "/v1/messages" if anthropic_api else "/v1/chat/completions"
    request = urllib.request.Request(
        lab.envoy.url + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "anthropic-version": "2023-06-01",
                 **CLIENT_HEADERS},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as reply:
        assert reply.status == 200
        reply.read()


def test_ten_thousand_mixed_answers_are_counted_to_the_token(lab: Lab) -> None:
    fakes = ["openai", "anthropic", "local-a"]
    lab.serve("bulk", [lab.backend(name) for name in fakes])
    before = quiet(lab, "bulk", fakes)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda index: _ask(lab, index), range(10_000)))
    expected = reported(lab, fakes)
    assert sum(expected[(name, "answers")] for name in fakes) == 10_000
    eventually(lambda: counts_match(lab, "bulk", before, expected), timeout=30)
