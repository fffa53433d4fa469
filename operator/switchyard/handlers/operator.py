"""Kopf registrations: every watch event updates the store and marks gateways for a pass.

Only event handlers are used: they add no finalizers and write no progress annotations, so
an object the operator has nothing to change about is never written, and deleting one never
waits for the operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import kopf
from aiohttp import web

from switchyard import metrics, pki
from switchyard.api.models import GROUP, VERSION
from switchyard.counts import RedisCounts
from switchyard.handlers import identity, informer
from switchyard.handlers.control_channel import CA_SECRET_NAME, ControlChannel
from switchyard.handlers.health_monitor import HealthMonitor
from switchyard.handlers.leadership import Leadership
from switchyard.handlers.state import Store, object_key
from switchyard.handlers.sync import GatewaySync
from switchyard.kube.client import Kube, credentials, load_configuration
from switchyard.kube.secrets import SecretCache
from switchyard.plan.egress import ApiServer, refusal
from switchyard.plan.gateway import ObjectKey
from switchyard.render.deployment import ENVOY_IMAGE, EnvoyPods
from switchyard.render.objects import GATEWAY_LABEL, MANAGED_BY, XdsPeer
from switchyard.render.rate_limits import RateLimitService
from switchyard.tokens import TokenMinter
from switchyard.xds.server import XdsServer, gateway_of_node

logger = logging.getLogger(__name__)

MANAGED = {"app.kubernetes.io/managed-by": MANAGED_BY}


DEFAULT_XDS_ADDRESS = "0.0.0.0:18000"
DEFAULT_METRICS_ADDRESS = "0.0.0.0:8000"
# The operator's Service, as the Helm chart names it: where gateway Pods find xDS.
DEFAULT_XDS_SERVICE = "switchyard.switchyard-system.svc:18000"


@dataclass
class Runtime:
    store: Store
    kube: Kube
    sync: GatewaySync
    xds: XdsServer
    control: ControlChannel
    workers: list[asyncio.Task[None]]
    scraper: web.AppRunner
    leadership: Leadership | None


def _address(memo: Any, option: str, variable: str, default: str) -> tuple[str, int]:
    """A `switchyard run` option, else an environment variable, else the default."""
    text = memo.get(option) or os.environ.get(variable) or default
    host, _, port = text.rpartition(":")
    return host, int(port)


def xds_address(memo: Any) -> tuple[str, int]:
    return _address(memo, "xds_address", "SWITCHYARD_XDS_ADDRESS", DEFAULT_XDS_ADDRESS)


def metrics_address(memo: Any) -> tuple[str, int]:
    return _address(memo, "metrics_address", "SWITCHYARD_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS)


def envoy_pods(memo: Any) -> EnvoyPods:
    """`--xds-service` and `--envoy-image`, else their environment variables, else defaults."""
    host, port = _address(memo, "xds_service", "SWITCHYARD_XDS_SERVICE", DEFAULT_XDS_SERVICE)
    image = memo.get("envoy_image") or os.environ.get("SWITCHYARD_ENVOY_IMAGE") or ENVOY_IMAGE
    return EnvoyPods(host, port, image)


def operator_namespace() -> str:
    """The operator's own namespace: POD_NAMESPACE (the downward API), else the chart's."""
    return os.environ.get("POD_NAMESPACE") or "switchyard-system"


def ca_secret(memo: Any) -> tuple[str, str]:
    """`--ca-secret NAMESPACE/NAME`, else SWITCHYARD_CA_SECRET, else `switchyard-ca` in the
    operator's namespace."""
    text = memo.get("ca_secret") or os.environ.get("SWITCHYARD_CA_SECRET")
    if not text:
        return operator_namespace(), CA_SECRET_NAME
    namespace, _, name = text.rpartition("/")
    return namespace or operator_namespace(), name


def lifetimes(memo: Any) -> pki.Lifetimes:
    """`--cert-lifetime` and `--ca-lifetime` (seconds), else SWITCHYARD_CERT_LIFETIME and
    SWITCHYARD_CA_LIFETIME, else 24 hours and a year."""

    def seconds(option: str, variable: str, default: float) -> float:
        text = memo.get(option) or os.environ.get(variable)
        return float(text) if text else default

    return pki.Lifetimes(
        certificate=seconds(
            "cert_lifetime", "SWITCHYARD_CERT_LIFETIME", pki.DEFAULT_CERTIFICATE_SECONDS
        ),
        authority=seconds("ca_lifetime", "SWITCHYARD_CA_LIFETIME", pki.DEFAULT_AUTHORITY_SECONDS),
    )


def server_hosts(pods: EnvoyPods, listen_host: str) -> list[str]:
    """The names the xDS server's certificate holds: the Service's, and loopback's."""
    hosts = [pods.xds_host, "localhost", "127.0.0.1"]
    if listen_host not in ("", "0.0.0.0", "::"):
        hosts.append(listen_host)
    return hosts


def network_policy_peer(memo: Any, pods: EnvoyPods) -> XdsPeer | None:
    """With `--gateway-network-policy` (or SWITCHYARD_GATEWAY_NETWORK_POLICY=1), each
    gateway's Envoy Pods get a NetworkPolicy whose egress reaches xDS at the port of
    `--xds-service`, on this operator's Pods: those `--pod-labels` (or SWITCHYARD_POD_LABELS,
    `k=v,k=v`) select in POD_NAMESPACE. Without both, any address on that port."""
    enabled = memo.get("gateway_network_policy") or (
        os.environ.get("SWITCHYARD_GATEWAY_NETWORK_POLICY") == "1"
    )
    if not enabled:
        return None
    text = memo.get("pod_labels") or os.environ.get("SWITCHYARD_POD_LABELS") or ""
    labels = dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)
    return XdsPeer(pods.xds_port, os.environ.get("POD_NAMESPACE") or None, labels)


def _optional_address(memo: Any, option: str, variable: str) -> tuple[str, int] | None:
    """A `switchyard run` option, else an environment variable; None when neither is set."""
    if not (memo.get(option) or os.environ.get(variable)):
        return None
    return _address(memo, option, variable, "")


def rate_limit_service(memo: Any) -> RateLimitService | None:
    """`--rate-limit-service HOST:PORT`, else SWITCHYARD_RATE_LIMIT_SERVICE; else none, and
    clients with limits are not accepted."""
    address = _optional_address(memo, "rate_limit_service", "SWITCHYARD_RATE_LIMIT_SERVICE")
    return RateLimitService(*address) if address else None


def rate_limit_counts(memo: Any) -> RedisCounts | None:
    """`--rate-limit-redis HOST:PORT`, else SWITCHYARD_RATE_LIMIT_REDIS: the rate limit
    service's Redis, read for the limited clients' status; else their status shows no use.
    Its password, if it has one, only from SWITCHYARD_RATE_LIMIT_REDIS_PASSWORD (the chart
    sets it from a Secret): never on a command line."""
    address = _optional_address(memo, "rate_limit_redis", "SWITCHYARD_RATE_LIMIT_REDIS")
    if address is None:
        return None
    return RedisCounts(*address, os.environ.get("SWITCHYARD_RATE_LIMIT_REDIS_PASSWORD", ""))


def resync_seconds(memo: Any) -> float:
    """`--resync-period`, else SWITCHYARD_RESYNC_SECONDS, else 5 minutes."""
    text = memo.get("resync_seconds") or os.environ.get("SWITCHYARD_RESYNC_SECONDS")
    return float(text) if text else informer.DEFAULT_RESYNC_SECONDS


def elector(
    memo: Any,
    kube: Kube,
    sync: GatewaySync,
    xds_at: tuple[str, int],
    reconnected: asyncio.Event,
) -> Leadership | None:
    """With `--leader-elect` (or SWITCHYARD_LEADER_ELECT=1), this replica competes for the
    leader Lease in its own namespace (POD_NAMESPACE, from the downward API), as POD_NAME.

    Only the leader listens for xDS: the status it writes must rest on every Envoy's ACKs,
    NACKs and failure reports. An Envoy whose connection a standby refuses keeps its config
    and connects again (within 2 s) until the Service sends it to the leader; the snapshots
    every replica keeps are content-addressed, so a new leader pushes them no new versions."""
    if not (memo.get("leader_elect") or os.environ.get("SWITCHYARD_LEADER_ELECT") == "1"):
        return None
    namespace = operator_namespace()
    identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
    tasks: set[asyncio.Task[Any]] = set()
    turns = asyncio.Lock()  # listening and stopping take turns, in the order they were asked

    async def listen() -> None:
        async with turns:
            if sync.control is not None:
                await sync.control.wait_ready()  # the CA: made now if this is the first leader
            while leadership.leading() and not sync.xds.listening:
                try:
                    await sync.xds.start(*xds_at)
                    return
                except OSError as error:  # the port of a moment ago may still be closing
                    logger.warning("cannot listen for xDS yet (%s); retrying", error)
                    await asyncio.sleep(1)

    async def stop_listening() -> None:
        async with turns:
            await sync.xds.stop()

    def later(work: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.ensure_future(work())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def elected() -> None:
        later(listen)
        sync.elected()

    leadership = Leadership(
        kube, namespace, identity, on_elected=elected,
        on_deposed=lambda: later(stop_listening), on_reconnected=reconnected.set,
    )  # fmt: skip
    return leadership


async def api_server_of(kube: Kube) -> ApiServer:
    """This cluster's API server as a backend URL could name it: its Service's ClusterIP and
    the host the operator reaches it at, with the addresses that host has now."""
    listeners = {kube.server}
    if service := os.environ.get("KUBERNETES_SERVICE_HOST"):
        listeners.add((service, int(os.environ.get("KUBERNETES_SERVICE_PORT") or 443)))
    for host, port in list(listeners):
        try:
            found = await asyncio.get_running_loop().getaddrinfo(host, port)
        except OSError:
            continue
        listeners.update((str(address[4][0]), port) for address in found)
    return ApiServer.of(listeners)


def _runtime(memo: Any) -> Runtime:
    runtime: Runtime = memo.runtime
    return runtime


def configure(settings: kopf.OperatorSettings) -> None:
    # Kopf would post its own handler logs as Events on every watched object, Secrets
    # included; Switchyard posts its own, meaningful ones.
    settings.posting.enabled = False
    # Kopf reports every event handler call; for a cluster's worth of Secrets that is noise.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60


# A fresh CRD answers 429 for a moment while its storage initialises: retry soon, not in 60 s.
@kopf.on.startup(backoff=1.0)
async def start(settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    configure(settings)
    kube = Kube(await load_configuration())
    store = Store()
    try:
        await informer.prime(kube, store, memo.get("namespaces", ()))
    except BaseException:
        await kube.close()  # the retry builds a new client
        raise
    pods = envoy_pods(memo)
    control = ControlChannel(
        kube, ca_secret(memo), lifetimes(memo), server_hosts(pods, xds_address(memo)[0])
    )
    xds = XdsServer(control)
    secrets = SecretCache(kube, store.referenced_keys)
    api_server = await api_server_of(kube)
    tokens = TokenMinter(forbidden=lambda url: refusal(url, None, api_server))
    health = HealthMonitor(
        secrets,
        lambda gateway: sync.mark({gateway}),
        tokens,
        lambda account, exchange: identity.identity_source(kube, account, exchange),
    )
    sync = GatewaySync(store, kube, secrets, xds, pods, health, api_server, control, tokens)
    sync.network_policy = network_policy_peer(memo, pods)
    sync.rate_limits = rate_limit_service(memo)
    sync.counts = rate_limit_counts(memo)
    # An Envoy that connects, ACKs or NACKs changes its gateway's Programmed condition.
    xds.on_change = lambda node: sync.mark({gateway_of_node(node)})
    xds.on_failed_attempt = sync.failed_attempt
    xds.on_answer = sync.answered
    xds.on_limit_hit = sync.limit_hit
    sync.issuer = await informer.token_issuer(kube)
    # Streams only for gateways that exist (the store knows them all before xDS listens).
    xds.admits = lambda node: gateway_of_node(node) in store.gateways
    control.gateways = lambda: store.gateways.keys()
    control.on_due = sync.mark
    sync.mark(store.gateway_keys())
    reconnected = asyncio.Event()
    workers = [
        asyncio.create_task(sync.run(), name="switchyard-gateway-sync"),
        asyncio.create_task(health.run(), name="switchyard-health-probes"),
        asyncio.create_task(sync.refresh_client_use_forever(), name="switchyard-client-use"),
        asyncio.create_task(
            informer.resync_forever(
                kube, store, sync, memo.get("namespaces", ()), resync_seconds(memo), reconnected
            ),
            name="switchyard-relist",
        ),
    ]
    workers.append(asyncio.create_task(control.run(), name="switchyard-control-channel"))
    leadership = elector(memo, kube, sync, xds_address(memo), reconnected)
    if leadership is None:
        try:
            await control.wait_ready()
            await xds.start(*xds_address(memo))
        except BaseException:
            for worker in workers:
                worker.cancel()
            await kube.close()
            raise
    else:
        sync.may_write = leadership.leading
        control.may_write = leadership.leading
        workers.append(asyncio.create_task(leadership.run(), name="switchyard-leader-election"))
    scraper = await metrics.serve(
        *metrics_address(memo), alive=lambda: not any(w.done() for w in workers)
    )
    memo.runtime = Runtime(
        store=store, kube=kube, sync=sync, xds=xds, control=control, workers=workers,
        scraper=scraper,
        leadership=leadership,
    )  # fmt: skip
    logger.info(
        "primed with %d gateways and %d endpoints", len(store.gateways), len(store.endpoints)
    )


@kopf.on.login()
async def login(**_: Any) -> kopf.ConnectionInfo:
    """Kopf's watches use the same credentials as the operator's own client."""
    found = await credentials(await load_configuration())
    return kopf.ConnectionInfo(
        server=found.server,
        ca_path=found.ca_path,
        certificate_path=found.certificate_path,
        private_key_path=found.private_key_path,
        scheme=found.scheme,
        token=found.token,
        insecure=found.insecure,
    )


@kopf.on.cleanup()
async def stop(memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    for worker in runtime.workers:
        worker.cancel()
    await asyncio.gather(*runtime.workers, return_exceptions=True)
    if runtime.leadership is not None:
        with contextlib.suppress(Exception):  # the standby then waits out the lease instead
            await runtime.leadership.release()
    await runtime.xds.stop()
    await runtime.scraper.cleanup()
    await runtime.kube.close()


def _store_events(
    plural: str,
    put: Callable[[Store, dict[str, Any]], set[ObjectKey]],
    delete: Callable[[Store, ObjectKey], set[ObjectKey]],
) -> None:
    """Every watch event of one of our kinds into the store; the gateways it concerns are
    marked for a pass."""

    async def on_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
        runtime = _runtime(memo)
        raw = dict(body)
        store = runtime.store
        runtime.sync.mark(delete(store, object_key(raw)) if type == "DELETED" else put(store, raw))

    kopf.on.event(GROUP, VERSION, plural, id=f"{plural}-events")(on_event)


_store_events("modelgateways", Store.put_gateway, Store.delete_gateway)
_store_events("modelendpoints", Store.put_endpoint, Store.delete_endpoint)
_store_events("modelclients", Store.put_client, Store.delete_client)


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    runtime = _runtime(memo)
    labels = None if type == "DELETED" else dict(body.metadata.labels)
    runtime.sync.mark(runtime.store.put_namespace(body.metadata.name, labels))


@kopf.on.event("", "v1", "secrets")
async def secret_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Rotation and deletion of referenced Secrets, and drift in the Secrets we own.

    Never logs: a Secret's body is key material.
    """
    runtime = _runtime(memo)
    key = _key(body)
    data = None if type == "DELETED" else dict(body.get("data") or {})
    if runtime.sync.secrets.observe(key, data):
        runtime.sync.mark(runtime.store.gateways_using_secret(key))
    _mark_owner(runtime, body, type)


@kopf.on.event("", "v1", "configmaps", labels=MANAGED)
@kopf.on.event("", "v1", "services", labels=MANAGED)
@kopf.on.event("apps", "v1", "deployments", labels=MANAGED)
@kopf.on.event("policy", "v1", "poddisruptionbudgets", labels=MANAGED)
@kopf.on.event("networking.k8s.io", "v1", "networkpolicies", labels=MANAGED)
async def owned_object_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """Someone edited or deleted an object a gateway owns: the owner's pass puts it back."""
    _mark_owner(_runtime(memo), body, type)


def _key(body: kopf.Body) -> ObjectKey:
    return (body.metadata.namespace or "", body.metadata.name or "")


def _mark_owner(runtime: Runtime, body: kopf.Body, type: str | None) -> None:
    labels = body.metadata.labels
    if labels.get("app.kubernetes.io/managed-by") == MANAGED_BY and GATEWAY_LABEL in labels:
        version = None if type == "DELETED" else body.metadata.get("resourceVersion")
        runtime.sync.observed_owned(str(body.get("kind", "")), *_key(body), version)
        for owner in body.metadata.get("ownerReferences") or []:
            if owner.get("kind") == "ModelGateway":
                runtime.sync.mark({(_key(body)[0], owner["name"])})
