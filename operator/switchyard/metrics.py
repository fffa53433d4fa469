"""The operator's Prometheus series: per-backend health, routing, failovers, reconciles, xDS.

Labels are names of Kubernetes objects only (namespace, gateway, endpoint, backend,
provider): never key material or request content. Series of a backend that goes away are
removed, so cardinality follows the objects that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

BACKEND_LABELS = ["namespace", "endpoint", "backend", "provider", "gateway"]

RECONCILE_DURATION = Histogram(
    "switchyard_gateway_reconcile_duration_seconds",
    "Time one pass over a ModelGateway and its endpoints took.",
    ["namespace", "gateway"],
)
RECONCILE_ERRORS = Counter(
    "switchyard_gateway_reconcile_errors_total",
    "Passes over a ModelGateway that failed and were retried.",
    ["namespace", "gateway"],
)
API_WRITES = Counter(
    "switchyard_api_writes_total",
    "Writes the operator made to the Kubernetes API.",
    ["kind"],
)
API_REQUESTS = Counter(
    "switchyard_api_requests_total",
    "Requests the operator made to the Kubernetes API (its watches aside), by client call.",
    ["operation"],
)
XDS_PUSHES = Counter(
    "switchyard_xds_pushes_total",
    "Configuration responses sent to Envoys.",
    ["gateway_namespace", "gateway"],
)
CLIENT_LIMIT = Gauge(
    "switchyard_client_limit",
    "A ModelClient's limit per minute (limit: requests or tokens), held across its "
    "gateway's Envoys.",
    ["gateway", "client", "limit"],
)
CLIENT_LIMITED = Counter(
    "switchyard_client_limited_total",
    "Requests the gateway refused (429) because their ModelClient had reached a limit.",
    ["gateway", "client", "limit"],
)
XDS_REJECTIONS = Counter(
    "switchyard_xds_rejections_total",
    "Configurations an Envoy rejected (NACK).",
    ["gateway_namespace", "gateway"],
)

BackendLabels = tuple[str, str, str, str, str]  # as BACKEND_LABELS
PROBE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAILOVER_REASONS = ("Unhealthy", "CredentialsInvalid", "RateLimited")


@dataclass(slots=True)
class Buckets:
    """One histogram's numbers: how many observations were at most each bound (cumulative,
    as Prometheus buckets are), how many in all, and their sum."""

    bounds: tuple[float, ...]
    counts: list[int] = field(init=False)
    count: int = 0
    sum: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        self.count += 1
        self.sum += value
        for index, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[index] += 1

    def add_to(self, family: HistogramMetricFamily, labels: Sequence[str]) -> None:
        if self.count:
            bounds = [f"{bound:g}" for bound in self.bounds] + ["+Inf"]
            cumulative = [*self.counts, self.count]
            family.add_metric(labels, list(zip(bounds, cumulative, strict=True)), self.sum)


@dataclass(slots=True)
class BackendValues:
    """One backend's series as plain numbers; None: not known yet, so not exported."""

    up: float | None = None
    consecutive_failures: float | None = None
    credentials_valid: float | None = None
    rate_limited: float | None = None
    effective_weight: float | None = None
    traffic_share: float | None = None
    failovers: list[int] = field(default_factory=lambda: [0] * len(FAILOVER_REASONS))
    probes: Buckets = field(default_factory=lambda: Buckets(PROBE_BUCKETS))

    def observe_probe(self, seconds: float) -> None:
        self.probes.observe(seconds)

    def failed_over(self, reason: str) -> None:
        self.failovers[FAILOVER_REASONS.index(reason)] += 1


_GAUGES = {
    "up": (
        "switchyard_backend_up",
        "1 while the backend passes its health probes (with hysteresis), else 0.",
    ),
    "consecutive_failures": (
        "switchyard_backend_consecutive_failures",
        "Failed probes in a row.",
    ),
    "credentials_valid": (
        "switchyard_backend_credentials_valid",
        "0 while the provider refuses the backend's key (401/403), else 1.",
    ),
    "rate_limited": (
        "switchyard_backend_rate_limited",
        "1 while the provider asked to back off (429 Retry-After), else 0.",
    ),
    "effective_weight": (
        "switchyard_backend_effective_weight",
        "Weight the data plane uses for the backend now (0 while it carries no traffic).",
    ),
    "traffic_share": (
        "switchyard_backend_traffic_share_ratio",
        "Share of its endpoint's traffic the backend is routed now, 0 to 1.",
    ),
}
_PROBE_DURATION = ("switchyard_backend_probe_duration_seconds", "Duration of active health probes.")
_FAILOVERS = (
    "switchyard_failovers",
    "Times a backend was taken out of rotation (unhealthy, key refused, rate limited).",
)


class BackendSeries(Collector):
    """Every backend's series, kept as plain numbers and turned into samples at scrape time.

    With thousands of backends, a prometheus_client child per backend and series (each
    value with its own lock) cost about 10 KB a backend; this costs a few hundred bytes."""

    def __init__(self) -> None:
        self._backends: dict[BackendLabels, BackendValues] = {}

    def of(self, labels: BackendLabels) -> BackendValues:
        values = self._backends.get(labels)
        if values is None:
            values = self._backends[labels] = BackendValues()
        return values

    def forget(self, labels: BackendLabels) -> None:
        """Remove a backend's series once it no longer exists."""
        self._backends.pop(labels, None)

    def describe(self) -> Iterator[Metric]:
        for name, documentation in _GAUGES.values():
            yield GaugeMetricFamily(name, documentation, labels=BACKEND_LABELS)
        yield HistogramMetricFamily(*_PROBE_DURATION, labels=BACKEND_LABELS)
        yield CounterMetricFamily(*_FAILOVERS, labels=[*BACKEND_LABELS, "reason"])

    def collect(self) -> Iterator[Metric]:
        gauges = {
            attribute: GaugeMetricFamily(name, documentation, labels=BACKEND_LABELS)
            for attribute, (name, documentation) in _GAUGES.items()
        }
        probes = HistogramMetricFamily(*_PROBE_DURATION, labels=BACKEND_LABELS)
        failovers = CounterMetricFamily(*_FAILOVERS, labels=[*BACKEND_LABELS, "reason"])
        for labels, values in self._backends.items():
            for attribute, family in gauges.items():
                value = getattr(values, attribute)
                if value is not None:
                    family.add_metric(labels, value)
            for reason, count in zip(FAILOVER_REASONS, values.failovers, strict=True):
                failovers.add_metric([*labels, reason], count)
            values.probes.add_to(probes, labels)
        yield from gauges.values()
        yield probes
        yield failovers


BACKENDS = BackendSeries()
REGISTRY.register(BACKENDS)


# The answers' series: OpenTelemetry's GenAI metrics in Prometheus form, with the objects'
# names. Every label is bounded: objects' names, the model the client asked for as the
# endpoint names it, at most MAX_RESPONSE_MODELS models a backend's provider reported (the
# rest are "other"), and error types from a fixed set.
ANSWER_LABELS = [
    *BACKEND_LABELS,
    "client",
    "gen_ai_request_model",
    "gen_ai_response_model",
    "error_type",
]
AnswerLabels = tuple[str, str, str, str, str, str, str, str, str]  # as ANSWER_LABELS
MAX_RESPONSE_MODELS = 8
OTHER_MODEL = "other"
TOKEN_TYPES = ("input", "output", "cached_input")
# OpenTelemetry's advice for each histogram's buckets.
TOKEN_BUCKETS = tuple(float(4**power) for power in range(14))  # 1 .. 67,108,864
DURATION_BUCKETS = tuple(0.01 * 2**power for power in range(14))  # 0.01 .. 81.92 s
FIRST_TOKEN_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
)  # fmt: skip
OUTPUT_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

_TOKENS = ("gen_ai_client_token_usage", "Tokens each answer used, by type (input counts "
           "cached input too).")  # fmt: skip
_DURATION = ("gen_ai_client_operation_duration_seconds",
             "Time from the request's start to the answer's last byte.")  # fmt: skip
_FIRST_TOKEN = ("gen_ai_server_time_to_first_token_seconds",
                "Time from a streamed request's start to its first event.")  # fmt: skip
_PER_OUTPUT_TOKEN = ("gen_ai_server_time_per_output_token_seconds",
                     "Time per output token after the first, of streamed answers.")  # fmt: skip
_COST = ("switchyard_cost", "What answers cost, from their backend's pricing.")


@dataclass(slots=True)
class AnswerValues:
    """The series of one combination of answer labels, as plain numbers."""

    tokens: dict[str, Buckets] = field(
        default_factory=lambda: {kind: Buckets(TOKEN_BUCKETS) for kind in TOKEN_TYPES}
    )
    duration: Buckets = field(default_factory=lambda: Buckets(DURATION_BUCKETS))
    first_token: Buckets = field(default_factory=lambda: Buckets(FIRST_TOKEN_BUCKETS))
    per_output_token: Buckets = field(default_factory=lambda: Buckets(OUTPUT_TOKEN_BUCKETS))
    cost: dict[str, float] = field(default_factory=dict)  # currency -> amount


class AnswerSeries(Collector):
    """Every answer the gateways report, summed by its labels."""

    def __init__(self) -> None:
        self._answers: dict[AnswerLabels, AnswerValues] = {}
        # (namespace, endpoint, backend) -> the response models seen, in the order seen
        self._models: dict[tuple[str, str, str], list[str]] = {}

    def of(self, backend: BackendLabels, client: str, request_model: str,
           response_model: str, error_type: str) -> AnswerValues:  # fmt: skip
        seen = self._models.setdefault(backend[:3], [])
        if response_model and response_model not in seen:
            if len(seen) < MAX_RESPONSE_MODELS:
                seen.append(response_model)
            else:
                response_model = OTHER_MODEL
        labels: AnswerLabels = (*backend, client, request_model, response_model, error_type)
        values = self._answers.get(labels)
        if values is None:
            values = self._answers[labels] = AnswerValues()
        return values

    def forget(self, backend: BackendLabels) -> None:
        """Remove a backend's series once it no longer exists."""
        self._models.pop(backend[:3], None)
        for labels in [labels for labels in self._answers if labels[:5] == backend]:
            del self._answers[labels]

    def forget_client(self, client: str) -> None:
        """Remove a client's series once it no longer exists."""
        for labels in [labels for labels in self._answers if labels[5] == client]:
            del self._answers[labels]

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families(self._answers.items())

    @staticmethod
    def _families(
        answers: Iterable[tuple[AnswerLabels, AnswerValues]] = (),
    ) -> Iterator[Metric]:
        tokens = HistogramMetricFamily(*_TOKENS, labels=[*ANSWER_LABELS, "gen_ai_token_type"])
        duration = HistogramMetricFamily(*_DURATION, labels=ANSWER_LABELS)
        first_token = HistogramMetricFamily(*_FIRST_TOKEN, labels=ANSWER_LABELS)
        per_output_token = HistogramMetricFamily(*_PER_OUTPUT_TOKEN, labels=ANSWER_LABELS)
        cost = CounterMetricFamily(*_COST, labels=[*ANSWER_LABELS, "currency"])
        for labels, values in answers:
            for kind, buckets in values.tokens.items():
                buckets.add_to(tokens, [*labels, kind])
            values.duration.add_to(duration, labels)
            values.first_token.add_to(first_token, labels)
            values.per_output_token.add_to(per_output_token, labels)
            for currency, amount in values.cost.items():
                cost.add_metric([*labels, currency], amount)
        yield from (tokens, duration, first_token, per_output_token, cost)


ANSWERS = AnswerSeries()
REGISTRY.register(ANSWERS)


def forget_backend(labels: BackendLabels) -> None:
    """Remove every series of a backend that no longer exists."""
    BACKENDS.forget(labels)
    ANSWERS.forget(labels)


async def serve(host: str, port: int, alive: Callable[[], bool]) -> web.AppRunner:
    """`/metrics` for Prometheus and `/healthz` for the kubelet's liveness probe."""

    async def scrape(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n") if alive() else web.Response(status=503, text="stalled\n")

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
