"""How each client API's answers report token usage, and what those reports add up to.

The data plane reads usage from the answer in the client's API, after any translation: so
two formats cover every provider. Each field is a JSON path in a whole answer or in one
streamed event; Envoy's json_to_metadata and sse_to_metadata filters copy the numbers into
dynamic metadata under the field's key, the last occurrence winning (Anthropic's stream
reports output tokens cumulatively in each `message_delta`). The two APIs count differently:
OpenAI's `prompt_tokens` include the cached ones, Anthropic's `input_tokens` exclude cache
reads and writes. `TokenUsage.of` adds them up the OpenTelemetry GenAI way: input tokens are
every prompt token, cached or not.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from switchyard.providers.base import ClientApi

# How the data plane reports each answer to the operator (the renderer sets it up, the xDS
# server reads it): a gRPC access log of this name, whose entries carry the usage in this
# dynamic metadata namespace, with the first streamed event's time (ms since the epoch).
ANSWER_LOG = "switchyard-usage"
USAGE_NAMESPACE = "switchyard.usage"
FIRST_EVENT_KEY = "first_event_ms"
# A client's limits, in the data plane: the clients filter writes them, the rate limit filter
# reads them, and a request refused for one carries which (`requests`, `tokens`) under
# LIMIT_HIT_KEY in the same record.
LIMITS_NAMESPACE = "switchyard.limits"
LIMIT_HIT_KEY = "hit"


@dataclass(frozen=True)
class UsageField:
    """One number (or the model) an answer reports: the dynamic metadata key it lands under,
    and where it is in a whole answer or a streamed event."""

    key: str
    paths: tuple[tuple[str, ...], ...]
    number: bool = True
    # Whether it adds to the answer's tokens: OpenAI's cached tokens are a part of its
    # prompt tokens, already counted.
    adds: bool = True


# The model the provider reports, whichever API: OpenAI's answers and chunks, Anthropic's
# answers, and Anthropic's `message_start` event.
RESPONSE_MODEL = UsageField("response_model", (("model",), ("message", "model")), number=False)

USAGE_FIELDS: Mapping[ClientApi, tuple[UsageField, ...]] = {
    ClientApi.OPENAI: (
        UsageField("prompt_tokens", (("usage", "prompt_tokens"),)),
        UsageField("completion_tokens", (("usage", "completion_tokens"),)),
        UsageField(
            "cached_tokens", (("usage", "prompt_tokens_details", "cached_tokens"),), adds=False
        ),
    ),
    ClientApi.ANTHROPIC: tuple(
        UsageField(name, (("usage", name), ("message", "usage", name)))
        for name in (
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "cache_creation_input_tokens",
        )
    ),
}
ALL_FIELDS = (*(f for fields in USAGE_FIELDS.values() for f in fields), RESPONSE_MODEL)
# The keys whose sum is an answer's tokens, input (cached included) and output, in either
# API (an answer reports one API's keys): what a client's tokens-per-minute limit counts.
TOTAL_KEYS = tuple(f.key for f in ALL_FIELDS if f.number and f.adds)


@dataclass(frozen=True)
class TokenUsage:
    """Tokens one answer used: `input` counts every prompt token, `cached` those of them
    read from the provider's prompt cache."""

    input: int
    output: int
    cached: int

    @property
    def total(self) -> int:
        return self.input + self.output

    @classmethod
    def of(cls, reported: Mapping[str, float]) -> TokenUsage | None:
        """What the data plane read from an answer (`UsageField.key` -> number); None when
        the answer reported no usage (an error, or a stream cut short)."""

        def count(key: str) -> int:
            return max(0, int(reported.get(key, 0)))

        if "prompt_tokens" in reported or "completion_tokens" in reported:
            return cls(count("prompt_tokens"), count("completion_tokens"), count("cached_tokens"))
        if "input_tokens" in reported or "output_tokens" in reported:
            cached = count("cache_read_input_tokens")
            written = count("cache_creation_input_tokens")
            return cls(count("input_tokens") + cached + written, count("output_tokens"), cached)
        return None
