"""One pass per ModelGateway: read the store, plan, render, apply what changed, write status.

Watch events only mark gateways dirty; a single worker drains the marks after a short
debounce, so a burst of N endpoint changes costs one pass per gateway, not N.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from switchyard import metrics
from switchyard.api.models import BackendTLS, DataPlaneType, ModelGatewaySpec, parse_duration
from switchyard.counts import CountsUnavailable, RedisCounts
from switchyard.handlers import accounting, identity
from switchyard.handlers.control_channel import ControlChannel
from switchyard.handlers.health_monitor import BackendKey, Credentials, HealthMonitor
from switchyard.handlers.state import ClientRecord, EndpointRecord, GatewayRecord, Store
from switchyard.health.probes import Target
from switchyard.kube.client import (
    ApiError,
    Kube,
    OwnershipConflict,
    describe_error,
    is_forbidden,
)
from switchyard.kube.secrets import SecretCache
from switchyard.plan.clients import (
    ClientsPlan,
    KeyDigests,
    TokenIssuer,
    granted_limits,
    key_digest,
    plan_clients,
)
from switchyard.plan.conditions import DesiredCondition, transitions
from switchyard.plan.egress import ANY_CLUSTER, NOT_ALLOWED, ApiServer
from switchyard.plan.gateway import GatewayPlan, ObjectKey, SecretKeys, key_material, plan_gateway
from switchyard.plan.routing import EndpointPlan, PlanCache
from switchyard.render import deployment, envoy, rate_limits
from switchyard.render.objects import (
    XdsPeer,
    credentials_secret,
    gateway_network_policy,
    plan_configmap,
)
from switchyard.render.rate_limits import RateLimitService
from switchyard.render.status import (
    client_status,
    endpoint_status,
    gateway_conditions,
    gateway_status,
    programmed_condition,
    status_differs,
)
from switchyard.tokens import MintingFailed, TokenMinter, is_workload_identity
from switchyard.xds.server import (
    Answer,
    FailedAttempt,
    LimitHit,
    XdsServer,
    gateway_of_node,
    node_of_gateway,
)

logger = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.05
# Gateways whose passes run at once: enough that a slow one (a large gateway, a slow API
# answer) delays no other, few enough to keep the API server's load and memory bounded.
CONCURRENT_PASSES = 4
# How often the limited clients' status shows their use anew.
CLIENT_USE_SECONDS = 15.0
MAX_BACKOFF_SECONDS = 30.0
# How long Envoys may take to ACK a push, or to reconnect after the operator starts, before
# a gateway that showed Programmed=True is reported otherwise.
PENDING_GRACE_SECONDS = 60.0
RECONNECT_GRACE_SECONDS = 60.0


def _now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def _export_limits(
    gateway: ObjectKey, clients: ClientsPlan, exported: dict[tuple[str, str], int]
) -> dict[tuple[str, str], int]:
    """Set the gateway's client limit gauges to `clients`' limits, removing those gone;
    returns what is exported now."""
    label = f"{gateway[0]}/{gateway[1]}"
    now = granted_limits(clients)
    for client, kind in exported.keys() - now.keys():
        metrics.CLIENT_LIMIT.remove(label, client, kind)
    for (client, kind), per_minute in now.items():
        if exported.get((client, kind)) != per_minute:
            metrics.CLIENT_LIMIT.labels(label, client, kind).set(per_minute)
    return now


def _export_routing(
    plan: GatewayPlan, exported: dict[ObjectKey, EndpointPlan]
) -> dict[ObjectKey, EndpointPlan]:
    """Set the routing gauges of the endpoints whose plan changed since `exported`; returns
    what is exported now."""
    gateway = f"{plan.namespace}/{plan.name}"
    now: dict[ObjectKey, EndpointPlan] = {}
    for endpoint in plan.attached:
        key = (endpoint.namespace, endpoint.name)
        now[key] = endpoint
        if exported.get(key) == endpoint:
            continue
        for backend in endpoint.backends:
            labels = (endpoint.namespace, endpoint.name, backend.name, backend.provider, gateway)
            values = metrics.BACKENDS.of(labels)
            values.effective_weight = backend.effective_weight
            values.traffic_share = backend.share
    return now


# One version of one endpoint object: its key, uid and generation.
_Identity = tuple[ObjectKey, str | None, int]


def _probe_targets(
    plan: GatewayPlan,
    records: list[EndpointRecord],
    memo: dict[_Identity, dict[BackendKey, Any]],
    backend_tls: BackendTLS | None,
    account: ObjectKey | None,
) -> tuple[dict[BackendKey, Any], dict[BackendKey, dict[str, Any]]]:
    """Every backend the gateway serves, as the health monitor probes it, and what each
    endpoint's status shows of it now (to resume from after a restart).

    `memo` keeps each endpoint's targets by (key, uid, generation) from one pass to the next,
    for the gateway's current backendTLS and workload identity (`account`, its data-plane
    ServiceAccount); it is left holding only this pass's endpoints."""
    by_key = {r.source.key: r for r in records}
    targets: dict[BackendKey, Any] = {}
    shown: dict[BackendKey, dict[str, Any]] = {}
    used: dict[_Identity, dict[BackendKey, Any]] = {}
    for endpoint in plan.attached:
        record = by_key[(endpoint.namespace, endpoint.name)]
        spec = record.source.spec
        assert spec is not None
        # The uid too: an endpoint deleted and made again under its name starts again at
        # generation 1, and must not be probed as its predecessor was.
        identity = (record.source.key, record.body["metadata"].get("uid"), record.source.generation)
        found = memo.get(identity)
        if found is None:
            found = _endpoint_targets(endpoint, spec, backend_tls, account)
        used[identity] = found
        targets.update(found)
        for entry in (record.body.get("status") or {}).get("backends") or []:
            shown[(endpoint.namespace, endpoint.name, entry.get("name", ""))] = entry
    memo.clear()
    memo.update(used)
    return targets, shown


def _endpoint_targets(
    endpoint: EndpointPlan, spec: Any, backend_tls: BackendTLS | None, account: ObjectKey | None
) -> dict[BackendKey, Any]:
    refs = {b.name: b.credentials_ref for b in spec.backends}
    timeout = parse_duration(spec.health_check.timeout)
    targets: dict[BackendKey, Any] = {}
    for backend in endpoint.backends:
        if backend.unavailable_reason == NOT_ALLOWED:
            continue  # a host the gateway may not reach, the operator does not reach either
        key = (endpoint.namespace, endpoint.name, backend.name)
        ref = refs[backend.name]
        credentials = None
        if ref:
            secret = (endpoint.namespace, ref.name)
            credentials = Credentials(secret, ref.key, backend.terms.exchange)
        elif backend.workload_identity is not None and account is not None:
            credentials = Credentials(account, "", backend.workload_identity)
        host = urlsplit(backend.url).hostname or ""
        trusted = backend_tls.ca_bundle if backend_tls and backend_tls.covers(host) else None
        target = Target(
            backend.provider, backend.url, backend.upstream_model, backend.api_version,
            timeout, trusted, backend.project, backend.region, backend.authentication,
        )  # fmt: skip
        targets[key] = (target, credentials, spec.health_check)
    return targets


@dataclass
class _Seen:
    """What one gateway's previous pass produced, to skip unchanged work in the next."""

    plans: PlanCache = field(default_factory=PlanCache)
    render: envoy.RenderCache = field(default_factory=envoy.RenderCache)
    # (endpoint, uid, generation) -> its probe targets, for the backendTLS they were made with
    probes: dict[_Identity, dict[BackendKey, Any]] = field(default_factory=dict)
    # What the probes' targets were made for: the backendTLS and the workload identity.
    probes_for: tuple[BackendTLS | None, str | None] = (None, None)
    exported: dict[ObjectKey, EndpointPlan] = field(default_factory=dict)
    # The client limit gauges set for this gateway: (client, limit) -> per minute.
    limits: dict[tuple[str, str], int] = field(default_factory=dict)
    targets: Any = None
    # Endpoint key -> (the inputs of its status, the status object they were checked against)
    statuses: dict[ObjectKey, tuple[Any, Any]] = field(default_factory=dict)
    pushed_at: float = float("-inf")
    # Model -> the endpoint that serves it on the gateway, as last pushed
    served: dict[str, ObjectKey] = field(default_factory=dict)


@dataclass(frozen=True)
class _Owned:
    manifest: dict[str, Any]
    resource_version: str


# The Helm chart's value that lists the namespaces where the operator may write.
GATEWAY_NAMESPACES_VALUE = "gatewayNamespaces"


def _refused(namespace: str, problems: list[tuple[str, str]]) -> DesiredCondition:
    """The Ready condition of a gateway whose objects were not all applied. A refusal for
    want of permission comes first, naming the namespace and the chart value that grants
    it: the usual cause is a gateway in a namespace the operator was not given."""
    forbidden = [message for reason, message in problems if reason == "Forbidden"]
    others = [message for reason, message in problems if reason != "Forbidden"]
    if not forbidden:
        return DesiredCondition.false("Ready", problems[0][0], "; ".join(others))
    more = f" (and {len(forbidden) - 1} more refused)" if len(forbidden) > 1 else ""
    message = (
        f"the operator is not permitted to write the gateway's objects in namespace "
        f"{namespace}: {forbidden[0]}{more}; list {namespace} in the Helm chart's "
        f"{GATEWAY_NAMESPACES_VALUE} value (helm upgrade) so that it may"
    )
    return DesiredCondition.false("Ready", "Forbidden", "; ".join([message, *others]))


class ApplyFailed(Exception):
    """A pass that wrote its status but could not apply every object: retry it later."""


def _fmt(key: ObjectKey) -> str:
    return f"{key[0]}/{key[1]}"


class GatewaySync:
    def __init__(
        self,
        store: Store,
        kube: Kube,
        secrets: SecretCache,
        xds: XdsServer,
        envoy_pods: deployment.EnvoyPods,
        health: HealthMonitor,
        api_server: ApiServer = ANY_CLUSTER,
        control: ControlChannel | None = None,
        tokens: TokenMinter | None = None,
    ) -> None:
        self.store = store
        self.kube = kube
        self.secrets = secrets
        self.xds = xds
        # Where the gateways' Pods reach this operator's xDS server (its Service), and their image.
        self.envoy_pods = envoy_pods
        self.health = health
        self.api_server = api_server
        # The cluster's ServiceAccount token issuer, which verifies clients' tokens.
        self.issuer: TokenIssuer | None = None
        # Issues each Envoy gateway's control-channel certificate (its Secret).
        self.control = control
        # Access tokens minted from the service-account keys the endpoints reference.
        self.tokens = tokens or TokenMinter()
        self._token_refresh: dict[ObjectKey, asyncio.TimerHandle] = {}
        self._dirty: set[ObjectKey] = set()
        self._passing: set[ObjectKey] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._failures: dict[ObjectKey, int] = {}
        self._seen: dict[ObjectKey, _Seen] = {}
        # Owned objects as last applied or verified, by (kind, namespace, name): applied
        # again only when the desired manifest changes or a watch event shows the object
        # moved (edited or deleted by someone else), so a pass reads none of them otherwise.
        self._owned: dict[tuple[str, str, str], _Owned] = {}
        self._started = time.monotonic()
        # Whether this replica may write to the API server (with leader election: whether it
        # leads). A standby plans, probes and keeps the xDS snapshots all the same.
        self.may_write: Callable[[], bool] = lambda: True
        # With `--gateway-network-policy`: where the gateways' Envoys reach xDS, for the
        # NetworkPolicy each gateway's Pods get. None: the operator renders none.
        self.network_policy: XdsPeer | None = None
        self.rate_limits: RateLimitService | None = None
        # Where the limited clients' use is read from, for their status.
        self.counts: RedisCounts | None = None
        self._counts_failing = False

    def elected(self) -> None:
        """This replica now writes: check everything, since the previous leader may have
        left any write undone. Its Envoys are reconnecting here: the same grace as after a
        restart before they count as gone."""
        self._started = time.monotonic()
        self.forget_owned()
        for seen in self._seen.values():
            seen.statuses.clear()
        self.health.resume(
            {
                (*record.source.key, entry.get("name", "")): entry
                for record in self.store.endpoints.values()
                for entry in (record.body.get("status") or {}).get("backends") or []
            }
        )
        self.mark(self.store.gateway_keys())

    def set_issuer(self, issuer: TokenIssuer | None) -> None:
        """The issuer's keys as last read; a change reaches every gateway's Envoys."""
        if issuer != self.issuer:
            self.issuer = issuer
            self.mark(self.store.gateway_keys())

    def forget_owned(self) -> None:
        """Verify every owned object on the next pass instead of trusting what was last
        written: after a watch gap, an edit or a deletion may have gone unseen."""
        self._owned.clear()

    def observed_owned(self, kind: str, namespace: str, name: str, version: str | None) -> None:
        """A watch event of an owned object: forget it unless it is what we wrote last."""
        key = (kind, namespace, name)
        known = self._owned.get(key)
        if known is not None and known.resource_version != version:
            del self._owned[key]

    def mark(self, keys: set[ObjectKey]) -> None:
        if keys:
            self._dirty |= keys
            self._wake.set()

    async def run(self) -> None:
        """Drain dirty gateways forever. Gateways pass side by side (up to
        CONCURRENT_PASSES), each at most once at a time: one slow or failing gateway never
        holds up the others. A gateway marked again during its pass passes again after."""
        slots = asyncio.Semaphore(CONCURRENT_PASSES)
        while True:
            await self._wake.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._wake.clear()
            ready = self._dirty - self._passing
            self._dirty -= ready
            for key in sorted(ready):
                self._passing.add(key)
                task = asyncio.create_task(self._pass(key, slots), name=f"pass-{_fmt(key)}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _pass(self, key: ObjectKey, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                await self._sync_guarded(key)
        finally:
            self._passing.discard(key)
            if key in self._dirty:
                self._wake.set()

    async def _sync_guarded(self, key: ObjectKey) -> None:
        started = time.monotonic()
        metrics.RECONCILE_ERRORS.labels(*key)  # exists from 0, for rate() and alerts
        try:
            await self.sync(key)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            failures = self._failures.get(key, 0) + 1
            self._failures[key] = failures
            delay = min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (failures - 1))
            metrics.RECONCILE_ERRORS.labels(*key).inc()
            logger.error(
                "pass over ModelGateway %s failed (%s); retrying in %.1fs",
                _fmt(key),
                describe_error(error),
                delay,
            )
            asyncio.get_running_loop().call_later(delay, self.mark, {key})
        else:
            self._failures.pop(key, None)
        finally:
            metrics.RECONCILE_DURATION.labels(*key).observe(time.monotonic() - started)

    def failed_attempt(self, report: FailedAttempt) -> None:
        """An Envoy saw a backend fail live traffic. A 429 holds the backend back for its
        Retry-After; anything else makes its probe run now, and the probes decide."""
        seen = self._seen.get(gateway_of_node(report.node))
        # Reports come by the hundred a second during an outage, exactly when passes matter:
        # a look-up, not a scan of the gateway's endpoints.
        endpoint = seen.served.get(envoy.model_of_cluster(report.cluster)) if seen else None
        if endpoint is None:
            return
        backend = (*endpoint, report.backend)
        if report.status == 429:
            self.health.back_off(backend, report.retry_after)
        else:
            self.health.expedite(backend)

    def answered(self, answer: Answer) -> None:
        """An Envoy answered a request from a backend: count its tokens, latency and cost."""
        gateway = gateway_of_node(answer.node)
        seen = self._seen.get(gateway)
        model = envoy.model_of_cluster(answer.cluster)
        endpoint = seen.served.get(model) if seen else None
        record = self.store.endpoints.get(endpoint) if endpoint else None
        if endpoint is None or record is None:
            return
        backend = next((b for b in record.backends() if b.name == answer.backend), None)
        if backend is None:
            return
        labels = (*endpoint, backend.name, str(backend.provider), f"{gateway[0]}/{gateway[1]}")
        values = metrics.ANSWERS.of(
            labels,
            answer.client,
            model,
            answer.response_model,
            accounting.error_type(answer.status),
        )
        accounting.account(values, answer, backend.pricing)

    def limit_hit(self, hit: LimitHit) -> None:
        """An Envoy refused a client at its limit."""
        gateway = gateway_of_node(hit.node)
        metrics.CLIENT_LIMITED.labels(f"{gateway[0]}/{gateway[1]}", hit.client, hit.limit).inc()

    async def sync(self, key: ObjectKey) -> None:
        gateway_record = self.store.gateways.get(key)
        records = self.store.endpoints_of(key)
        # One read of each Secret per pass: the plan and the credentials Secret it copies
        # keys into see the same data, even if the Secret changes meanwhile.
        secret_data: dict[ObjectKey, dict[str, str] | None] = {}
        for record in records:
            for secret in record.secrets:
                if secret not in secret_data:
                    secret_data[secret] = await self.secrets.get(secret)
        secret_keys = {
            secret: None if data is None else SecretKeys.from_data(data)
            for secret, data in secret_data.items()
        }
        gateway = gateway_record.source if gateway_record else None
        seen = self._seen.setdefault(key, _Seen())
        held_back = self.health.held_back(key)

        def planned() -> GatewayPlan:
            return plan_gateway(
                key,
                gateway,
                [r.source for r in records],
                self.store.namespace_labels,
                secret_keys,
                held_back,
                seen.plans,
                self.api_server,
            )

        plan = planned()
        if gateway is None:
            self.health.forget(key)
            self._seen.pop(key, None)
        else:
            account_name = gateway.spec.data_plane.service_account_name
            if seen.probes_for != (gateway.spec.backend_tls, account_name):
                seen.probes.clear()  # every https target's trust may have changed, or whose
                seen.probes_for = (gateway.spec.backend_tls, account_name)  # identity they use
            account = (key[0], account_name) if account_name else None
            targets = _probe_targets(plan, records, seen.probes, gateway.spec.backend_tls, account)
            if targets[0] != seen.targets:
                self.health.watch(key, *targets)
                seen.targets = targets[0]
                # Backends probed for the first time resume from what status showed (after a
                # restart: unhealthy, refused, rate limited): plan with that, or this pass
                # would route to them and rewrite status, and the next would undo it.
                if (restored := self.health.held_back(key)) != held_back:
                    held_back = restored
                    plan = planned()
            seen.exported = _export_routing(plan, seen.exported)
            seen.served = {p.model: (p.namespace, p.name) for p in plan.attached}
        client_records = self.store.clients_of(key)
        clients = plan_clients(
            key,
            gateway,
            [r.source for r in client_records],
            plan,
            self.store.namespace_labels,
            await self._key_digests(client_records),
            limits_enforced=self.rate_limits is not None,
        )
        seen.limits = _export_limits(key, clients, seen.limits)
        node = node_of_gateway(*key)
        if gateway is None:
            self.xds.remove_snapshot(node)
        elif gateway.spec.data_plane.type == DataPlaneType.ENVOY:
            rendered = envoy.render(
                plan, gateway.spec.listener.port, gateway.spec.backend_tls, seen.render,
                clients, self.issuer, self.rate_limits,
            )  # fmt: skip
            if self.xds.set_snapshot(node, rendered):
                seen.pushed_at = time.monotonic()
        # Endpoint statuses first: they are what users wait for after an apply; the
        # gateway's own objects and status follow in the same pass.
        statuses: dict[ObjectKey, tuple[Any, Any]] = {}
        unwritten = 0  # statuses the API server refused: the pass goes on, and is retried
        for record in records:
            outcome = plan.outcomes[record.source.key]
            health = {
                b.name: self.health.shown((*record.source.key, b.name))
                for b in (record.source.spec.backends if record.source.spec else [])
            }
            current = record.body.get("status") or {}
            # Same outcome, health and generation against the same status as last pass:
            # nothing to write, and nothing worth building a status for.
            inputs = (
                outcome.conditions,
                outcome.plan,
                record.source.generation,
                tuple((name, tuple(sorted(h.items()))) for name, h in health.items()),
            )
            before = seen.statuses.get(record.source.key)
            if before is not None and before[0] == inputs and before[1] is current:
                statuses[record.source.key] = before
                continue
            status = endpoint_status(outcome, current, record.source.generation, _now(), health)
            if await self._write_status("modelendpoints", record.body, status, outcome.conditions):
                statuses[record.source.key] = (inputs, record.body.get("status") or {})
            else:
                unwritten += 1
        use = await self._client_use(clients)
        for client in client_records:
            current = client.body.get("status") or {}
            # Unreadable counts: status keeps what it showed.
            shown = use.get(client.source.identity, current.get("currentMinute"))
            limited = client.source.spec is not None and client.source.spec.limits is not None
            written = await self._write_status(
                "modelclients",
                client.body,
                client_status(
                    clients.outcomes[client.source.key],
                    current,
                    client.source.generation,
                    _now(),
                    shown if limited else None,
                ),
                clients.outcomes[client.source.key].conditions,
            )
            unwritten += not written
        seen.statuses = statuses
        applied = gateway_record is None or await self._apply_gateway(
            gateway_record, plan, seen, clients, secret_data
        )
        applied = applied and not unwritten
        self.secrets.forget_unreferenced(self.store.referenced_secrets())
        if not applied:
            # Reported on the gateway already; the pass is retried with backoff.
            raise ApplyFailed(f"the objects of ModelGateway {_fmt(key)} were not all applied")

    async def _client_use(self, clients: ClientsPlan) -> dict[str, dict[str, Any]]:
        """Each limited client's use of the current minute, as the rate limit service has
        counted it for every Envoy (identity -> `currentMinute`); empty when the counts
        cannot be read, said once until they can again."""
        start = int(time.time()) // 60 * 60
        wanted = list(granted_limits(clients))
        if self.counts is None or not wanted:
            return {}
        keys = [rate_limits.count_key(client, kind, start) for client, kind in wanted]
        try:
            counts = await self.counts.read(keys)
        except CountsUnavailable as error:
            if not self._counts_failing:
                logger.warning("cannot read the clients' use for their status: %s", error)
            self._counts_failing = True
            return {}
        self._counts_failing = False
        began = datetime.datetime.fromtimestamp(start, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        use: dict[str, dict[str, Any]] = {}
        for (client, kind), count in zip(wanted, counts, strict=True):
            use.setdefault(client, {"start": began})[kind] = count or 0
        return use

    async def refresh_client_use_forever(self, seconds: float = CLIENT_USE_SECONDS) -> None:
        """Pass, every `seconds`, the gateways that have limited clients: their status shows
        the minute's use as it grows (a pass that finds nothing changed writes nothing)."""
        while True:
            await asyncio.sleep(seconds)
            if self.counts is not None:
                self.mark(self.store.gateways_with_limited_clients())

    async def _key_digests(self, records: list[ClientRecord]) -> KeyDigests:
        """The digest of each client's API key, from its Secret: the key itself goes no
        further than this."""
        digests: dict[ObjectKey, dict[str, str] | None] = {}
        for record in records:
            spec = record.source.spec
            if record.secret is None or spec is None or spec.api_key_ref is None:
                continue
            data = await self.secrets.get(record.secret)
            if data is None:
                digests[record.secret] = None
                continue
            found = digests.setdefault(record.secret, {})
            value = base64.b64decode(data.get(spec.api_key_ref.key) or "")
            if found is not None and value.strip():
                found[spec.api_key_ref.key] = key_digest(value)
        return digests

    async def _apply_gateway(
        self,
        record: GatewayRecord,
        plan: GatewayPlan,
        seen: _Seen,
        clients: ClientsPlan,
        secret_data: Mapping[ObjectKey, Mapping[str, str] | None],
    ) -> bool:
        """Apply the gateway's objects and write its status; False if the API refused."""
        body = record.body
        applied = True
        if record.source is None:
            invalid = f"spec is invalid: {record.error}"
            conditions: tuple[DesiredCondition, ...] = tuple(
                DesiredCondition.false(kind, "InvalidSpec", invalid)
                for kind in ("Accepted", "Programmed", "Ready")
            )
        else:
            envoys = self.xds.status(node_of_gateway(plan.namespace, plan.name))
            programmed = programmed_condition(record.source.spec.data_plane.type, envoys)
            programmed = self._settling(plan, programmed, body.get("status") or {}, seen)
            accepted, programmed, ready = gateway_conditions(plan, programmed, clients)
            problems = await self._apply_objects(
                record.source.spec, body["metadata"]["uid"], plan, secret_data
            )
            if problems:
                # Refused by the API server (too large, quota, admission, RBAC) or held by
                # someone else: say so on the gateway; the other objects were applied.
                ready = _refused(plan.namespace, problems)
                applied = False
            conditions = (accepted, programmed, ready)
        generation = int(body["metadata"].get("generation", 0))
        status = gateway_status(plan, body.get("status") or {}, generation, _now(), conditions)
        return await self._write_status("modelgateways", body, status, conditions) and applied

    def _settling(
        self,
        plan: GatewayPlan,
        programmed: DesiredCondition,
        current: dict[str, Any],
        seen: _Seen,
    ) -> DesiredCondition:
        """Keep a gateway's Programmed=True while its Envoys are simply catching up: for a
        moment after each push (the ACK is on its way, and brings its own pass), and after
        the operator starts (the Envoys kept serving and are reconnecting). Otherwise every
        change would flip the gateway to Pending and back, with a Warning Event each time,
        and every restart would write. If the moment passes, the next pass tells the truth."""
        now = time.monotonic()
        if programmed.reason == "Pending":
            until = seen.pushed_at + PENDING_GRACE_SECONDS
        elif programmed.reason == "NoDataPlane":
            until = self._started + RECONNECT_GRACE_SECONDS
        else:
            return programmed
        shown: dict[str, Any] = next(
            (c for c in current.get("conditions") or [] if c.get("type") == "Programmed"), {}
        )
        if shown.get("status") != "True" or now >= until:
            return programmed
        key = (plan.namespace, plan.name)
        asyncio.get_running_loop().call_later(until - now + 0.1, self.mark, {key})
        return DesiredCondition.true("Programmed", shown["reason"], shown.get("message", ""))

    async def _apply_objects(
        self,
        spec: ModelGatewaySpec,
        uid: str,
        plan: GatewayPlan,
        secret_data: Mapping[ObjectKey, Mapping[str, str] | None],
    ) -> list[tuple[str, str]]:
        """Apply each owned object on its own, so one the API server refuses (a Secret over
        1 MiB, say) does not hold back the others. Returns (reason, message) for each one
        that was not applied."""
        if not self.may_write():
            return []
        credentials = credentials_secret(
            plan,
            uid,
            {c.source: secret_data.get(c.source) or {} for c in plan.credentials},
            await self._minted(plan, secret_data),
        )
        manifests = [plan_configmap(plan, uid), credentials]
        if spec.data_plane.type == DataPlaneType.ENVOY:
            bootstrap = deployment.bootstrap_configmap(plan, uid, self.envoy_pods)
            manifests += [
                bootstrap,
                deployment.envoy_deployment(plan, spec, uid, bootstrap, self.envoy_pods),
                deployment.envoy_service(plan, spec, uid),
                deployment.envoy_pdb(plan, spec, uid),
            ]
            if self.control is not None:
                tls = await self.control.gateway_secret_data((plan.namespace, plan.name))
                if tls is not None:
                    manifests.append(deployment.xds_tls_secret(plan, uid, tls))
            if self.network_policy is not None:
                manifests.append(
                    gateway_network_policy(
                        plan,
                        spec,
                        uid,
                        deployment.selector(plan.name),
                        self.network_policy,
                        self.rate_limits,
                    )
                )
        problems: list[tuple[str, str]] = []
        for manifest in manifests:
            metadata = manifest["metadata"]
            key = (manifest["kind"], metadata["namespace"], metadata["name"])
            known = self._owned.pop(key, None)
            if known is not None and known.manifest == manifest:
                self._owned[key] = known
                continue
            try:
                applied = await self.kube.apply_owned(
                    manifest, known.resource_version if known is not None else None
                )
            except OwnershipConflict as conflict:
                problems.append(("OwnershipConflict", str(conflict)))
                continue
            except ApiError as error:
                reason = "Forbidden" if is_forbidden(error) else "ApplyFailed"
                problems.append((reason, f"{key[0]} {key[2]}: {describe_error(error)}"))
                logger.warning("could not apply %s %s/%s: %s", *key, describe_error(error))
                continue
            self._owned[key] = _Owned(manifest, applied.resource_version)
            if applied.wrote:
                metrics.API_WRITES.labels(manifest["kind"]).inc()
                if manifest is credentials and spec.data_plane.type == DataPlaneType.ENVOY:
                    await self._refresh_mounted_credentials(plan, applied.resource_version)
                elif key[2] == deployment.xds_tls_secret_name(plan.name) and key[0] == "Secret":
                    await self._refresh_mounted_credentials(
                        plan, applied.resource_version, deployment.XDS_TLS_VERSION_ANNOTATION
                    )
        return problems

    async def _refresh_mounted_credentials(
        self,
        plan: GatewayPlan,
        version: str,
        annotation: str = deployment.CREDENTIALS_VERSION_ANNOTATION,
    ) -> None:
        """Have the kubelet bring the gateway's Pods the Secret just written now, rather
        than at its next periodic sync (60 to 90 s): a rotated or newly referenced key is
        then read by Envoy within seconds."""
        try:
            patched = await self.kube.annotate_pods(
                plan.namespace,
                deployment.selector(plan.name),
                {annotation: version},
            )
        except ApiError as error:
            # Only a speed-up: the kubelet's periodic sync brings the Secret all the same.
            logger.warning(
                "could not ask the kubelet to refresh %s/%s's credentials early: %s",
                plan.namespace, plan.name, describe_error(error),
            )  # fmt: skip
            return
        metrics.API_WRITES.labels("pods").inc(patched)

    async def _minted(
        self, plan: GatewayPlan, secret_data: Mapping[ObjectKey, Mapping[str, str] | None]
    ) -> dict[str, str]:
        """The access token (base64) of each credential that is exchanged, by its key in the
        credentials Secret, minted when due. The gateway passes again when the first of
        them is due. A key that cannot be exchanged gets no token: its backend's probe
        reports why."""
        minted: dict[str, str] = {}
        due = float("inf")
        for copy in plan.credentials:
            try:
                if copy.exchange is not None and is_workload_identity(copy.exchange):
                    source = identity.identity_source(self.kube, copy.source, copy.exchange)
                    token = await self.tokens.token(
                        copy.exchange, identity.material(copy.source), source
                    )
                else:
                    value = (secret_data.get(copy.source) or {}).get(copy.source_key)
                    if copy.exchange is None or not value:
                        continue
                    material = base64.b64decode(key_material(value))
                    token = await self.tokens.token(copy.exchange, material)
            except MintingFailed:
                continue
            minted[copy.target_key] = base64.b64encode(token.token.encode()).decode()
            due = min(due, token.refresh_at)
        key = (plan.namespace, plan.name)
        if (previous := self._token_refresh.pop(key, None)) is not None:
            previous.cancel()
        if due != float("inf"):
            delay = max(due - time.time(), 0.0) + 0.1
            self._token_refresh[key] = asyncio.get_running_loop().call_later(
                delay, self.mark, {key}
            )
        return minted

    async def _write_status(
        self,
        plural: str,
        body: dict[str, Any],
        status: dict[str, Any],
        desired: tuple[DesiredCondition, ...],
    ) -> bool:
        """Write a status that differs, and post Events for its transitions. False when the
        API server refused it: logged, and the pass goes on with the other objects."""
        current = body.get("status") or {}
        if not status_differs(current, status) or not self.may_write():
            return True
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        try:
            # At the version this status was computed from: never over a newer one.
            updated = await self.kube.patch_status(
                plural, *key, status, body["metadata"].get("resourceVersion")
            )
        except ApiError as error:
            logger.warning(
                "could not write the status of %s %s/%s: %s", plural, *key, describe_error(error)
            )
            return False
        metrics.API_WRITES.labels(f"{plural}/status").inc()
        if updated is None:
            return True
        if plural == "modelendpoints":
            self.store.set_endpoint_status(key, updated)
        elif plural == "modelclients":
            self.store.set_client_status(key, updated)
        else:
            self.store.set_gateway_status(key, updated)
        for change in transitions(current.get("conditions") or [], desired):
            if not change.worth_an_event:
                continue
            condition = change.condition
            await self.kube.post_event(
                updated, change.event_type, condition.reason, condition.message
            )
            metrics.API_WRITES.labels("events").inc()
        return True
