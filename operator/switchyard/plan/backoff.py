"""How long a provider asked to be left alone."""

from __future__ import annotations

MAX_BACKOFF_SECONDS = 3600.0


def retry_after_seconds(value: str) -> float:
    """A Retry-After header in seconds, at least one; none, an HTTP date or garbage count as
    one second, and nothing is honoured beyond an hour."""
    try:
        return max(1.0, min(float(value), MAX_BACKOFF_SECONDS))
    except ValueError:
        return 1.0
