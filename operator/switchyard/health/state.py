"""One backend's health, with hysteresis: no flapping on a single odd probe."""

from __future__ import annotations

import contextlib
import datetime
from dataclasses import dataclass, field

from switchyard.health.probes import Outcome, ProbeResult


@dataclass
class BackendHealth:
    """Turns unhealthy after `unhealthy_threshold` failures in a row, healthy again after
    `healthy_threshold` successes in a row. A refused key and a 429 are tracked apart:
    they say nothing about whether the provider is up."""

    unhealthy_threshold: int
    healthy_threshold: int
    healthy: bool = True
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    credentials_valid: bool = True
    rate_limited_until: float = 0.0  # monotonic seconds
    # When the current back-off ends, in wall-clock time as status shows it: set when it
    # starts and not moved by later 429s (status would be rewritten on each), so that a
    # restarted operator resumes the back-off instead of routing to the backend again.
    rate_limit_ends: str | None = None
    # What status shows: moved on a transition, or when older than the refresh period, so a
    # steady backend's status is not rewritten on every probe.
    published: dict[str, int | str | bool | None] = field(default_factory=dict)
    published_at: float = float("-inf")

    def observe(
        self,
        result: ProbeResult,
        now: float,
        wall_time: str,
        refresh: float,
        rate_limit_ends: str | None = None,
    ) -> bool:
        """Record a probe; returns whether status or the data plane should hear of it.
        `rate_limit_ends`: wall-clock time of `now + result.retry_after`, for a 429."""
        before = self.routing_state(now)
        if result.outcome == Outcome.CREDENTIALS_INVALID:
            self.credentials_valid = False
        elif result.outcome == Outcome.RATE_LIMITED:
            self.credentials_valid = True
            self._rate_limit(now, now + result.retry_after, rate_limit_ends)
        elif result.outcome == Outcome.FAILED:
            self.consecutive_successes = 0
            self.consecutive_failures += 1
            if self.consecutive_failures >= self.unhealthy_threshold:
                self.healthy = False
        else:
            self.credentials_valid = True
            self.consecutive_failures = 0
            self.consecutive_successes += 1
            if self.consecutive_successes >= self.healthy_threshold:
                self.healthy = True
        changed = self.routing_state(now) != before
        if changed or now - self.published_at >= refresh:
            self.published = {
                "healthy": self.healthy,
                "consecutiveFailures": self.consecutive_failures,
                "lastProbeTime": wall_time,
                "lastProbeLatencyMs": result.latency_ms,
                "message": None if result.outcome == Outcome.HEALTHY else result.reason,
            }
            self.published_at = now
            return True
        return False

    def back_off(self, seconds: float, now: float, ends: str | None = None) -> bool:
        """The data plane saw a 429: hold back for its Retry-After (`ends`, in wall-clock
        time). Returns whether that changed anything the data plane cares about."""
        before = self.routing_state(now)
        self._rate_limit(now, now + seconds, ends)
        return self.routing_state(now) != before

    def _rate_limit(self, now: float, until: float, ends: str | None) -> None:
        if self.rate_limited_until <= now:
            self.rate_limit_ends = ends
        self.rate_limited_until = max(self.rate_limited_until, until)

    def rate_limit_shown(self, now: float) -> str | None:
        """When the back-off ends, while there is one, as status shows it."""
        return self.rate_limit_ends if self.rate_limited_until > now else None

    def restore(
        self,
        shown: dict[str, int | str | bool | None],
        now: float,
        wall_now: datetime.datetime | None = None,
    ) -> None:
        """Resume from what status showed before a restart, so a restart writes nothing:
        health, a refused key, and a back-off that has not ended yet."""
        self.healthy = bool(shown.get("healthy", True))
        failures = shown.get("consecutiveFailures")
        self.consecutive_failures = failures if isinstance(failures, int) else 0
        self.credentials_valid = shown.get("reason") != "CredentialsInvalid"
        ends = shown.get("rateLimitedUntil")
        if isinstance(ends, str) and wall_now is not None:
            with contextlib.suppress(ValueError):
                remaining = (datetime.datetime.fromisoformat(ends) - wall_now).total_seconds()
                if remaining > 0:
                    self.rate_limited_until = now + remaining
                    self.rate_limit_ends = ends
        self.published = {
            key: shown.get(key)
            for key in (
                "healthy",
                "consecutiveFailures",
                "lastProbeTime",
                "lastProbeLatencyMs",
                "message",
            )
        }
        self.published_at = now

    def routing_state(self, now: float) -> tuple[bool, bool, bool]:
        return (self.healthy, self.credentials_valid, self.rate_limited_until > now)

    def held_back(self, now: float) -> str | None:
        """Why the backend should carry no traffic now, if it should not."""
        if not self.healthy:
            return "Unhealthy"
        if not self.credentials_valid:
            return "CredentialsInvalid"
        if self.rate_limited_until > now:
            return "RateLimited"
        return None
