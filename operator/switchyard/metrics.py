"""The operator's Prometheus series."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
