"""The operator's Prometheus series: per-backend health, routing, failovers, reconciles, xDS.

Labels are names of Kubernetes objects only (namespace, gateway, endpoint, backend,
provider): never key material or request content. Series of a backend that goes away are
removed, so cardinality follows the objects that exist.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

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
BACKEND_UP = Gauge(
    "switchyard_backend_up",
    "1 while the backend passes its health probes (with hysteresis), else 0.",
    BACKEND_LABELS,
)
BACKEND_PROBE_DURATION = Histogram(
    "switchyard_backend_probe_duration_seconds",
    "Duration of active health probes.",
    BACKEND_LABELS,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BACKEND_CONSECUTIVE_FAILURES = Gauge(
    "switchyard_backend_consecutive_failures",
    "Failed probes in a row.",
    BACKEND_LABELS,
)
BACKEND_CREDENTIALS_VALID = Gauge(
    "switchyard_backend_credentials_valid",
    "0 while the provider refuses the backend's key (401/403), else 1.",
    BACKEND_LABELS,
)
BACKEND_RATE_LIMITED = Gauge(
    "switchyard_backend_rate_limited",
    "1 while the provider asked to back off (429 Retry-After), else 0.",
    BACKEND_LABELS,
)
BACKEND_EFFECTIVE_WEIGHT = Gauge(
    "switchyard_backend_effective_weight",
    "Weight the data plane uses for the backend now (0 while it carries no traffic).",
    BACKEND_LABELS,
)
BACKEND_TRAFFIC_SHARE = Gauge(
    "switchyard_backend_traffic_share_ratio",
    "Share of its endpoint's traffic the backend is routed now, 0 to 1.",
    BACKEND_LABELS,
)
FAILOVERS = Counter(
    "switchyard_failovers_total",
    "Times a backend was taken out of rotation (unhealthy, key refused, rate limited).",
    [*BACKEND_LABELS, "reason"],
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

_BACKEND_SERIES = (
    BACKEND_UP,
    BACKEND_PROBE_DURATION,
    BACKEND_CONSECUTIVE_FAILURES,
    BACKEND_CREDENTIALS_VALID,
    BACKEND_RATE_LIMITED,
    BACKEND_EFFECTIVE_WEIGHT,
    BACKEND_TRAFFIC_SHARE,
)


def forget_backend(labels: tuple[str, str, str, str, str]) -> None:
    """Remove a backend's series once it no longer exists."""
    for series in _BACKEND_SERIES:
        with contextlib.suppress(KeyError):
            series.remove(*labels)
    for reason in ("Unhealthy", "CredentialsInvalid", "RateLimited"):
        with contextlib.suppress(KeyError):
            FAILOVERS.remove(*labels, reason)


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
