"""An Aggregated Discovery Service (state of the world, v3) for the gateways' Envoys.

Each gateway is one xDS node (`<namespace>/<name>`). The operator sets a snapshot per node;
every Envoy stream of that node gets it, and the server tracks what each stream ACKed or
NACKed, so that the gateway's `Programmed` condition can tell the truth.

The server speaks mutual TLS only (see `switchyard.pki`): a peer proves which gateway it
is with a client certificate the operator issued, and may then subscribe, ACK, NACK and
report failed attempts as that gateway and no other. A connection without such a
certificate ends in the handshake: it reaches no handler, changes no state, and makes no
metric series. What a peer claims (node ids, listen ports, backend names in reports) is
taken only as far as it matches a gateway that exists and what the server serves it, so
nothing a peer sends grows the server's memory or its metric series.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import any_pb2, json_format

from switchyard import metrics, pki
from switchyard.plan.backoff import retry_after_seconds
from switchyard.providers.usage import (
    ANSWER_LOG,
    FIRST_EVENT_KEY,
    LIMIT_HIT_KEY,
    LIMITS_NAMESPACE,
    RESPONSE_MODEL,
    USAGE_NAMESPACE,
)
from switchyard.xds import resources as _registered_types  # noqa: F401  (type registry)

logger = logging.getLogger(__name__)

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
EXTENSION = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
# Envoy's ADS order: clusters before the listeners and routes that use them, so a route
# never names a cluster Envoy has not been given yet; a listener's filter configs (ECDS)
# with the listener.
PUSH_ORDER = (CLUSTER, LISTENER, EXTENSION, ROUTE)

# Keepalive on every connection: a ping every KEEPALIVE_TIME_MS, and one unanswered for
# KEEPALIVE_TIMEOUT_MS closes the connection and ends its streams. Without it, an Envoy
# that vanished without a FIN (its node died, the network was cut) kept its stream, and
# its gateway Programmed, until the kernel gave up on the connection, if ever.
KEEPALIVE_TIME_MS = 20_000
KEEPALIVE_TIMEOUT_MS = 10_000
# Envoy pings too (every 15 s, see `render.envoy.bootstrap`); gRPC by default answers a
# client that pings more often than every 5 minutes with GOAWAY "too_many_pings".
MIN_CLIENT_PING_INTERVAL_MS = 5_000
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_send_message_length", 64 * 2**20),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # A keepalive ping rides on any ping already in flight (gRPC's flow-control probes are
    # frequent), and then waits out that ping's timeout, 60 s by default: hold every ping
    # to the keepalive timeout.
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    # An ADS stream is idle between config changes: ping it all the same (default: 2 pings,
    # then none until data is sent).
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
)


class ServerTls(Protocol):
    """Where the server's certificate comes from. Asked at every TLS handshake, so it must
    answer at once; returning a new object rotates what new connections get."""

    def server_tls(self) -> ServerCertificate | None: ...


@dataclass(frozen=True)
class ServerCertificate:
    certificate_chain: bytes
    private_key: bytes = field(repr=False)
    # The CAs whose client certificates are accepted: every CA of the trust bundle.
    client_cas: bytes = b""


class Refused(Exception):
    """A stream the peer's certificate does not entitle it to."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class TypedResources:
    version: str
    resources: tuple[any_pb2.Any, ...]


def digest(resource: Any) -> str:
    canonical = json.dumps(resource, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def version_of(resources: list[dict[str, Any]], packer: Packer | None = None) -> str:
    """A hash of the content, so a restarted operator serves the same version for the same
    config, and an unchanged config is recognised before any protobuf work."""
    digests = [(packer or Packer()).digest(resource) for resource in resources]
    return hashlib.sha256("".join(digests).encode()).hexdigest()[:16]


def pack(
    type_url: str, resources: list[dict[str, Any]], packer: Packer | None = None
) -> TypedResources:
    """JSON-shaped resources to versioned Any messages."""
    packer = packer or Packer()
    packed = tuple(packer.pack(type_url, resource) for resource in resources)
    return TypedResources(version_of(resources, packer), packed)


class Packer:
    """Digests and protobuf messages of rendered resources, remembered by object identity
    for as long as the resource stays in a snapshot. The renderer hands back the same dict
    for an unchanged endpoint, so a change to one endpoint of thousands parses and hashes
    that endpoint's resources only; a route configuration is parsed without its routes, and
    each route is parsed once. Resources must not be mutated once rendered."""

    def __init__(self) -> None:
        # id -> (the object itself, so the id stays its own; the value)
        self._digests: dict[int, tuple[Any, str]] = {}
        # Packed (Any) for whole resources, the message for routes.
        self._messages: dict[int, tuple[Any, Any]] = {}
        self._seen: set[int] = set()

    def digest(self, resource: dict[str, Any]) -> str:
        routes = _routes_of(resource)
        if routes is None:
            found: str = self._remember(self._digests, resource, lambda: digest(resource))
            return found
        parts = [digest(_without_routes(resource))]
        parts += [self._remember(self._digests, r, lambda r=r: digest(r)) for r in routes]
        return hashlib.sha256("".join(parts).encode()).hexdigest()

    def pack(self, type_url: str, resource: dict[str, Any]) -> any_pb2.Any:
        routes = _routes_of(resource)
        if routes is None:
            packed: any_pb2.Any = self._remember(
                self._messages, resource, lambda: _wrap(_parse(type_url, resource))
            )
            return packed
        config = _parse(type_url, _without_routes(resource))
        config.virtual_hosts[0].routes.extend(
            self._remember(self._messages, r, lambda r=r: _parse_route(r)) for r in routes
        )
        return _wrap(config)

    def _remember(self, memo: dict[int, tuple[Any, Any]], source: Any, make: Any) -> Any:
        key = id(source)
        self._seen.add(key)
        found = memo.get(key)
        if found is None or found[0] is not source:
            found = (source, make())
            memo[key] = found
        return found[1]

    def forget_unused(self) -> None:
        """Drop what the resources of the latest snapshot did not use."""
        for memo in (self._digests, self._messages):
            for key in [k for k in memo if k not in self._seen]:
                del memo[key]
        self._seen = set()


def _routes_of(resource: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A route configuration's routes (of its one virtual host); None for anything else."""
    hosts = resource.get("virtual_hosts")
    if not isinstance(hosts, list) or not hosts:
        return None
    routes = hosts[0].get("routes")
    return routes if isinstance(routes, list) else None


def _without_routes(resource: dict[str, Any]) -> dict[str, Any]:
    """A copy of the route configuration with no routes; the rest is shared."""
    first, *others = resource["virtual_hosts"]
    return {**resource, "virtual_hosts": [{**first, "routes": []}, *others]}


def _parse(type_url: str, resource: dict[str, Any]) -> Any:
    return json_format.ParseDict(resource, _message_type(type_url)())


def _parse_route(route: dict[str, Any]) -> Any:
    from envoy.config.route.v3 import route_components_pb2

    return json_format.ParseDict(route, route_components_pb2.Route())


def _wrap(message: Any) -> any_pb2.Any:
    wrapped = any_pb2.Any()
    wrapped.Pack(message)
    return wrapped


def _message_type(type_url: str) -> Any:
    from google.protobuf import symbol_database

    name = type_url.rsplit("/", 1)[-1]
    return symbol_database.Default().GetSymbol(name)


@dataclass
class StreamState:
    node: str
    # A local Envoy (`switchyard envoy --port`) may ask to listen elsewhere than the gateway's
    # Pods do, through its node metadata.
    listen_on: tuple[str, int] | None = None
    sent: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (version, nonce)
    acked: dict[str, str] = field(default_factory=dict)  # type -> version
    rejected: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> (version, error)
    subscribed: set[str] = field(default_factory=set)
    names: dict[str, list[str]] = field(default_factory=dict)  # type -> resource names asked


@dataclass(frozen=True)
class FailedAttempt:
    """An attempt on a backend that one of the node's Envoys saw fail: a 429 (with the
    seconds its Retry-After asked for), a 5xx, or no answer at all (status 0)."""

    node: str
    cluster: str
    backend: str
    status: int
    retry_after: float


@dataclass(frozen=True)
class Answer:
    """A request one of the node's Envoys answered from a backend: who asked, what the answer
    reported of its usage (`providers.usage` keys), and how long it took."""

    node: str
    cluster: str
    backend: str
    client: str  # namespace/name; "" on a gateway that checks no client
    status: int
    usage: Mapping[str, float]
    response_model: str
    duration: float  # seconds, to the answer's last byte
    first_event: float | None  # seconds to a streamed answer's first event


@dataclass(frozen=True)
class LimitHit:
    """A request one of the node's Envoys refused because its client reached a limit."""

    node: str
    client: str  # namespace/name
    limit: str  # requests or tokens


@dataclass(frozen=True)
class NodeStatus:
    """What the Envoys of one node did with its current snapshot."""

    streams: int
    programmed: bool
    rejection: str | None


class XdsServer:
    def __init__(self, tls: ServerTls | None = None) -> None:
        # Where the TLS server certificate and the trusted client CAs come from; required
        # to listen: the server never serves in plain text.
        self.tls = tls
        self._snapshots: dict[str, dict[str, TypedResources]] = {}
        self._packers: dict[str, Packer] = {}
        self._listeners: dict[str, list[dict[str, Any]]] = {}
        # Listeners moved for a local Envoy's claimed address: only while a stream asks.
        self._relocated: dict[tuple[str, tuple[str, int]], TypedResources] = {}
        # (cluster, backend) pairs a node's snapshot serves: what its reports may name.
        self._reportable: dict[str, frozenset[tuple[str, str]]] = {}
        self._streams: dict[str, list[StreamState]] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._nonce = 0
        # Told the node whenever one of its Envoys connects, leaves, ACKs or NACKs.
        self.on_change: Callable[[str], None] = lambda node: None
        # Told of every failed attempt the Envoys report.
        self.on_failed_attempt: Callable[[FailedAttempt], None] = lambda report: None
        # Told of every answer the Envoys report.
        self.on_answer: Callable[[Answer], None] = lambda answer: None
        self.on_limit_hit: Callable[[LimitHit], None] = lambda hit: None
        # Whether a node names a gateway that exists: a stream for any other is refused
        # (a certificate may outlive its gateway by a few hours). By default, a node with
        # a snapshot; the operator asks its store, which knows every gateway at start.
        self.admits: Callable[[str], bool] = lambda node: node in self._snapshots
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    # --- snapshots

    def set_snapshot(self, node: str, resources: Mapping[str, list[dict[str, Any]]]) -> bool:
        """Replace a node's snapshot; returns whether anything changed (and was pushed)."""
        current = self._snapshots.get(node, {})
        packer = self._packers.setdefault(node, Packer())
        versions = {type_url: version_of(items, packer) for type_url, items in resources.items()}
        if current and _versions(current) == versions:
            packer.forget_unused()
            return False
        snapshot = {
            type_url: current[type_url]
            if type_url in current and current[type_url].version == versions[type_url]
            else TypedResources(
                versions[type_url], tuple(packer.pack(type_url, item) for item in items)
            )
            for type_url, items in resources.items()
        }
        packer.forget_unused()
        self._snapshots[node] = snapshot
        self._listeners[node] = list(resources.get(LISTENER, []))
        self._reportable[node] = _reportable(resources.get(CLUSTER, []))
        # Counters exist from 0, so that increase() sees the first rejection.
        metrics.XDS_REJECTIONS.labels(*gateway_of_node(node))
        if _versions(current).get(LISTENER) != versions.get(LISTENER):
            self._relocated = {k: v for k, v in self._relocated.items() if k[0] != node}
        for event in self._events(node):
            event.set()
        return True

    def remove_snapshot(self, node: str) -> None:
        self._snapshots.pop(node, None)
        self._packers.pop(node, None)
        self._listeners.pop(node, None)
        self._reportable.pop(node, None)
        self._relocated = {k: v for k, v in self._relocated.items() if k[0] != node}

    def versions(self, node: str) -> dict[str, str]:
        return _versions(self._snapshots.get(node, {}))

    def status(self, node: str) -> NodeStatus:
        streams = self._streams.get(node, [])
        wanted = self.versions(node)
        rejection = next(
            (
                error
                for stream in streams
                for type_url, (version, error) in stream.rejected.items()
                if wanted.get(type_url) == version
            ),
            None,
        )
        programmed = (
            bool(streams)
            and bool(wanted)
            and all(
                stream.acked.get(type_url) == version
                for stream in streams
                for type_url, version in wanted.items()
            )
        )
        return NodeStatus(streams=len(streams), programmed=programmed, rejection=rejection)

    def _events(self, node: str) -> list[asyncio.Event]:
        return [e for key, e in self._changed.items() if key.startswith(f"{node}#")]

    # --- gRPC

    async def start(self, host: str, port: int) -> int:
        """Listen for mutual TLS: the TLS source must have a certificate ready."""
        if self.tls is None or self.tls.server_tls() is None:
            raise ValueError("the xDS server needs its TLS certificate before it listens")
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server(_Servicer(self), server)
        als_pb2_grpc.add_AccessLogServiceServicer_to_server(_DataPlaneReports(self), server)
        self.port = server.add_secure_port(f"{host}:{port}", _credentials(self.tls))
        if self.port == 0:
            raise OSError(f"cannot listen for xDS on {host}:{port}")
        await server.start()
        self._server = server
        logger.info("xDS server listening on %s:%d", host, self.port)
        return self.port

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=1)
            self._server = None

    def reportable(self, node: str, cluster: str, backend: str) -> bool:
        """Whether the node's snapshot serves `backend` in `cluster`."""
        return (cluster, backend) in self._reportable.get(node, frozenset())

    async def stream(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest], peer: str
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        """One Envoy's ADS stream: answer its subscriptions, push changes, note ACK/NACK.

        `peer` is the node the peer's certificate names: a stream whose node differs, or
        names no gateway, is refused (`Refused`) before it changes anything."""
        inbox: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for request in requests:
                    await inbox.put(request)
            finally:
                await inbox.put(None)

        reader = asyncio.create_task(read())
        state: StreamState | None = None
        changed = asyncio.Event()
        stream_key = ""
        try:
            while True:
                if state is None or inbox.qsize():
                    request = await inbox.get()
                else:
                    getter = asyncio.ensure_future(inbox.get())
                    waiter = asyncio.ensure_future(changed.wait())
                    done, _ = await asyncio.wait(
                        {getter, waiter}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if getter in done:
                        waiter.cancel()
                        request = getter.result()
                    else:
                        getter.cancel()
                        changed.clear()
                        for response in self._updates(state):
                            yield response
                        continue
                if request is None:
                    return
                if state is None:
                    node = request.node.id
                    if node != peer:
                        raise Refused(
                            grpc.StatusCode.PERMISSION_DENIED,
                            "the node id is not the gateway the client certificate names",
                        )
                    if not self.admits(node):
                        raise Refused(grpc.StatusCode.PERMISSION_DENIED, "no such gateway")
                    state = StreamState(node=node, listen_on=_listen_on(request))
                    self._nonce += 1
                    stream_key = f"{state.node}#{self._nonce}"
                    self._changed[stream_key] = changed
                    self._streams.setdefault(state.node, []).append(state)
                    logger.info("Envoy connected for %s", state.node)
                    self.on_change(state.node)
                response = self._handle(state, request)
                if response is not None:
                    yield response
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            if state is not None:
                self._changed.pop(stream_key, None)
                self._streams[state.node].remove(state)
                if not self._streams[state.node]:
                    del self._streams[state.node]
                if state.listen_on is not None:
                    self._forget_relocated(state.node)
                logger.info("Envoy disconnected for %s", state.node)
                self.on_change(state.node)

    def _handle(
        self, state: StreamState, request: discovery_pb2.DiscoveryRequest
    ) -> discovery_pb2.DiscoveryResponse | None:
        type_url = request.type_url
        state.subscribed.add(type_url)
        sent = state.sent.get(type_url)
        names = sorted(request.resource_names)
        # Envoy asks anew, with the last nonce, when it wants other resources of a type (a
        # route configuration it dropped and needs again): that wants an answer too.
        renamed = state.names.get(type_url, names) != names
        state.names[type_url] = names
        if request.response_nonce:
            if sent is None or request.response_nonce != sent[1]:
                return None  # an answer to an older response: superseded already
            if request.HasField("error_detail"):
                message = request.error_detail.message
                state.rejected[type_url] = (sent[0], message)
                metrics.XDS_REJECTIONS.labels(*gateway_of_node(state.node)).inc()
                logger.warning(
                    "Envoy for %s rejected %s version %s: %s",
                    state.node,
                    type_url.rsplit(".", 1)[-1],
                    sent[0],
                    message,
                )
            else:
                state.acked[type_url] = request.version_info
                state.rejected.pop(type_url, None)
            self.on_change(state.node)
            if renamed and names and not request.HasField("error_detail"):
                return self._response(state, type_url)
            return None
        return self._response(state, type_url)

    def _updates(self, state: StreamState) -> list[discovery_pb2.DiscoveryResponse]:
        wanted = self.versions(state.node)
        responses = []
        for type_url in PUSH_ORDER:
            if type_url in state.subscribed and state.sent.get(type_url, ("", ""))[0] != wanted.get(
                type_url
            ):
                response = self._response(state, type_url)
                if response is not None:
                    responses.append(response)
        return responses

    def _response(
        self, state: StreamState, type_url: str
    ) -> discovery_pb2.DiscoveryResponse | None:
        snapshot = self._snapshots.get(state.node, {}).get(type_url)
        if snapshot is None:
            return None  # nothing for this node yet: the first snapshot will be pushed
        if type_url == LISTENER and state.listen_on is not None:
            # Same version as the gateway's own listener, so ACKs compare alike.
            snapshot = TypedResources(
                snapshot.version, self._relocate(state.node, state.listen_on).resources
            )
        self._nonce += 1
        nonce = str(self._nonce)
        state.sent[type_url] = (snapshot.version, nonce)
        metrics.XDS_PUSHES.labels(*gateway_of_node(state.node)).inc()
        return discovery_pb2.DiscoveryResponse(
            version_info=snapshot.version,
            resources=list(snapshot.resources),
            type_url=type_url,
            nonce=nonce,
        )

    def _forget_relocated(self, node: str) -> None:
        """Keep the moved listeners that a live stream of the node still asks for."""
        wanted = {(node, s.listen_on) for s in self._streams.get(node, [])}
        self._relocated = {k: v for k, v in self._relocated.items() if k[0] != node or k in wanted}

    def _relocate(self, node: str, listen_on: tuple[str, int]) -> TypedResources:
        key = (node, listen_on)
        if key not in self._relocated:
            address, port = listen_on
            moved = [
                {
                    **listener,
                    "address": {"socket_address": {"address": address, "port_value": port}},
                    "name": f"{listener['name']}-{address}-{port}",
                }
                for listener in self._listeners.get(node, [])
            ]
            self._relocated[key] = pack(LISTENER, moved)
        return self._relocated[key]


def node_of_gateway(namespace: str, name: str) -> str:
    """The xDS node of a gateway: every Envoy of the gateway announces itself with it."""
    return f"{namespace}/{name}"


def gateway_of_node(node: str) -> tuple[str, str]:
    namespace, _, name = node.partition("/")
    return (namespace, name)


def _listen_on(request: discovery_pb2.DiscoveryRequest) -> tuple[str, int] | None:
    fields = request.node.metadata.fields
    if "listen_port" not in fields:
        return None
    address = fields["listen_address"].string_value if "listen_address" in fields else "0.0.0.0"
    port = fields["listen_port"].number_value
    try:
        address = str(ipaddress.ip_address(address or "0.0.0.0"))
    except ValueError:
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "listen_address is no IP address") from None
    if not (port == int(port) and 0 < port < 65536):
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, "listen_port is no port")
    return (address, int(port))


def _reportable(clusters: list[dict[str, Any]]) -> frozenset[tuple[str, str]]:
    """Every (cluster, backend) of rendered clusters, by the backend metadata of their hosts."""
    found = set()
    for cluster in clusters:
        for locality in (cluster.get("load_assignment") or {}).get("endpoints") or []:
            for endpoint in locality.get("lb_endpoints") or []:
                filters = (endpoint.get("metadata") or {}).get("filter_metadata") or {}
                backend = (filters.get("switchyard") or {}).get("backend")
                if isinstance(backend, str):
                    found.add((str(cluster.get("name", "")), backend))
    return frozenset(found)


def peer_node(context: Any) -> str | None:
    """The node of the gateway the peer's client certificate names; None for any other
    peer (the TLS handshake already refused those without a certificate of our CA)."""
    auth = context.auth_context() or {}
    for uri in [*auth.get("peer_spiffe_id", []), *auth.get("x509_subject_alternative_name", [])]:
        gateway = pki.gateway_of_id(uri.decode(errors="replace"))
        if gateway is not None:
            return node_of_gateway(*gateway)
    return None


def _configuration(current: ServerCertificate) -> Any:
    return grpc.ssl_server_certificate_configuration(
        [(current.private_key, current.certificate_chain)],
        root_certificates=current.client_cas,
    )


def _credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """TLS that requires a client certificate, whose certificate and trusted CAs follow
    `tls` without a restart: gRPC asks at every handshake, and a changed answer applies to
    the connections that follow (established ones keep theirs)."""
    first = tls.server_tls()
    assert first is not None
    served = [first]

    def fetch() -> Any:
        current = tls.server_tls()
        if current is None or current is served[0]:
            return None
        served[0] = current
        return _configuration(current)

    return grpc.dynamic_ssl_server_credentials(
        _configuration(first), fetch, require_client_authentication=True
    )


class _DataPlaneReports(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Envoy's access logs to the operator: the upstream log, filtered to failed attempts
    (the data plane's view of health), and every answer's record (for the accounting)."""

    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        """Reports count only as the gateway the peer's certificate names, and only for the
        backends its snapshot serves."""
        peer = peer_node(context)
        if peer is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no gateway certificate")
        node = log = ""
        async for message in request_iterator:
            if message.HasField("identifier"):
                node, log = message.identifier.node.id, message.identifier.log_name
                if node != peer:
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        "the node id is not the gateway the client certificate names",
                    )
            for entry in message.http_logs.log_entry:
                common = entry.common_properties
                backend = common.custom_tags.get("backend")
                if log == ANSWER_LOG and not backend and node:
                    # The gateway's own answer: a client refused at its limit is worth a count.
                    if (hit := _limit_hit(node, entry)) is not None:
                        self._server.on_limit_hit(hit)
                    continue
                if not (
                    node
                    and backend
                    and self._server.reportable(node, common.upstream_cluster, backend)
                ):
                    continue
                if log == ANSWER_LOG:
                    self._server.on_answer(_answer(node, backend, entry))
                else:
                    self._server.on_failed_attempt(_failed_attempt(node, backend, entry))
        return als_pb2.StreamAccessLogsResponse()


def _failed_attempt(node: str, backend: str, entry: Any) -> FailedAttempt:
    status = entry.response.response_code.value
    retry_after = (
        retry_after_seconds(entry.response.response_headers.get("retry-after", ""))
        if status == 429
        else 0.0
    )
    cluster = entry.common_properties.upstream_cluster
    return FailedAttempt(node, cluster, backend, status, retry_after)


def _limit_hit(node: str, entry: Any) -> LimitHit | None:
    filters = entry.common_properties.metadata.filter_metadata
    limits = filters[LIMITS_NAMESPACE].fields if LIMITS_NAMESPACE in filters else {}
    kind = limits.get(LIMIT_HIT_KEY)
    client = filters["switchyard"].fields.get("client") if "switchyard" in filters else None
    if kind is None or client is None:
        return None
    return LimitHit(node=node, client=client.string_value, limit=kind.string_value)


def _answer(node: str, backend: str, entry: Any) -> Answer:
    common = entry.common_properties
    filters = common.metadata.filter_metadata
    # The clients filter's namespace, as the rendered config names it.
    client = filters["switchyard"].fields.get("client") if "switchyard" in filters else None
    reported = dict(filters[USAGE_NAMESPACE].fields) if USAGE_NAMESPACE in filters else {}
    numbers = {
        key: value.number_value
        for key, value in reported.items()
        if value.WhichOneof("kind") == "number_value"
    }
    model = reported.get(RESPONSE_MODEL.key)
    started = common.start_time.ToMilliseconds()
    first_event = numbers.pop(FIRST_EVENT_KEY, None)
    return Answer(
        node=node,
        cluster=common.upstream_cluster,
        backend=backend,
        client=client.string_value if client is not None else "",
        status=entry.response.response_code.value,
        usage=numbers,
        response_model=model.string_value if model is not None else "",
        duration=common.time_to_last_downstream_tx_byte.ToNanoseconds() / 1e9,
        first_event=max(0.0, (first_event - started) / 1000) if first_event else None,
    )


def _versions(snapshot: Mapping[str, TypedResources]) -> dict[str, str]:
    return {type_url: typed.version for type_url, typed in snapshot.items()}


class _Servicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    def __init__(self, server: XdsServer) -> None:
        self._server = server

    async def StreamAggregatedResources(
        self, request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest], context: Any
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        peer = peer_node(context)
        if peer is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "no gateway certificate")
            return
        try:
            async for response in self._server.stream(request_iterator, peer):
                yield response
        except Refused as refused:
            await context.abort(refused.code, refused.details)
