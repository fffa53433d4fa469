"""Token accounting's pure parts: what each API's usage adds up to, what it costs, how an
Envoy's record of an answer reads, and how the answers' series stay bounded."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from envoy.data.accesslog.v3 import accesslog_pb2
from prometheus_client import CollectorRegistry

from switchyard import metrics
from switchyard.api.models import Backend, Pricing
from switchyard.handlers.accounting import account, error_type
from switchyard.providers.usage import TOTAL_KEYS, TokenUsage
from switchyard.xds.server import _answer

BACKEND = ("team-a", "chat", "gpt", "OpenAI", "gw-ns/gw")


def test_openai_counts_cached_tokens_within_the_prompt() -> None:
    reported = {"prompt_tokens": 120, "completion_tokens": 30, "cached_tokens": 100}
    assert TokenUsage.of(reported) == TokenUsage(input=120, output=30, cached=100)


def test_anthropic_counts_cache_reads_and_writes_apart_and_they_add_to_the_input() -> None:
    reported = {
        "input_tokens": 20,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
        "output_tokens": 30,
    }
    assert TokenUsage.of(reported) == TokenUsage(input=125, output=30, cached=100)


def test_an_answer_without_usage_has_none() -> None:
    assert TokenUsage.of({}) is None
    assert TokenUsage.of({"first_event_ms": 1.0}) is None


def test_the_price_of_an_answer_charges_cached_input_at_its_own_price() -> None:
    pricing = Pricing.model_validate(
        {"currency": "USD", "inputPerMillion": "2.50", "outputPerMillion": "10",
         "cachedInputPerMillion": "1.25"}
    )  # fmt: skip
    # 600k uncached at 2.50, 400k cached at 1.25, 1M output at 10.
    assert pricing.cost(1_000_000, 1_000_000, 400_000) == Decimal("12")
    without_cache_price = Pricing.model_validate(
        {"currency": "EUR", "inputPerMillion": "3", "outputPerMillion": "15"}
    )
    assert without_cache_price.cost(2_000, 1_000, 1_000) == Decimal("0.021")


@pytest.mark.parametrize(
    "pricing",
    [
        {"currency": "usd", "inputPerMillion": "1", "outputPerMillion": "1"},
        {"currency": "USD", "inputPerMillion": "-1", "outputPerMillion": "1"},
        {"currency": "USD", "inputPerMillion": "1e3", "outputPerMillion": "1"},
        {"currency": "USD", "inputPerMillion": "1"},
    ],
)
def test_a_pricing_that_is_no_price_is_refused(pricing: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="pricing"):
        Backend.model_validate(
            {"name": "gpt", "provider": "OpenAI", "model": "gpt-4o",
             "credentialsRef": {"name": "k", "key": "k"}, "pricing": pricing}
        )  # fmt: skip


def test_error_types_are_a_bounded_set() -> None:
    assert [error_type(s) for s in (200, 201, 400, 429, 503, 0)] == [
        "", "", "400", "429", "503", "no_response",
    ]  # fmt: skip


def entry(usage: dict[str, float | str], client: str = "team-a/checkout") -> Any:
    record = accesslog_pb2.HTTPAccessLogEntry()
    common = record.common_properties
    common.upstream_cluster = "switchyard/chat"
    common.start_time.FromMilliseconds(1_000_000)
    common.time_to_last_downstream_tx_byte.FromMilliseconds(2_500)
    common.metadata.filter_metadata["switchyard"].update({"client": client, "stream": True})
    common.metadata.filter_metadata["switchyard.usage"].update(usage)
    record.response.response_code.value = 200
    return record


def test_an_envoy_record_reads_as_the_answer_it_describes() -> None:
    answer = _answer(
        "gw-ns/gw",
        "gpt",
        entry(
            {
                "prompt_tokens": 12,
                "completion_tokens": 7,
                "response_model": "gpt-4o-2024",
                "first_event_ms": 1_000_400,
            }
        ),
    )
    assert answer.client == "team-a/checkout"
    assert answer.usage == {"prompt_tokens": 12, "completion_tokens": 7}
    assert answer.response_model == "gpt-4o-2024"
    assert answer.duration == 2.5
    assert answer.first_event == pytest.approx(0.4)
    assert answer.cluster == "switchyard/chat"
    assert answer.status == 200


def test_an_answer_adds_its_tokens_latency_and_cost() -> None:
    values = metrics.AnswerValues()
    pricing = Pricing.model_validate(
        {"currency": "USD", "inputPerMillion": "1", "outputPerMillion": "2"}
    )
    answer = _answer(
        "gw-ns/gw", "gpt",
        entry({"prompt_tokens": 10, "completion_tokens": 5, "first_event_ms": 1_000_500}),
    )  # fmt: skip
    account(values, answer, pricing)
    assert [values.tokens[kind].sum for kind in metrics.TOKEN_TYPES] == [10, 5, 0]
    assert values.duration.sum == 2.5
    assert values.first_token.sum == 0.5
    assert values.per_output_token.sum == pytest.approx((2.5 - 0.5) / 4)
    assert values.cost == {"USD": pytest.approx(20e-6)}


def test_answer_series_keep_a_few_response_models_per_backend_and_go_with_it() -> None:
    series = metrics.AnswerSeries()
    registry = CollectorRegistry()
    registry.register(series)
    for index in range(metrics.MAX_RESPONSE_MODELS + 3):
        series.of(BACKEND, "team-a/app", "chat", f"model-{index}", "").duration.observe(1)
    models = {
        s.labels["gen_ai_response_model"]
        for family in registry.collect()
        for s in family.samples
        if s.name == "gen_ai_client_operation_duration_seconds_count"
    }
    assert len(models) == metrics.MAX_RESPONSE_MODELS + 1
    assert metrics.OTHER_MODEL in models
    labels = dict(
        zip(metrics.ANSWER_LABELS, (*BACKEND, "team-a/app", "chat", "other", ""), strict=True)
    )
    count = "gen_ai_client_operation_duration_seconds_count"
    assert registry.get_sample_value(count, labels) == 3
    series.forget(BACKEND)
    assert registry.get_sample_value(count, labels) is None


def test_an_error_answering_a_stream_has_no_time_to_first_token() -> None:
    values = metrics.AnswerValues()
    record = entry({"first_event_ms": 1_000_100})
    record.response.response_code.value = 429
    account(values, _answer("gw-ns/gw", "gpt", record), None)
    assert values.duration.count == 1
    assert values.first_token.count == 0
    assert values.tokens["input"].count == 0


@pytest.mark.parametrize(
    "reported",
    [
        {"prompt_tokens": 120, "completion_tokens": 30, "cached_tokens": 100},
        {
            "input_tokens": 20,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 5,
            "output_tokens": 30,
        },
    ],
)
def test_a_token_limit_counts_what_the_metrics_count(reported: dict[str, float]) -> None:
    """The rate limit service adds each of TOTAL_KEYS an answer reported: the same total as
    the token series (input, cached included, and output)."""
    usage = TokenUsage.of(reported)
    assert usage is not None
    assert sum(reported.get(key, 0) for key in TOTAL_KEYS) == usage.total
