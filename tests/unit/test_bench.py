"""The benchmark harness's own arithmetic and configs: figures in BENCHMARKS.md are only as
good as these."""

from __future__ import annotations

from pathlib import Path

import pytest

from common import metric_sum, percentile, spread
from dataplane import bare_envoy_config
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
