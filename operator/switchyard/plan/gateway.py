"""Everything one ModelGateway serves: which endpoints attach, which are refused and why.

Model conflicts can only be judged with every endpoint of a gateway in view, so endpoint
conditions are decided here too, in one pass per gateway.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field

from switchyard.api.models import ModelEndpointSpec, ModelGatewaySpec
from switchyard.plan.conditions import DesiredCondition
from switchyard.plan.egress import ANY_CLUSTER, NOT_ALLOWED, ApiServer, refusal
from switchyard.plan.routing import (
    EndpointPlan,
    PlanCache,
    workload_identity_key,
    zero_weight_tiers,
)
from switchyard.plan.selectors import namespace_admitted
from switchyard.providers import Exchange

ObjectKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class GatewaySource:
    namespace: str
    name: str
    generation: int
    spec: ModelGatewaySpec


@dataclass(frozen=True)
class EndpointSource:
    """One ModelEndpoint as read from the API server."""

    namespace: str
    name: str
    generation: int
    created: str  # RFC 3339 creationTimestamp; sorts chronologically as text
    spec: ModelEndpointSpec | None
    spec_error: str | None = None

    @property
    def key(self) -> ObjectKey:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class SecretKeys:
    """What a plan may know of a Secret: which keys hold a non-empty value. Never the values."""

    keys: frozenset[str]

    @classmethod
    def from_data(cls, data: Mapping[str, str]) -> SecretKeys:
        """From a Secret's base64 `data`. A blank value counts as a missing key."""
        return cls(frozenset(k for k, v in data.items() if v and base64.b64decode(v).strip()))


def key_material(value: str) -> str:
    """A Secret value (base64) as the credential it holds, in base64: without the white space
    around it, such as the newline that `kubectl create secret --from-file` keeps from the
    file and that no HTTP header may carry. Probes and the data plane send these bytes."""
    return base64.b64encode(base64.b64decode(value).strip()).decode()


@dataclass(frozen=True)
class CredentialCopy:
    """One key the gateway's credentials Secret takes from an endpoint's Secret: as it is,
    or the token it is exchanged for (`exchange`). For a workload identity's exchange,
    `source` is the gateway's ServiceAccount instead, and `source_key` empty."""

    target_key: str
    source: ObjectKey
    source_key: str
    exchange: Exchange | None = None


@dataclass(frozen=True)
class Rejection:
    namespace: str
    name: str
    model: str
    reason: str
    message: str


@dataclass(frozen=True)
class EndpointOutcome:
    """The conditions an endpoint should show, and its plan when the gateway serves it."""

    conditions: tuple[DesiredCondition, ...]
    plan: EndpointPlan | None
    spec: ModelEndpointSpec | None


@dataclass
class GatewayPlan:
    namespace: str
    name: str
    gateway: GatewaySource | None
    attached: list[EndpointPlan] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    outcomes: dict[ObjectKey, EndpointOutcome] = field(default_factory=dict)
    credentials: list[CredentialCopy] = field(default_factory=list)


def admits(
    gateway: GatewaySource, namespace: str, namespace_labels: Mapping[str, str] | None
) -> bool:
    policy = gateway.spec.allowed_endpoints.namespaces
    return namespace_admitted(policy, gateway.namespace, namespace, namespace_labels)


def plan_gateway(
    key: ObjectKey,
    gateway: GatewaySource | None,
    endpoints: list[EndpointSource],
    namespace_labels: Mapping[str, Mapping[str, str]],
    secrets: Mapping[ObjectKey, SecretKeys | None],
    held_back: Mapping[tuple[str, str, str], str] | None = None,
    cache: PlanCache | None = None,
    api_server: ApiServer = ANY_CLUSTER,
) -> GatewayPlan:
    """Decide, for every endpoint that names this gateway, whether and how it is served.

    `secrets` holds every Secret the endpoints reference; None marks one that does not exist.
    `held_back` maps (namespace, endpoint, backend) to why that backend should carry no
    traffic now: Unhealthy, CredentialsInvalid or RateLimited. `api_server` names this
    cluster's API server, which is never a backend.
    """
    namespace, name = key
    result = GatewayPlan(namespace=namespace, name=name, gateway=gateway)
    # The oldest endpoint keeps a contested model name; name order breaks ties.
    ordered = sorted(endpoints, key=lambda e: (e.created, e.namespace, e.name))
    claimed: dict[str, EndpointSource] = {}
    planner = cache if cache is not None else PlanCache()
    for endpoint in ordered:
        outcome = _decide(
            endpoint, key, gateway, namespace_labels, secrets, claimed, held_back or {}, planner,
            api_server,
        )  # fmt: skip
        result.outcomes[endpoint.key] = outcome
        if outcome.plan is not None:
            result.attached.append(outcome.plan)
            result.credentials.extend(_credential_copies(endpoint, outcome.plan, secrets, gateway))
        elif gateway is not None:
            ready = outcome.conditions[-1]
            result.rejected.append(
                Rejection(
                    namespace=endpoint.namespace,
                    name=endpoint.name,
                    model=endpoint.spec.model if endpoint.spec else "",
                    reason=ready.reason,
                    message=ready.message,
                )
            )
    planner.rotate()
    result.attached.sort(key=lambda p: p.model)
    result.credentials = sorted(set(result.credentials), key=lambda c: c.target_key)
    return result


def _decide(
    endpoint: EndpointSource,
    key: ObjectKey,
    gateway: GatewaySource | None,
    namespace_labels: Mapping[str, Mapping[str, str]],
    secrets: Mapping[ObjectKey, SecretKeys | None],
    claimed: dict[str, EndpointSource],
    held_back: Mapping[tuple[str, str, str], str],
    planner: PlanCache,
    api_server: ApiServer,
) -> EndpointOutcome:
    spec = endpoint.spec
    gateway_name = f"{key[0]}/{key[1]}"
    if spec is None:
        accepted = DesiredCondition.false(
            "Accepted", "InvalidSpec", f"spec is invalid: {endpoint.spec_error}"
        )
        return EndpointOutcome((accepted, _not_ready(accepted)), None, None)

    unresolved = _unresolved_backends(endpoint.namespace, spec, secrets)
    identity = gateway.spec.data_plane.service_account_name if gateway else None
    for backend in spec.backends:
        if backend.workload_identity and identity is None:
            unresolved[backend.name] = (
                "WorkloadIdentityNotSet",
                f"it has no credentialsRef, so it signs with the workload identity of ModelGateway"
                f" {gateway_name}, which names none: spec.dataPlane.serviceAccountName",
            )
    allowed = gateway.spec.allowed_backends if gateway else None
    for backend in spec.backends:
        if why := refusal(backend.base_url, allowed, api_server):
            unresolved[backend.name] = (NOT_ALLOWED, why)
    if unresolved:
        resolved_refs = DesiredCondition.false(
            "ResolvedRefs",
            _common_reason(unresolved),
            "; ".join(f"backend {b}: {why[1]}" for b, why in sorted(unresolved.items())),
        )
    else:
        resolved_refs = DesiredCondition.true(
            "ResolvedRefs",
            "ResolvedRefs",
            "every backend URL is allowed and every credentialsRef Secret and key resolved",
        )

    accepted = _accepted(endpoint, spec, gateway, gateway_name, namespace_labels, claimed)
    if accepted.status == "False":
        return EndpointOutcome((accepted, resolved_refs, _not_ready(accepted)), None, spec)

    unavailable = {b: why[0] for b, why in unresolved.items()}
    held = {
        b.name: reason
        for b in spec.backends
        if (reason := held_back.get((*endpoint.key, b.name))) and b.name not in unavailable
    }
    plan = planner.plan(endpoint.namespace, endpoint.name, spec, unavailable | held)
    if held and not plan.routable:
        # Nothing healthy is left: send to all of them, so retries have somewhere to go.
        plan = planner.plan(endpoint.namespace, endpoint.name, spec, unavailable)
        if plan.routable:
            why = "; ".join(f"backend {b}: {r}" for b, r in sorted(held.items()))
            degraded = DesiredCondition.true(
                "Degraded", "NoHealthyBackend", f"no backend is available ({why}); "
                "traffic goes to all of them until one recovers",
            )  # fmt: skip
            ready = DesiredCondition.false("Ready", "NoHealthyBackend", degraded.message)
            return EndpointOutcome((accepted, resolved_refs, degraded, ready), plan, spec)
    if not plan.routable:
        ready = DesiredCondition.false(
            "Ready",
            "NoRoutableBackend",
            "no backend can carry traffic: " + resolved_refs.message,
        )
        return EndpointOutcome((accepted, resolved_refs, ready), None, spec)
    if held:
        degraded = DesiredCondition.true(
            "Degraded",
            "BackendsUnavailable",
            "; ".join(f"backend {b}: {r}" for b, r in sorted(held.items()))
            + "; their share goes to the other backends",
        )
    else:
        degraded = DesiredCondition.false(
            "Degraded", "AllBackendsAvailable", "every configured backend may carry traffic"
        )
    if unresolved:
        ready = DesiredCondition.false(
            "Ready",
            "RefsNotResolved",
            f"served by gateway {gateway_name} without backends "
            + ", ".join(sorted(unresolved))
            + ": "
            + resolved_refs.message,
        )
    else:
        ready = DesiredCondition.true("Ready", "Ready", f"served by gateway {gateway_name}")
    return EndpointOutcome((accepted, resolved_refs, degraded, ready), plan, spec)


def _accepted(
    endpoint: EndpointSource,
    spec: ModelEndpointSpec,
    gateway: GatewaySource | None,
    gateway_name: str,
    namespace_labels: Mapping[str, Mapping[str, str]],
    claimed: dict[str, EndpointSource],
) -> DesiredCondition:
    if gateway is None:
        return DesiredCondition.false(
            "Accepted", "GatewayNotFound", f"ModelGateway {gateway_name} not found"
        )
    if not admits(gateway, endpoint.namespace, namespace_labels.get(endpoint.namespace)):
        policy = gateway.spec.allowed_endpoints.namespaces.from_
        return DesiredCondition.false(
            "Accepted",
            "NotAllowedByGateway",
            f"ModelGateway {gateway_name} does not admit endpoints from namespace "
            f"{endpoint.namespace} (allowedEndpoints.namespaces.from: {policy})",
        )
    empty_tiers = zero_weight_tiers(spec)
    if empty_tiers:
        return DesiredCondition.false(
            "Accepted",
            "ZeroWeightTier",
            "every backend weight is 0 in priority tier "
            + ", ".join(str(p) for p in empty_tiers)
            + ": spec.backends[].weight",
        )
    owner = claimed.setdefault(spec.model, endpoint)
    if owner is not endpoint:
        return DesiredCondition.false(
            "Accepted",
            "ModelConflict",
            f"model {spec.model!r} on ModelGateway {gateway_name} is already served by "
            f"ModelEndpoint {owner.namespace}/{owner.name}, which is older",
        )
    return DesiredCondition.true("Accepted", "Accepted", f"admitted by ModelGateway {gateway_name}")


def _unresolved_backends(
    namespace: str, spec: ModelEndpointSpec, secrets: Mapping[ObjectKey, SecretKeys | None]
) -> dict[str, tuple[str, str]]:
    """Backend name -> (reason, message) for every credentialsRef that does not resolve."""
    unresolved: dict[str, tuple[str, str]] = {}
    for backend in spec.backends:
        ref = backend.credentials_ref
        if ref is None:
            continue
        secret = secrets.get((namespace, ref.name))
        if secret is None:
            unresolved[backend.name] = (
                "SecretNotFound",
                f"Secret {namespace}/{ref.name} not found",
            )
        elif ref.key not in secret.keys:
            unresolved[backend.name] = (
                "SecretKeyNotFound",
                f"Secret {namespace}/{ref.name} has no non-empty key {ref.key!r}",
            )
    return unresolved


def _common_reason(unresolved: Mapping[str, tuple[str, str]]) -> str:
    reasons = {reason for reason, _ in unresolved.values()}
    return reasons.pop() if len(reasons) == 1 else "RefsNotResolved"


def _not_ready(cause: DesiredCondition) -> DesiredCondition:
    return DesiredCondition.false("Ready", cause.reason, cause.message)


def _credential_copies(
    endpoint: EndpointSource,
    plan: EndpointPlan,
    secrets: Mapping[ObjectKey, SecretKeys | None],
    gateway: GatewaySource | None,
) -> list[CredentialCopy]:
    """The keys of every backend whose reference resolves, whatever its health: a backend
    held back now (unhealthy, rate limited, refused) finds its key already mounted when it
    comes back, as the kubelet takes a while to bring a changed Secret into the Pods. A
    backend the gateway may not send to gets no key. A backend that uses the gateway's
    workload identity gets its credentials, from its ServiceAccount."""
    assert endpoint.spec is not None
    refs = {b.name: b.credentials_ref for b in endpoint.spec.backends}
    identity = gateway.spec.data_plane.service_account_name if gateway else None
    copies = []
    for backend in plan.backends:
        if backend.unavailable_reason == NOT_ALLOWED:
            continue
        exchange = backend.workload_identity
        if exchange is not None and gateway is not None and identity is not None:
            account = (gateway.namespace, identity)
            copies.append(CredentialCopy(workload_identity_key(exchange), account, "", exchange))
        ref = refs[backend.name]
        if ref is None or backend.credentials_key is None:
            continue
        secret = secrets.get((endpoint.namespace, ref.name))
        if secret is None or ref.key not in secret.keys:
            continue
        copies.append(
            CredentialCopy(
                backend.credentials_key,
                (endpoint.namespace, ref.name),
                ref.key,
                backend.terms.exchange,
            )
        )
    return copies
