"""The `status` of each kind, from the plan and what the object shows now."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from switchyard.plan.clients import ClientOutcome, ClientsPlan
from switchyard.plan.conditions import DesiredCondition, merge_conditions
from switchyard.plan.gateway import EndpointOutcome, GatewayPlan


class DataPlaneStatus(Protocol):
    """What the xDS server knows of a gateway's Envoys."""

    @property
    def streams(self) -> int: ...
    @property
    def programmed(self) -> bool: ...
    @property
    def rejection(self) -> str | None: ...


def endpoint_status(
    outcome: EndpointOutcome,
    current: dict[str, Any],
    generation: int,
    now: str,
    health: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """`health` maps backend names to what their probes last published (empty until the
    first probe: a backend is assumed healthy until probed)."""
    plan = outcome.plan
    routes = {b.name: b for b in plan.backends} if plan else {}
    backends = []
    for backend in outcome.spec.backends if outcome.spec else []:
        route = routes.get(backend.name)
        probed = health.get(backend.name, {})
        entry: dict[str, Any] = {
            "name": backend.name,
            "healthy": bool(probed.get("healthy", True)),
            "effectiveWeight": route.effective_weight if route else 0,
            "consecutiveFailures": probed.get("consecutiveFailures") or 0,
        }
        for field in ("lastProbeTime", "lastProbeLatencyMs", "rateLimitedUntil", "message"):
            if probed.get(field) is not None:
                entry[field] = probed[field]
        if route and route.unavailable_reason:
            entry["reason"] = route.unavailable_reason
        elif not route:
            entry["reason"] = "NotServed"
        backends.append(entry)
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions") or [], outcome.conditions, generation, now
        ),
        "split": plan.split if plan else "",
        "backends": backends,
    }


def programmed_condition(data_plane: str, envoys: DataPlaneStatus) -> DesiredCondition:
    """Whether the gateway's data plane runs the current config, in Envoy's own words."""
    if data_plane != "Envoy":
        return DesiredCondition.false(
            "Programmed",
            "UnsupportedDataPlane",
            f"dataPlane.type {data_plane} is not served yet; the routing plan is published",
        )
    if envoys.rejection is not None:
        return DesiredCondition.false(
            "Programmed", "Rejected", f"Envoy rejected the config: {envoys.rejection}"
        )
    if envoys.streams == 0:
        return DesiredCondition.false(
            "Programmed", "NoDataPlane", "no Envoy is connected for this gateway"
        )
    if not envoys.programmed:
        return DesiredCondition.false(
            "Programmed", "Pending", "waiting for the Envoys to accept the current config"
        )
    # No count of Envoys here: it changes whenever a Pod restarts or reconnects (an operator
    # restart would write every gateway), and the Deployment reports its replicas already.
    return DesiredCondition.true(
        "Programmed", "Programmed", "every connected Envoy runs the current config"
    )


def gateway_conditions(
    plan: GatewayPlan, programmed: DesiredCondition, clients: ClientsPlan
) -> tuple[DesiredCondition, ...]:
    attached = len(plan.attached)
    rejected = len(plan.rejected)
    accepted = DesiredCondition.true("Accepted", "Accepted", "spec accepted")
    message = f"{attached} endpoint(s) attached"
    if rejected:
        message += f", {rejected} rejected (listed in the routing plan ConfigMap)"
    if clients.required:
        message += f"; {len(clients.grants)} client(s) may call it"
    else:
        message += (
            "; clients are not checked (spec.clientAuth.mode: Disabled): anyone who reaches "
            "the listener is served"
        )
    ready = DesiredCondition.true("Ready", "Ready", message)
    return (accepted, programmed, ready)


def client_status(
    outcome: ClientOutcome,
    current: dict[str, Any],
    generation: int,
    now: str,
    use: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`use`: the client's `currentMinute` when it has limits; None (written as null, which
    the merge patch removes) when it has none."""
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions") or [], outcome.conditions, generation, now
        ),
        "models": list(outcome.models),
        "currentMinute": None if use is None else dict(use),
    }


def gateway_status(
    plan: GatewayPlan,
    current: dict[str, Any],
    generation: int,
    now: str,
    conditions: tuple[DesiredCondition, ...],
) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "conditions": merge_conditions(
            current.get("conditions") or [], conditions, generation, now
        ),
        "attachedEndpoints": len(plan.attached),
    }


def status_differs(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether writing `desired` would change anything the object shows."""
    return any(current.get(key) != value for key, value in desired.items())
