"""One pass per ModelGateway: read the store, plan, render, apply what changed, write status.

Watch events only mark gateways dirty; a single worker drains the marks after a short
debounce, so a burst of N endpoint changes costs one pass per gateway, not N.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

from switchyard import metrics
from switchyard.api.models import DataPlaneType, ModelGatewaySpec, parse_duration
from switchyard.handlers.health_monitor import BackendKey, HealthMonitor
from switchyard.handlers.state import EndpointRecord, GatewayRecord, Store
from switchyard.health.probes import Target
from switchyard.kube.client import ApiError, Kube, OwnershipConflict, describe_error
from switchyard.kube.secrets import SecretCache
from switchyard.plan.conditions import DesiredCondition, transitions
from switchyard.plan.gateway import GatewayPlan, ObjectKey, SecretKeys, plan_gateway
from switchyard.render import deployment, envoy
from switchyard.render.objects import credentials_secret, plan_configmap
from switchyard.render.status import (
    endpoint_status,
    gateway_conditions,
    gateway_status,
    programmed_condition,
    status_differs,
)
from switchyard.xds.server import FailedAttempt, XdsServer, gateway_of_node, node_of_gateway

logger = logging.getLogger(__name__)

DEBOUNCE_SECONDS = 0.05
MAX_BACKOFF_SECONDS = 30.0


def _now() -> str:
    return (
        datetime.datetime.now(datetime.UTC)
        .replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z")
    )


def _export_routing(plan: GatewayPlan) -> None:
    gateway = f"{plan.namespace}/{plan.name}"
    for endpoint in plan.attached:
        for backend in endpoint.backends:
            labels = (endpoint.namespace, endpoint.name, backend.name, backend.provider, gateway)
            metrics.BACKEND_EFFECTIVE_WEIGHT.labels(*labels).set(backend.effective_weight)
            metrics.BACKEND_TRAFFIC_SHARE.labels(*labels).set(backend.share)


def _probe_targets(
    plan: GatewayPlan, records: list[EndpointRecord]
) -> tuple[dict[BackendKey, Any], dict[BackendKey, dict[str, Any]]]:
    """Every backend the gateway serves, as the health monitor probes it, and what each
    endpoint's status shows of it now (to resume from after a restart)."""
    specs = {r.source.key: r.source.spec for r in records}
    statuses = {r.source.key: (r.body.get("status") or {}).get("backends") or [] for r in records}
    targets: dict[BackendKey, Any] = {}
    shown: dict[BackendKey, dict[str, Any]] = {}
    for endpoint in plan.attached:
        spec = specs[(endpoint.namespace, endpoint.name)]
        assert spec is not None
        refs = {b.name: b.credentials_ref for b in spec.backends}
        timeout = parse_duration(spec.health_check.timeout)
        for backend in endpoint.backends:
            key = (endpoint.namespace, endpoint.name, backend.name)
            ref = refs[backend.name]
            credentials = ((endpoint.namespace, ref.name), ref.key) if ref else None
            target = Target(
                backend.provider, backend.url, backend.upstream_model, backend.api_version, timeout
            )
            targets[key] = (target, credentials, spec.health_check)
        for entry in statuses[(endpoint.namespace, endpoint.name)]:
            shown[(endpoint.namespace, endpoint.name, entry.get("name", ""))] = entry
    return targets, shown


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
        xds_service: tuple[str, int],
        health: HealthMonitor,
    ) -> None:
        self.store = store
        self.kube = kube
        self.secrets = secrets
        self.xds = xds
        # Where the gateways' Pods reach this operator's xDS server (its Service).
        self.xds_service = xds_service
        self.health = health
        self._dirty: set[ObjectKey] = set()
        self._wake = asyncio.Event()
        self._failures: dict[ObjectKey, int] = {}

    def mark(self, keys: set[ObjectKey]) -> None:
        if keys:
            self._dirty |= keys
            self._wake.set()

    async def run(self) -> None:
        """Drain dirty gateways forever; one failing gateway never stops the others."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(DEBOUNCE_SECONDS)
            self._wake.clear()
            batch, self._dirty = self._dirty, set()
            for key in sorted(batch):
                await self._sync_guarded(key)

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
        key = gateway_of_node(report.node)
        model = envoy.model_of_cluster(report.cluster)
        for record in self.store.endpoints_of(key):
            spec = record.source.spec
            if spec is None or spec.model != model:
                continue
            backend = (*record.source.key, report.backend)
            if report.status == 429:
                self.health.back_off(backend, report.retry_after)
            else:
                self.health.expedite(backend)

    async def sync(self, key: ObjectKey) -> None:
        gateway_record = self.store.gateways.get(key)
        records = self.store.endpoints_of(key)
        secret_keys: dict[ObjectKey, SecretKeys | None] = {}
        for record in records:
            for secret in record.secrets:
                if secret not in secret_keys:
                    data = await self.secrets.get(secret)
                    secret_keys[secret] = None if data is None else SecretKeys.from_data(data)
        gateway = gateway_record.source if gateway_record else None
        plan = plan_gateway(
            key,
            gateway,
            [r.source for r in records],
            self.store.namespace_labels,
            secret_keys,
            self.health.held_back(key),
        )
        if gateway is None:
            self.health.forget(key)
        else:
            self.health.watch(key, *_probe_targets(plan, records))
            _export_routing(plan)
        node = node_of_gateway(*key)
        if gateway is None:
            self.xds.remove_snapshot(node)
        elif gateway.spec.data_plane.type == DataPlaneType.ENVOY:
            self.xds.set_snapshot(
                node, envoy.render(plan, gateway.spec.listener.port, gateway.spec.backend_tls)
            )
        applied = gateway_record is None or await self._apply_gateway(gateway_record, plan)
        for record in records:
            outcome = plan.outcomes[record.source.key]
            health = {
                b.name: self.health.shown((*record.source.key, b.name))
                for b in (record.source.spec.backends if record.source.spec else [])
            }
            status = endpoint_status(
                outcome, record.body.get("status") or {}, record.source.generation, _now(), health
            )
            await self._write_status("modelendpoints", record.body, status, outcome.conditions)
        self.secrets.forget_unreferenced(self.store.referenced_secrets())
        if not applied:
            # Reported on the gateway already; the pass is retried with backoff.
            raise ApplyFailed(f"the objects of ModelGateway {_fmt(key)} were not all applied")

    async def _apply_gateway(self, record: GatewayRecord, plan: GatewayPlan) -> bool:
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
            accepted, programmed, ready = gateway_conditions(plan, programmed)
            try:
                await self._apply_objects(record.source.spec, body["metadata"]["uid"], plan)
            except OwnershipConflict as conflict:
                ready = DesiredCondition.false("Ready", "OwnershipConflict", str(conflict))
                applied = False
            except ApiError as error:
                # Refused by the API server (quota, admission, RBAC): say so on the gateway.
                ready = DesiredCondition.false("Ready", "ApplyFailed", describe_error(error))
                applied = False
            conditions = (accepted, programmed, ready)
        generation = int(body["metadata"].get("generation", 0))
        status = gateway_status(plan, body.get("status") or {}, generation, _now(), conditions)
        await self._write_status("modelgateways", body, status, conditions)
        return applied

    async def _apply_objects(self, spec: ModelGatewaySpec, uid: str, plan: GatewayPlan) -> None:
        sources = {c.source for c in plan.credentials}
        secret_data = {source: await self._secret_data(source) for source in sources}
        manifests = [plan_configmap(plan, uid), credentials_secret(plan, uid, secret_data)]
        if spec.data_plane.type == DataPlaneType.ENVOY:
            bootstrap = deployment.bootstrap_configmap(plan, uid, *self.xds_service)
            manifests += [
                bootstrap,
                deployment.envoy_deployment(plan, spec, uid, bootstrap),
                deployment.envoy_service(plan, spec, uid),
            ]
        for manifest in manifests:
            if await self.kube.apply_owned(manifest):
                metrics.API_WRITES.labels(manifest["kind"]).inc()

    async def _secret_data(self, key: ObjectKey) -> dict[str, str]:
        return await self.secrets.get(key) or {}

    async def _write_status(
        self,
        plural: str,
        body: dict[str, Any],
        status: dict[str, Any],
        desired: tuple[DesiredCondition, ...],
    ) -> None:
        current = body.get("status") or {}
        if not status_differs(current, status):
            return
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        updated = await self.kube.patch_status(plural, *key, status)
        metrics.API_WRITES.labels(f"{plural}/status").inc()
        if updated is None:
            return
        if plural == "modelendpoints":
            self.store.set_endpoint_status(key, updated.get("status") or {})
        else:
            self.store.set_gateway_status(key, updated.get("status") or {})
        for change in transitions(current.get("conditions") or [], desired):
            if not change.worth_an_event:
                continue
            condition = change.condition
            await self.kube.post_event(
                updated, change.event_type, condition.reason, condition.message
            )
            metrics.API_WRITES.labels("events").inc()
