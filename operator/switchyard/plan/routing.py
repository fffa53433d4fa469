"""The routing plan of one ModelEndpoint: tiers, effective weights and traffic shares."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from switchyard.api.models import Backend, ModelEndpointSpec, parse_duration
from switchyard.providers import Exchange, Placement, Provider, provider


@dataclass(frozen=True)
class BackendRoute:
    """One backend as the data plane should see it."""

    name: str
    provider: str
    upstream_model: str
    url: str
    api_version: str | None
    # Key in the gateway's credentials Secret that holds this backend's API key (or the
    # access token minted from its service-account key).
    credentials_key: str | None
    weight: int
    priority: int
    effective_weight: int
    share: float
    # Why the backend carries no weight although its spec gives it some.
    unavailable_reason: str | None
    project: str | None = None
    region: str | None = None
    authentication: str = "APIKey"
    # How it authenticates as the gateway's workload identity, having no Secret.
    workload_identity: Exchange | None = None

    @property
    def terms(self) -> Provider:
        return provider(self.provider, self.upstream_model, self.authentication)

    @property
    def placement(self) -> Placement:
        return Placement(
            urlsplit(self.url).path.rstrip("/"),
            self.upstream_model,
            self.api_version,
            self.project,
            self.region,
        )


@dataclass(frozen=True)
class EndpointPlan:
    """Where the traffic of one public model name goes."""

    namespace: str
    name: str
    model: str
    backends: tuple[BackendRoute, ...]
    retry_attempts: int
    per_try_timeout_seconds: float
    retry_on: tuple[str, ...]

    @property
    def routable(self) -> bool:
        return any(b.effective_weight > 0 for b in self.backends)

    @property
    def split(self) -> str:
        return format_split(self.backends)


# A Secret's data keys are at most 253 characters.
MAX_SECRET_KEY = 253


def credentials_key(namespace: str, secret: str, key: str, exchange: str | None = None) -> str:
    """The gateway Secret key that holds one referenced Secret key (or the token it is
    exchanged for): copied once, however many backends use it. `_` is in no namespace or
    Secret name, so keys never clash; one that would pass the length limit of a Secret key
    is named by its hash instead."""
    name = f"{namespace}_{secret}_{key}" + (f"_{exchange}" if exchange else "")
    if len(name) <= MAX_SECRET_KEY:
        return name
    return "sha256_" + hashlib.sha256(name.encode()).hexdigest()


def workload_identity_key(exchange: Exchange) -> str:
    """The gateway Secret key that holds what the gateway's own workload identity gets from
    `exchange`, which every backend that uses it shares. No namespace starts with `_`, so it
    never clashes with a copied key."""
    return f"_{exchange}"


def zero_weight_tiers(spec: ModelEndpointSpec) -> list[int]:
    """Priorities whose backends all have weight 0: such a tier could never carry traffic."""
    weights: dict[int, int] = {}
    for backend in spec.backends:
        weights[backend.priority] = weights.get(backend.priority, 0) + backend.weight
    return sorted(priority for priority, total in weights.items() if total == 0)


def plan_endpoint(
    namespace: str,
    name: str,
    spec: ModelEndpointSpec,
    unavailable: Mapping[str, str] | None = None,
) -> EndpointPlan:
    """Compute effective weights and shares.

    `unavailable` maps backend names to the reason they must carry no traffic (unresolved
    credentials, failed probes). The lowest priority tier with any effective weight carries
    all the traffic, split by weight; every other tier stands by with share 0.
    """
    unavailable = unavailable or {}
    effective = {b.name: 0 if b.name in unavailable else b.weight for b in spec.backends}
    tier_totals: dict[int, int] = {}
    for backend in spec.backends:
        tier_totals[backend.priority] = (
            tier_totals.get(backend.priority, 0) + effective[backend.name]
        )
    active_tier = min((p for p, total in tier_totals.items() if total > 0), default=None)

    def share(backend: Backend) -> float:
        if backend.priority != active_tier:
            return 0.0
        return effective[backend.name] / tier_totals[backend.priority]

    ordered = sorted(spec.backends, key=lambda b: b.priority)  # stable: spec order within a tier

    def workload_identity(b: Backend) -> Exchange | None:
        return provider(b.provider, b.model, b.authentication).workload_identity

    routes = tuple(
        BackendRoute(
            name=b.name,
            provider=str(b.provider),
            upstream_model=b.model,
            url=b.base_url,
            api_version=b.api_version,
            credentials_key=(
                credentials_key(
                    namespace,
                    b.credentials_ref.name,
                    b.credentials_ref.key,
                    provider(b.provider, b.model, b.authentication).exchange,
                )
                if b.credentials_ref is not None
                else workload_identity_key(exchange)
                if b.workload_identity and (exchange := workload_identity(b))
                else None
            ),
            weight=b.weight,
            priority=b.priority,
            effective_weight=effective[b.name],
            share=share(b),
            unavailable_reason=unavailable.get(b.name),
            project=b.project,
            region=b.region,
            authentication=str(b.authentication),
            workload_identity=workload_identity(b) if b.workload_identity else None,
        )
        for b in ordered
    )
    return EndpointPlan(
        namespace=namespace,
        name=name,
        model=spec.model,
        backends=routes,
        retry_attempts=spec.retry.attempts,
        per_try_timeout_seconds=parse_duration(spec.retry.per_try_timeout),
        retry_on=tuple(str(r) for r in spec.retry.retry_on),
    )


def format_split(backends: tuple[BackendRoute, ...]) -> str:
    """`azure-eastus=70% claude=30%`: the backends that carry traffic now."""
    parts = []
    for backend in backends:
        if backend.share <= 0:
            continue
        percent = backend.share * 100
        text = f"{percent:.0f}" if abs(percent - round(percent)) < 0.05 else f"{percent:.1f}"
        parts.append(f"{backend.name}={text}%")
    return " ".join(parts)


_PlanKey = tuple[int, str, str, tuple[tuple[str, str], ...]]


@dataclass
class PlanCache:
    """Endpoint plans of one gateway's previous pass, kept by the caller: an endpoint whose
    spec object and unavailable backends are the same gets the same plan without
    recomputing it, so a change to one endpoint of thousands plans that one only."""

    entries: dict[_PlanKey, tuple[ModelEndpointSpec, EndpointPlan]] = field(default_factory=dict)
    used: dict[_PlanKey, tuple[ModelEndpointSpec, EndpointPlan]] = field(default_factory=dict)

    def plan(
        self, namespace: str, name: str, spec: ModelEndpointSpec, unavailable: Mapping[str, str]
    ) -> EndpointPlan:
        key = (id(spec), namespace, name, tuple(sorted(unavailable.items())))
        found = self.used.get(key) or self.entries.get(key)
        if found is None or found[0] is not spec:  # the spec object keeps its id its own
            found = (spec, plan_endpoint(namespace, name, spec, unavailable))
        self.used[key] = found
        return found[1]

    def rotate(self) -> None:
        """Keep only what the latest pass used."""
        self.entries, self.used = self.used, {}
