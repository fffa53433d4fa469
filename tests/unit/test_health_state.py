"""Hysteresis and publishing of one backend's health."""

from __future__ import annotations

import datetime

from switchyard.health.probes import Outcome, ProbeResult, Target, request_for
from switchyard.health.state import BackendHealth

OK = ProbeResult(Outcome.HEALTHY, 12, "HTTP 200")
DOWN = ProbeResult(Outcome.FAILED, 5000, "no answer within 5s")


def test_turns_unhealthy_after_the_threshold_and_back_after_its_own() -> None:
    health = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    changes = [health.observe(r, 0.0, "t", refresh=1e9) for r in (DOWN, DOWN)]
    assert health.healthy
    assert changes == [True, False]  # the first probe is published, the second is not
    assert health.observe(DOWN, 0.0, "t", refresh=1e9)
    assert not health.healthy
    assert health.held_back(0.0) == "Unhealthy"
    # One success is not enough, and a failure in between starts over: no flapping.
    for result in (OK, DOWN, OK):
        health.observe(result, 0.0, "t", refresh=1e9)
    assert not health.healthy
    assert health.observe(OK, 0.0, "t", refresh=1e9)
    assert health.healthy
    assert health.published["consecutiveFailures"] == 0


def test_a_refused_key_and_a_429_are_not_down() -> None:
    health = BackendHealth(unhealthy_threshold=1, healthy_threshold=1)
    health.observe(ProbeResult(Outcome.CREDENTIALS_INVALID, 3, "HTTP 401"), 0.0, "t", 60)
    assert health.healthy
    assert health.held_back(0.0) == "CredentialsInvalid"
    health.observe(ProbeResult(Outcome.RATE_LIMITED, 3, "HTTP 429", 30.0), 1.0, "t", 60)
    assert health.held_back(1.0) == "RateLimited"
    assert health.held_back(31.5) is None


def test_a_steady_backend_is_published_only_at_the_refresh_rate() -> None:
    health = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    assert health.observe(OK, 0.0, "t0", refresh=60)
    assert not health.observe(OK, 15.0, "t1", refresh=60)
    assert health.published["lastProbeTime"] == "t0"
    assert health.observe(OK, 61.0, "t2", refresh=60)
    assert health.published["lastProbeTime"] == "t2"


def test_state_resumes_from_status() -> None:
    health = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    health.restore({"healthy": False, "consecutiveFailures": 4, "lastProbeTime": "t"}, 100.0)
    assert not health.healthy
    assert not health.observe(DOWN, 101.0, "t2", refresh=60)  # nothing new to say


def test_each_provider_is_probed_on_its_cheapest_listing() -> None:
    def probe_of(provider: str, api_version: str | None = None) -> tuple[str, dict[str, str]]:
        request = request_for(Target(provider, "https://h", "m", api_version, 5.0), "k")
        assert (request.method, request.body) == ("GET", None)
        return request.url, request.headers

    assert probe_of("OpenAI") == ("https://h/v1/models", {"authorization": "Bearer k"})
    assert probe_of("AzureOpenAI", "2024-10-21") == (
        "https://h/openai/deployments?api-version=2024-10-21",
        {"api-key": "k"},
    )
    assert probe_of("AzureOpenAI") == ("https://h/openai/v1/models", {"api-key": "k"})
    assert probe_of("Anthropic") == (
        "https://h/v1/models",
        {"anthropic-version": "2023-06-01", "x-api-key": "k"},
    )


def test_a_refused_key_and_a_back_off_resume_from_status() -> None:
    """A restart that forgot them would route to a refused key, or to a provider that asked
    to back off, and rewrite status."""
    wall = datetime.datetime(2026, 11, 29, 10, 0, 0, tzinfo=datetime.UTC)
    refused = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    refused.restore({"healthy": True, "reason": "CredentialsInvalid"}, 100.0, wall)
    assert refused.held_back(100.0) == "CredentialsInvalid"

    limited = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    shown: dict[str, int | str | bool | None] = {
        "healthy": True,
        "reason": "RateLimited",
        "rateLimitedUntil": "2026-11-29T10:00:30Z",
    }
    limited.restore(shown, 100.0, wall)
    assert limited.held_back(129.0) == "RateLimited"
    assert limited.rate_limit_shown(129.0) == "2026-11-29T10:00:30Z"
    assert limited.held_back(131.0) is None

    ended = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    ended.restore({**shown, "rateLimitedUntil": "2026-11-29T09:59:00Z"}, 100.0, wall)
    assert ended.held_back(100.0) is None


def test_a_back_off_shows_when_it_started_to_end_however_often_it_is_extended() -> None:
    """Each later 429 extends the back-off; status keeps the first end, not a write per 429."""
    health = BackendHealth(unhealthy_threshold=3, healthy_threshold=2)
    assert health.back_off(5, 0.0, "t+5")
    assert not health.back_off(5, 2.0, "t+7")
    assert health.rate_limit_shown(6.0) == "t+5"
    assert health.held_back(6.5) == "RateLimited"
    assert health.rate_limit_shown(7.5) is None
