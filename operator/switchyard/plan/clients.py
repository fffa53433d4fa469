"""Who may call a gateway: its ModelClients, how each proves who it is, and which models
each may call. Decided in one pass per gateway, with its endpoints' plan in view, since an
endpoint's allowedClients and a client's models meet here.

A client is known to the data plane by the SHA-256 digest of its API key and by the
subjects of its ServiceAccounts' tokens; the key itself never leaves its Secret.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from switchyard.api.models import ClientAuthMode, ModelClientSpec
from switchyard.plan.conditions import DesiredCondition
from switchyard.plan.gateway import GatewayPlan, GatewaySource, ObjectKey
from switchyard.plan.selectors import namespace_admitted

# Per Secret (namespace, name): each non-empty key's digest; None: the Secret does not exist.
KeyDigests = Mapping[ObjectKey, Mapping[str, str] | None]


def key_digest(key: bytes) -> str:
    """What the gateway compares a presented key with: hex SHA-256 of the key as sent, that
    is without the white space a Secret's value may carry around it."""
    return hashlib.sha256(key.strip()).hexdigest()


def service_account_subject(namespace: str, name: str) -> str:
    """The `sub` claim of a ServiceAccount's tokens."""
    return f"system:serviceaccount:{namespace}:{name}"


@dataclass(frozen=True)
class TokenIssuer:
    """The cluster's ServiceAccount token issuer: its `iss` and its public keys (JWKS)."""

    issuer: str
    jwks: str


@dataclass(frozen=True)
class ClientSource:
    """One ModelClient as read from the API server."""

    namespace: str
    name: str
    generation: int
    created: str  # RFC 3339 creationTimestamp; sorts chronologically as text
    spec: ModelClientSpec | None
    spec_error: str | None = None

    @property
    def key(self) -> ObjectKey:
        return (self.namespace, self.name)

    @property
    def identity(self) -> str:
        """How access records and metrics name the client."""
        return f"{self.namespace}/{self.name}"


# What a client's limits count, each per minute: requests, and the tokens of its answers.
LIMIT_KINDS = ("requests", "tokens")


@dataclass(frozen=True)
class ClientGrant:
    """What the data plane needs to know of one client."""

    identity: str
    key_digest: str | None
    subjects: tuple[str, ...]
    models: tuple[str, ...]
    # Its limits per minute, by kind (LIMIT_KINDS); none for a client without limits.
    limits: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ClientOutcome:
    conditions: tuple[DesiredCondition, ...]
    models: tuple[str, ...]


@dataclass
class ClientsPlan:
    """The gateway's client table. `required` False: the gateway checks no one."""

    required: bool
    grants: list[ClientGrant] = field(default_factory=list)
    outcomes: dict[ObjectKey, ClientOutcome] = field(default_factory=dict)


def plan_clients(
    gateway_key: ObjectKey,
    gateway: GatewaySource | None,
    clients: list[ClientSource],
    endpoints: GatewayPlan,
    namespace_labels: Mapping[str, Mapping[str, str]],
    digests: KeyDigests,
    limits_enforced: bool = False,
) -> ClientsPlan:
    """Decide each client's conditions and grant. Two clients must not share a credential
    (the gateway could not tell them apart): the older keeps it, like a contested model.
    A client with limits the data plane cannot hold (`limits_enforced` False: the operator
    has no rate limit service; or a gateway that checks no client) is not accepted: served
    without them, it would get more than it was given."""
    required = gateway is None or gateway.spec.client_auth.mode == ClientAuthMode.REQUIRED
    result = ClientsPlan(required=required)
    gateway_name = f"{gateway_key[0]}/{gateway_key[1]}"
    # Model -> its endpoint's namespace and allowedClients policy.
    admitting = {
        plan.model: (plan.namespace, outcome.spec.allowed_clients.namespaces)
        for plan in endpoints.attached
        if (outcome := endpoints.outcomes.get((plan.namespace, plan.name))) is not None
        and outcome.spec is not None
    }
    taken: dict[str, ClientSource] = {}  # digest or subject -> the client that has it
    for client in sorted(clients, key=lambda c: (c.created, c.namespace, c.name)):
        spec = client.spec
        if spec is None:
            accepted = DesiredCondition.false(
                "Accepted", "InvalidSpec", f"spec is invalid: {client.spec_error}"
            )
            result.outcomes[client.key] = ClientOutcome((accepted, _not_ready(accepted)), ())
            continue
        if gateway is None:
            accepted = DesiredCondition.false(
                "Accepted", "GatewayNotFound", f"ModelGateway {gateway_name} not found"
            )
            result.outcomes[client.key] = ClientOutcome((accepted, _not_ready(accepted)), ())
            continue
        if spec.limits is not None and not (limits_enforced and required):
            why = (
                "the operator runs without a rate limit service (switchyard run "
                "--rate-limit-service; the Helm chart's rateLimits.enabled)"
                if required
                else f"ModelGateway {gateway_name} checks no client (spec.clientAuth.mode: "
                "Disabled), so it cannot tell this client's requests apart"
            )
            accepted = DesiredCondition.false(
                "Accepted", "LimitsNotEnforced", f"spec.limits cannot be held: {why}"
            )
            result.outcomes[client.key] = ClientOutcome((accepted, _not_ready(accepted)), ())
            continue
        labels = namespace_labels.get(client.namespace)
        models = tuple(
            sorted(
                model
                for model, (home, policy) in admitting.items()
                if namespace_admitted(policy, home, client.namespace, labels)
                and (not spec.models or model in spec.models)
            )
        )
        digest, refs = _key_of(client, spec, digests)
        subjects = tuple(
            sorted(service_account_subject(client.namespace, sa) for sa in spec.service_accounts)
        )
        credentials = [c for c in (digest, *subjects) if c is not None]
        conflict = next(((c, taken[c]) for c in credentials if c in taken), None)
        if conflict is not None:
            credential, owner = conflict
            what = "API key" if credential == digest else "ServiceAccount " + credential
            accepted = DesiredCondition.false(
                "Accepted",
                "CredentialConflict",
                f"ModelClient {owner.identity}, which is older, already uses the same {what} "
                f"on ModelGateway {gateway_name}: each credential must name one client",
            )
            result.outcomes[client.key] = ClientOutcome((accepted, refs, _not_ready(accepted)), ())
            continue
        taken.update(dict.fromkeys(credentials, client))
        accepted = DesiredCondition.true(
            "Accepted", "Accepted", f"attached to ModelGateway {gateway_name}"
        )
        result.grants.append(ClientGrant(client.identity, digest, subjects, models, _limits(spec)))
        ready = _ready(client, spec, gateway_name, refs, digest, models, required)
        result.outcomes[client.key] = ClientOutcome((accepted, refs, ready), models)
    result.grants.sort(key=lambda g: g.identity)
    return result


def granted_limits(clients: ClientsPlan) -> dict[tuple[str, str], int]:
    """Every limit the plan grants: (client, kind) -> per minute."""
    return {(g.identity, kind): n for g in clients.grants for kind, n in g.limits}


def _limits(spec: ModelClientSpec) -> tuple[tuple[str, int], ...]:
    limits = spec.limits
    if limits is None:
        return ()
    per_minute = (limits.requests_per_minute, limits.tokens_per_minute)
    return tuple((kind, n) for kind, n in zip(LIMIT_KINDS, per_minute, strict=True) if n)


def _key_of(
    client: ClientSource, spec: ModelClientSpec, digests: KeyDigests
) -> tuple[str | None, DesiredCondition]:
    """The client's key digest, if its apiKeyRef resolves, and the ResolvedRefs condition."""
    ref = spec.api_key_ref
    if ref is None:
        return None, DesiredCondition.true(
            "ResolvedRefs", "ResolvedRefs", "no apiKeyRef: identified by ServiceAccount tokens"
        )
    secret = f"{client.namespace}/{ref.name}"
    keys = digests.get((client.namespace, ref.name))
    if keys is None:
        return None, DesiredCondition.false(
            "ResolvedRefs", "SecretNotFound", f"apiKeyRef: Secret {secret} not found"
        )
    digest = keys.get(ref.key)
    if digest is None:
        return None, DesiredCondition.false(
            "ResolvedRefs",
            "SecretKeyNotFound",
            f"apiKeyRef: Secret {secret} has no non-empty key {ref.key!r}",
        )
    return digest, DesiredCondition.true(
        "ResolvedRefs", "ResolvedRefs", f"apiKeyRef: Secret {secret} key {ref.key!r} resolved"
    )


def _ready(
    client: ClientSource,
    spec: ModelClientSpec,
    gateway_name: str,
    refs: DesiredCondition,
    digest: str | None,
    models: tuple[str, ...],
    required: bool,
) -> DesiredCondition:
    if not required:
        return DesiredCondition.true(
            "Ready",
            "ClientAuthDisabled",
            f"ModelGateway {gateway_name} checks no client (spec.clientAuth.mode: Disabled): "
            "anyone who reaches it is served",
        )
    if digest is None and not spec.service_accounts:
        return DesiredCondition.false("Ready", refs.reason, refs.message)
    if not models:
        narrowed = " among spec.models" if spec.models else ""
        return DesiredCondition.false(
            "Ready",
            "NoModelAllowed",
            f"no ModelEndpoint on ModelGateway {gateway_name}{narrowed} admits ModelClients "
            f"from namespace {client.namespace} (spec.allowedClients of the endpoints)",
        )
    listed = ", ".join(models[:10]) + (f" and {len(models) - 10} more" if len(models) > 10 else "")
    if refs.status == "False":
        return DesiredCondition.false(
            "Ready",
            "RefsNotResolved",
            f"identified by ServiceAccount tokens only, for {listed}: {refs.message}",
        )
    return DesiredCondition.true("Ready", "Ready", f"may call {listed}")


def _not_ready(cause: DesiredCondition) -> DesiredCondition:
    return DesiredCondition.false("Ready", cause.reason, cause.message)
