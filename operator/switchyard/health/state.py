"""One backend's health, with hysteresis: no flapping on a single odd probe."""

from __future__ import annotations

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
    last_reason: str = field(default="")
    # What status shows: moved on a transition, or when older than the refresh period, so a
    # steady backend's status is not rewritten on every probe.
    published: dict[str, int | str | bool | None] = field(default_factory=dict)
    published_at: float = float("-inf")

    def observe(self, result: ProbeResult, now: float, wall_time: str, refresh: float) -> bool:
        """Record a probe; returns whether status or the data plane should hear of it."""
        before = self.routing_state(now)
        self.last_reason = result.reason
        if result.outcome == Outcome.CREDENTIALS_INVALID:
            self.credentials_valid = False
        elif result.outcome == Outcome.RATE_LIMITED:
            self.credentials_valid = True
            self.rate_limited_until = max(self.rate_limited_until, now + result.retry_after)
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
            }
            self.published_at = now
            return True
        return False

    def back_off(self, seconds: float, now: float) -> bool:
        """The data plane saw a 429: hold back for its Retry-After. Returns whether that
        changed anything the data plane cares about."""
        before = self.routing_state(now)
        self.rate_limited_until = max(self.rate_limited_until, now + seconds)
        return self.routing_state(now) != before

    def restore(self, shown: dict[str, int | str | bool | None], now: float) -> None:
        """Resume from what status showed before a restart, so a restart writes nothing."""
        self.healthy = bool(shown.get("healthy", True))
        failures = shown.get("consecutiveFailures")
        self.consecutive_failures = failures if isinstance(failures, int) else 0
        self.published = {
            key: shown.get(key)
            for key in ("healthy", "consecutiveFailures", "lastProbeTime", "lastProbeLatencyMs")
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
