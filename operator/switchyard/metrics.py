"""The operator's Prometheus series: per-backend health, routing, failovers, reconciles, xDS.

Labels are names of Kubernetes objects only (namespace, gateway, endpoint, backend,
provider): never key material or request content. Series of a backend that goes away are
removed, so cardinality follows the objects that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    Counter,
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
XDS_REJECTIONS = Counter(
    "switchyard_xds_rejections_total",
    "Configurations an Envoy rejected (NACK).",
    ["gateway_namespace", "gateway"],
)

BackendLabels = tuple[str, str, str, str, str]  # as BACKEND_LABELS
PROBE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
FAILOVER_REASONS = ("Unhealthy", "CredentialsInvalid", "RateLimited")


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
    # Probes that took at most each bound: cumulative, as Prometheus buckets are.
    probe_buckets: list[int] = field(default_factory=lambda: [0] * len(PROBE_BUCKETS))
    probe_count: int = 0
    probe_sum: float = 0.0

    def observe_probe(self, seconds: float) -> None:
        self.probe_count += 1
        self.probe_sum += seconds
        for index, bound in enumerate(PROBE_BUCKETS):
            if seconds <= bound:
                self.probe_buckets[index] += 1

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
        bounds = [f"{bound:g}" for bound in PROBE_BUCKETS] + ["+Inf"]
        for labels, values in self._backends.items():
            for attribute, family in gauges.items():
                value = getattr(values, attribute)
                if value is not None:
                    family.add_metric(labels, value)
            for reason, count in zip(FAILOVER_REASONS, values.failovers, strict=True):
                failovers.add_metric([*labels, reason], count)
            if values.probe_count:
                cumulative = [*values.probe_buckets, values.probe_count]
                probes.add_metric(
                    labels, list(zip(bounds, cumulative, strict=True)), values.probe_sum
                )
        yield from gauges.values()
        yield probes
        yield failovers


BACKENDS = BackendSeries()
REGISTRY.register(BACKENDS)


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
