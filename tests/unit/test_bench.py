"""The benchmark harness's own arithmetic and configs: figures in BENCHMARKS.md are only as
good as these."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from common import metric_sum, percentile, spread
from dataplane import (
    ANTHROPIC,
    DIRECTIONS,
    OPENAI,
    TRANSLATION_TARGETS,
    bare_envoy_config,
    reply_problem,
    request_body,
    targets,
    translation,
)
from gatewaylab import envoy_refusal
from litellm_proxy import Deployment, LiteLLMProxy, litellm_params


def test_percentile_is_nearest_rank_so_it_reports_an_observed_value() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_spread_keeps_median_and_range() -> None:
    assert spread([3.0, 1.0, 10.0]) == {"median": 3.0, "min": 1.0, "max": 10.0, "runs": 3}


def test_metric_sum_adds_the_samples_whose_labels_match() -> None:
    text = "\n".join(
        [
            "# HELP switchyard_api_writes_total Writes.",
            'switchyard_api_writes_total{kind="Secret"} 2.0',
            'switchyard_api_writes_total{kind="ConfigMap"} 3.0',
            'switchyard_api_writes_total_created{kind="Secret"} 1.7e9',
        ]
    )
    assert metric_sum(text, "switchyard_api_writes_total") == 5.0
    assert metric_sum(text, "switchyard_api_writes_total", kind="Secret") == 2.0


def test_bare_envoy_config_is_accepted_by_envoy(tmp_path: Path) -> None:
    config = bare_envoy_config(18080, 19901, {"a": (18001, 50), "b": (18002, 50)})
    refusal = envoy_refusal(config, tmp_path / "bare.json")
    assert refusal is None, refusal
    # Anthropic's Messages to one backend, the rest split.
    config = bare_envoy_config(18080, 19901, {"a": (18001, 50)}, messages=("anthropic", 18003))
    refusal = envoy_refusal(config, tmp_path / "bare-messages.json")
    assert refusal is None, refusal
    routes = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    routes = routes["typed_config"]["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0] == {"match": {"path": "/v1/messages"}, "route": {"cluster": "anthropic"}}


def test_requests_are_valid_in_their_own_api() -> None:
    anthropic = request_body(ANTHROPIC, "m")
    assert set(anthropic) == {"model", "max_tokens", "messages"}
    assert anthropic["max_tokens"] == 64
    openai = request_body(OPENAI, "m")
    assert set(openai) == {"model", "messages", "max_tokens"}
    assert openai["messages"] == [{"role": "user", "content": openai["messages"][0]["content"]}]


def test_a_reply_counts_only_if_2xx_and_in_the_clients_api() -> None:
    chat = '{"object": "chat.completion", "choices": [{"message": {"content": "hi"}}]}'
    message = '{"type": "message", "content": [{"type": "text", "text": "hi"}]}'
    assert reply_problem(OPENAI, 200, chat) is None
    assert reply_problem(ANTHROPIC, 200, message) is None
    # Untranslated: the backend's format reaching the other API's client.
    assert "not an OpenAI reply" in str(reply_problem(OPENAI, 200, message))
    assert "not an Anthropic reply" in str(reply_problem(ANTHROPIC, 200, chat))
    assert "HTTP 404" in str(reply_problem(OPENAI, 404, chat))
    assert reply_problem(OPENAI, 200, "<html>") is not None


def test_translation_is_compared_with_native_and_bare_and_fails_on_errors() -> None:
    def figures(rps: float, p99: float, failed: float = 0) -> dict[str, list[float]]:
        return {
            "loaded_rps": [rps, rps],
            "loaded_p50_ms": [1.0, 1.0],
            "loaded_p99_ms": [p99, p99],
            "loaded_failed": [failed, 0],
            "single_p50_ms": [0.5, 0.5],
            "single_p99_ms": [p99 / 2, p99 / 2],
            "single_failed": [0, 0],
        }

    runs = {name: figures(1000, 4.0) for name in TRANSLATION_TARGETS}
    to_anthropic, to_openai = DIRECTIONS
    runs[to_anthropic.translated("Switchyard")] = figures(600, 4.5)
    runs[to_openai.translated("Switchyard")] = figures(900, 4.2, failed=3)
    checks: dict[str, Any] = {n: {"ok": True, "problem": None, "upstream": {}} for n in runs}
    measured = translation(runs, checks, rounds=2, seconds=1)
    first = measured["directions"]["OpenAI→Anthropic"]
    assert (first["native"], first["bare"]) == ("Switchyard (Anthropic)", "bare Envoy (Anthropic)")
    assert first["vs_bare_rps"]["median"] == 0.6
    assert first["added_over_native_ms"]["loaded_p99"]["median"] == 0.5
    assert first["added_over_native_ms"]["single_p99"]["median"] == 0.25
    assert measured["directions"]["Anthropic→OpenAI"]["failed"] == 3
    rows = targets({"translation": measured})
    assert [row["met"] for row in rows] == [True, True, True, False, False, False]
    assert "3 requests failed" in rows[3]["measured"]
    checks[to_anthropic.translated("Switchyard")]["ok"] = False
    rows = targets({"translation": translation(runs, checks, rounds=2, seconds=1)})
    assert not any(row["met"] for row in rows)


def test_litellm_deployments_speak_each_providers_own_api() -> None:
    def params(provider: str, **extra: str) -> dict[str, object]:
        return litellm_params(
            Deployment("x", provider, "http://127.0.0.1:9", "m", "sk-x", 3, **extra)
        )

    assert params("OpenAI")["model"] == "openai/m"
    assert params("OpenAI")["api_base"] == "http://127.0.0.1:9/v1"
    azure = params("AzureOpenAI", api_version="2024-10-21")
    assert (azure["model"], azure["api_version"]) == ("azure/m", "2024-10-21")
    assert params("Anthropic")["model"] == "anthropic/m"
    assert params("Anthropic")["weight"] == 3
    with pytest.raises(ValueError, match="AWSBedrock"):
        params("AWSBedrock")


def test_litellm_serves_more_models_and_translates_messages_through_chat_completions() -> None:
    def deployment(name: str, provider: str) -> Deployment:
        return Deployment(name, provider, "http://127.0.0.1:9", "m", "sk-x", 1)

    proxy = LiteLLMProxy(
        "chat",
        [deployment("a", "OpenAI")],
        Path("/dev/null"),
        also={"claude": [deployment("anthropic", "Anthropic")]},
    )
    config = proxy.config()
    served = [(m["model_name"], m["model_info"]["id"]) for m in config["model_list"]]
    assert served == [("chat", "a"), ("claude", "anthropic")]
    assert config["litellm_settings"] == {"use_chat_completions_url_for_anthropic_messages": True}
    with pytest.raises(ValueError, match="unique"):
        LiteLLMProxy(
            "chat", [deployment("a", "OpenAI")], Path("/dev/null"),
            also={"claude": [deployment("a", "Anthropic")]},
        )  # fmt: skip
