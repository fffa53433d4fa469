"""What the operator knows of the cluster, fed by watch events: the input of every pass.

Each change reports the gateways it concerns, so a pass runs per affected gateway and never
per event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from pydantic import ValidationError

from switchyard.api.models import (
    Backend,
    ModelClientSpec,
    ModelEndpointSpec,
    ModelGatewaySpec,
    SecretKeyRef,
)
from switchyard.plan.clients import ClientSource
from switchyard.plan.gateway import EndpointSource, GatewaySource, ObjectKey

SpecT = TypeVar("SpecT", ModelEndpointSpec, ModelClientSpec)


def object_key(body: dict[str, Any]) -> ObjectKey:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


def validation_summary(error: ValidationError) -> str:
    """`backends.0.weight: Input should be ...`: field paths and messages, never input values."""
    return "; ".join(
        ".".join(str(part) for part in e["loc"]) + ": " + e["msg"] for e in error.errors()
    )


@dataclass(frozen=True)
class _Parsed(Generic[SpecT]):
    """What every attached kind's record is made of: the object's identity, its spec (None
    when invalid, with the error), and the gateway it names."""

    namespace: str
    name: str
    generation: int
    created: str
    spec: SpecT | None
    error: str | None
    gateway: ObjectKey | None

    @classmethod
    def of(cls, body: dict[str, Any], model: type[SpecT]) -> _Parsed[SpecT]:
        metadata = body["metadata"]
        namespace, name = object_key(body)
        spec: SpecT | None = None
        error: str | None = None
        try:
            spec = model.model_validate(body.get("spec") or {})
        except ValidationError as invalid:
            error = validation_summary(invalid)
        # From the raw spec, so that an invalid object is still reported by its gateway.
        ref = (body.get("spec") or {}).get("gatewayRef") or {}
        gateway = (ref.get("namespace") or namespace, ref["name"]) if ref.get("name") else None
        generation = int(metadata.get("generation", 0))
        created = metadata.get("creationTimestamp", "")
        return cls(namespace, name, generation, created, spec, error, gateway)


@dataclass
class EndpointRecord:
    body: dict[str, Any]
    source: EndpointSource
    gateway: ObjectKey | None
    secrets: frozenset[ObjectKey]

    def backends(self) -> list[Backend]:
        return self.source.spec.backends if self.source.spec is not None else []


@dataclass
class ClientRecord:
    body: dict[str, Any]
    source: ClientSource
    gateway: ObjectKey | None
    secret: ObjectKey | None

    def api_key_ref(self) -> SecretKeyRef | None:
        return self.source.spec.api_key_ref if self.source.spec is not None else None


def _client_record(body: dict[str, Any]) -> ClientRecord:
    parsed = _Parsed.of(body, ModelClientSpec)
    spec = parsed.spec
    secret = (parsed.namespace, spec.api_key_ref.name) if spec and spec.api_key_ref else None
    source = ClientSource(
        parsed.namespace, parsed.name, parsed.generation, parsed.created, spec, parsed.error
    )
    return ClientRecord(body=body, source=source, gateway=parsed.gateway, secret=secret)


@dataclass
class GatewayRecord:
    body: dict[str, Any]
    source: GatewaySource | None
    error: str | None


def _endpoint_record(body: dict[str, Any]) -> EndpointRecord:
    parsed = _Parsed.of(body, ModelEndpointSpec)
    spec = parsed.spec
    secrets = frozenset(
        (parsed.namespace, b.credentials_ref.name)
        for b in (spec.backends if spec else [])
        if b.credentials_ref is not None
    )
    source = EndpointSource(
        parsed.namespace, parsed.name, parsed.generation, parsed.created, spec, parsed.error
    )
    return EndpointRecord(body=body, source=source, gateway=parsed.gateway, secrets=secrets)


def _gateway_record(body: dict[str, Any]) -> GatewayRecord:
    namespace, name = object_key(body)
    try:
        spec = ModelGatewaySpec.model_validate(body.get("spec") or {})
    except ValidationError as invalid:
        return GatewayRecord(body=body, source=None, error=validation_summary(invalid))
    generation = int(body["metadata"].get("generation", 0))
    return GatewayRecord(body, GatewaySource(namespace, name, generation, spec), None)


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def trimmed(body: dict[str, Any]) -> dict[str, Any]:
    """The object without what no pass reads and what weighs most: managedFields (about
    three times the spec) and kubectl's copy of the applied object. Thousands of endpoints
    are kept in memory."""
    metadata = {k: v for k, v in body["metadata"].items() if k != "managedFields"}
    annotations = metadata.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        metadata["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return {**body, "metadata": metadata}


def _spec_identity(body: dict[str, Any]) -> tuple[Any, ...]:
    """What decides a pass's output, apart from status: a change here needs a new pass."""
    metadata = body["metadata"]
    return (metadata.get("uid"), metadata.get("generation"), metadata.get("deletionTimestamp"))


def _with_status(body: dict[str, Any], written: dict[str, Any]) -> dict[str, Any]:
    version = (written.get("metadata") or {}).get("resourceVersion")
    metadata = {**body["metadata"], "resourceVersion": version} if version else body["metadata"]
    return {**body, "metadata": metadata, "status": written.get("status") or {}}


class Store:
    def __init__(self) -> None:
        self.endpoints: dict[ObjectKey, EndpointRecord] = {}
        self.gateways: dict[ObjectKey, GatewayRecord] = {}
        self.namespace_labels: dict[str, dict[str, str]] = {}
        self._by_gateway: dict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        self._by_secret: dict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        self.clients: dict[ObjectKey, ClientRecord] = {}
        self._clients_by_gateway: dict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        self._clients_by_secret: dict[ObjectKey, set[ObjectKey]] = defaultdict(set)
        # While a relist is under way: what watch events and our own writes told since its
        # list began. The list is older than those, so the relist leaves them as they are.
        self._moved: set[tuple[str, str | ObjectKey]] | None = None

    # --- ModelEndpoints

    def put_endpoint(self, body: dict[str, Any]) -> set[ObjectKey]:
        """Store an endpoint; returns the gateways whose pass it changes."""
        body = trimmed(body)
        key = object_key(body)
        self._touched("endpoint", key)
        previous = self.endpoints.get(key)
        if previous is not None and _spec_identity(previous.body) == _spec_identity(body):
            previous.body = body  # only status or metadata moved: no new pass needed
            return set()
        affected = self._unlink_endpoint(key)
        record = _endpoint_record(body)
        self.endpoints[key] = record
        if record.gateway is not None:
            self._by_gateway[record.gateway].add(key)
            affected.add(record.gateway)
        for secret in record.secrets:
            self._by_secret[secret].add(key)
        return affected

    def delete_endpoint(self, key: ObjectKey) -> set[ObjectKey]:
        self._touched("endpoint", key)
        return self._unlink_endpoint(key)

    def _unlink_endpoint(self, key: ObjectKey) -> set[ObjectKey]:
        record = self.endpoints.pop(key, None)
        if record is None:
            return set()
        for secret in record.secrets:
            self._by_secret[secret].discard(key)
            if not self._by_secret[secret]:
                del self._by_secret[secret]
        if record.gateway is None:
            return set()
        self._by_gateway[record.gateway].discard(key)
        if not self._by_gateway[record.gateway]:
            del self._by_gateway[record.gateway]
        return {record.gateway}

    def endpoints_of(self, gateway: ObjectKey) -> list[EndpointRecord]:
        return [self.endpoints[key] for key in sorted(self._by_gateway.get(gateway, ()))]

    def set_endpoint_status(self, key: ObjectKey, written: dict[str, Any]) -> None:
        """The status the operator just wrote, and the resourceVersion it left the object at
        (the next conditional write is made at it)."""
        self._touched("endpoint", key)
        record = self.endpoints.get(key)
        if record is not None:
            record.body = _with_status(record.body, written)

    # --- ModelClients

    def put_client(self, body: dict[str, Any]) -> set[ObjectKey]:
        body = trimmed(body)
        key = object_key(body)
        self._touched("client", key)
        previous = self.clients.get(key)
        if previous is not None and _spec_identity(previous.body) == _spec_identity(body):
            previous.body = body
            return set()
        affected = self.delete_client(key)
        record = _client_record(body)
        self.clients[key] = record
        if record.gateway is not None:
            self._clients_by_gateway[record.gateway].add(key)
            affected.add(record.gateway)
        if record.secret is not None:
            self._clients_by_secret[record.secret].add(key)
        return affected

    def delete_client(self, key: ObjectKey) -> set[ObjectKey]:
        self._touched("client", key)
        record = self.clients.pop(key, None)
        if record is None:
            return set()
        _unlink(self._clients_by_secret, record.secret, key)
        _unlink(self._clients_by_gateway, record.gateway, key)
        return {record.gateway} if record.gateway is not None else set()

    def gateways_with_limited_clients(self) -> set[ObjectKey]:
        return {
            record.gateway
            for record in self.clients.values()
            if record.gateway is not None
            and record.source.spec is not None
            and record.source.spec.limits is not None
        }

    def clients_of(self, gateway: ObjectKey) -> list[ClientRecord]:
        return [self.clients[key] for key in sorted(self._clients_by_gateway.get(gateway, ()))]

    def set_client_status(self, key: ObjectKey, written: dict[str, Any]) -> None:
        self._touched("client", key)
        record = self.clients.get(key)
        if record is not None:
            record.body = _with_status(record.body, written)

    # --- ModelGateways

    def put_gateway(self, body: dict[str, Any]) -> set[ObjectKey]:
        body = trimmed(body)
        key = object_key(body)
        self._touched("gateway", key)
        previous = self.gateways.get(key)
        if previous is not None and _spec_identity(previous.body) == _spec_identity(body):
            previous.body = body
            return set()
        self.gateways[key] = _gateway_record(body)
        return {key}

    def delete_gateway(self, key: ObjectKey) -> set[ObjectKey]:
        self._touched("gateway", key)
        return {key} if self.gateways.pop(key, None) is not None else set()

    def set_gateway_status(self, key: ObjectKey, written: dict[str, Any]) -> None:
        self._touched("gateway", key)
        record = self.gateways.get(key)
        if record is not None:
            record.body = _with_status(record.body, written)

    def gateway_keys(self) -> set[ObjectKey]:
        return set(self.gateways) | set(self._by_gateway) | set(self._clients_by_gateway)

    # --- Relists

    def _touched(self, kind: str, key: str | ObjectKey) -> None:
        if self._moved is not None:
            self._moved.add((kind, key))

    def relist_started(self) -> None:
        """Call before listing for `replace_all`: from now on, what watch events and our own
        status writes bring is newer than the list, and the relist keeps it."""
        self._moved = set()

    def replace_all(
        self,
        gateways: list[dict[str, Any]],
        endpoints: list[dict[str, Any]],
        namespaces: dict[str, dict[str, str]],
        clients: list[dict[str, Any]] | None = None,
    ) -> set[ObjectKey]:
        """Make the store what a fresh list of the cluster says, as an informer's relist
        does: objects deleted while no watch event reached us (a watch that expired, a
        connection cut) go too. An object a watch event or a write of ours brought since
        `relist_started` keeps that newer state: putting the listed one back would undo an
        edit (or a deletion, or a creation) that no later event repairs. Returns the gateways
        whose pass that changes."""
        moved, self._moved = self._moved or set(), None

        def listed(kind: str, bodies: list[dict[str, Any]]) -> dict[ObjectKey, dict[str, Any]]:
            return {key: body for body in bodies if (kind, key := object_key(body)) not in moved}

        def unmoved(kind: str, keys: Iterable[ObjectKey]) -> set[ObjectKey]:
            return {key for key in keys if (kind, key) not in moved}

        affected: set[ObjectKey] = set()
        found = listed("gateway", gateways)
        for key in unmoved("gateway", self.gateways) - set(found):
            affected |= self.delete_gateway(key)
        for body in found.values():
            affected |= self.put_gateway(body)
        found = listed("endpoint", endpoints)
        for key in unmoved("endpoint", self.endpoints) - set(found):
            affected |= self.delete_endpoint(key)
        for body in found.values():
            affected |= self.put_endpoint(body)
        found = listed("client", clients or [])
        for key in unmoved("client", self.clients) - set(found):
            affected |= self.delete_client(key)
        for body in found.values():
            affected |= self.put_client(body)
        for name in set(self.namespace_labels) | set(namespaces):
            if ("namespace", name) not in moved:
                affected |= self.put_namespace(name, namespaces.get(name))
        return affected

    # --- Secrets and Namespaces

    def referenced_secrets(self) -> set[ObjectKey]:
        return set(self._by_secret) | set(self._clients_by_secret)

    def referenced_keys(self, secret: ObjectKey) -> frozenset[str]:
        """The keys of `secret` that an endpoint's credentialsRef or a client's apiKeyRef
        names: all the operator keeps of it."""
        refs = [
            backend.credentials_ref
            for endpoint in self._by_secret.get(secret, ())
            for backend in self.endpoints[endpoint].backends()
        ]
        refs += [
            self.clients[client].api_key_ref() for client in self._clients_by_secret.get(secret, ())
        ]
        return frozenset(ref.key for ref in refs if ref is not None and ref.name == secret[1])

    def gateways_using_secret(self, secret: ObjectKey) -> set[ObjectKey]:
        gateways = [self.endpoints[e].gateway for e in self._by_secret.get(secret, ())]
        gateways += [self.clients[c].gateway for c in self._clients_by_secret.get(secret, ())]
        return {g for g in gateways if g is not None}

    def put_namespace(self, name: str, labels: dict[str, str] | None) -> set[ObjectKey]:
        """Record a namespace's labels (None: deleted); returns the gateways that select by them."""
        self._touched("namespace", name)
        if self.namespace_labels.get(name) == labels:
            return set()
        if labels is None:
            self.namespace_labels.pop(name, None)
        else:
            self.namespace_labels[name] = labels
        selecting = {
            key
            for key, record in self.gateways.items()
            if record.source is not None
            and record.source.spec.allowed_endpoints.namespaces.selector is not None
        }
        # Endpoints that admit clients by namespace labels: their gateways' client tables.
        selecting |= {
            record.gateway
            for record in self.endpoints.values()
            if record.gateway is not None
            and record.source.spec is not None
            and record.source.spec.allowed_clients.namespaces.selector is not None
        }
        return selecting


def _unlink(index: dict[ObjectKey, set[ObjectKey]], at: ObjectKey | None, key: ObjectKey) -> None:
    if at is None:
        return
    index[at].discard(key)
    if not index[at]:
        del index[at]
