"""What each answer the gateways report adds to the answers' series: its tokens, latency and
cost, by backend and by client."""

from __future__ import annotations

from switchyard import metrics
from switchyard.api.models import Pricing
from switchyard.providers.usage import TokenUsage
from switchyard.xds.server import Answer


def error_type(status: int) -> str:
    """OpenTelemetry's error.type, bounded: empty for an answer, else its HTTP status, or
    `no_response` when the backend gave none (a reset, a timeout)."""
    if status == 0:
        return "no_response"
    return "" if status < 400 else str(status)


def account(values: metrics.AnswerValues, answer: Answer, pricing: Pricing | None) -> None:
    values.duration.observe(answer.duration)
    if answer.first_event is not None and answer.status < 400:
        values.first_token.observe(answer.first_event)
    usage = TokenUsage.of(answer.usage)
    if usage is None:
        return
    values.tokens["input"].observe(usage.input)
    values.tokens["output"].observe(usage.output)
    values.tokens["cached_input"].observe(usage.cached)
    if answer.first_event is not None and usage.output > 1:
        streaming = max(0.0, answer.duration - answer.first_event)
        values.per_output_token.observe(streaming / (usage.output - 1))
    if pricing is not None:
        cost = float(pricing.cost(usage.input, usage.output, usage.cached))
        values.cost[pricing.currency] = values.cost.get(pricing.currency, 0.0) + cost
