"""Reads, writes and Events against the API server, as plain dicts."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import os
import traceback
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from switchyard import metrics
from switchyard.api.models import GROUP, VERSION

logger = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"
REPORTING_COMPONENT = "switchyard"


ApiError = ApiException


def describe_error(error: Exception) -> str:
    """A short, key-free description of a failed API call: status, reason and the API
    server's own message (which names objects and fields, never Secret values)."""
    if not isinstance(error, ApiException):
        # The type and where the operator's own code raised it: an exception's message may
        # carry values (a key among them), its location never does.
        frames = [
            f for f in traceback.extract_tb(error.__traceback__) if "/switchyard/" in f.filename
        ]
        if not frames:
            return type(error).__name__
        module = frames[-1].filename.rpartition("/switchyard/")[2]
        return f"{type(error).__name__} in {module}:{frames[-1].lineno}"
    message = ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(error.body or b"{}").get("message", "")
    return f"{error.status} {error.reason}" + (f": {message}" if message else "")


class OwnershipConflict(Exception):
    """An object with the name the operator needs exists and belongs to someone else."""


@dataclass(frozen=True)
class Credentials:
    """How to reach the API server, for clients other than ours (Kopf's watches)."""

    server: str
    ca_path: str | None
    certificate_path: str | None
    private_key_path: str | None
    scheme: str | None
    token: str | None
    insecure: bool


async def load_configuration() -> client.Configuration:
    """The Pod's service account in a cluster, else the kubeconfig KUBECONFIG names.

    KUBECONFIG is read now, not when the client library was imported.
    """
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None,
            client_configuration=configuration,
        )
    return configuration


async def credentials(configuration: client.Configuration) -> Credentials:
    # Covers static tokens, token files and auth providers alike.
    header = await configuration.get_api_key_with_prefix("BearerToken")
    scheme, _, token = (header or "").rpartition(" ")
    return Credentials(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
        scheme=scheme or None,
        token=token or None,
        insecure=not configuration.verify_ssl,
    )


# A 429 (API Priority and Fairness shedding load, or a new CRD's storage still starting)
# means "not done, ask again after Retry-After": as client-go does, wait and ask again a
# few times before reporting it, so a busy API server is not an error in the log.
TOO_MANY_REQUESTS_RETRIES = 5
MAX_RETRY_AFTER_SECONDS = 5.0


async def _json(call: Any, *args: Any, **kwargs: Any) -> Any:
    """Call an API method and return the raw JSON, skipping the slow model classes."""
    name = getattr(call, "__name__", "other")
    for retries_left in range(TOO_MANY_REQUESTS_RETRIES, -1, -1):
        metrics.API_REQUESTS.labels(name).inc()
        try:
            return await _body(await call(*args, _preload_content=False, **kwargs))
        except ApiException as error:
            if error.status != 429 or not retries_left:
                raise
            await asyncio.sleep(_retry_after(error))
    raise AssertionError("unreachable")


def _retry_after(error: ApiException) -> float:
    try:
        headers: Mapping[str, str] = error.headers or {}
        seconds = float(headers.get("Retry-After", 1))
    except ValueError:
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


async def _body(response: Any) -> Any:
    """An unpreloaded response's JSON. The client checks no status of these: raise as it
    would."""
    body = await response.read()
    if response.status >= 400:
        error = ApiException(status=response.status, reason=response.reason)
        error.body = body
        error.headers = response.headers
        raise error
    return json.loads(body)


async def _found(call: Any, *args: Any) -> Any:
    """What a read returns, or None when the object does not exist."""
    try:
        return await _json(call, *args)
    except ApiException as error:
        if _is_not_found(error):
            return None
        raise


def _is_not_found(error: ApiException) -> bool:
    return bool(error.status == 404)


def is_forbidden(error: Exception) -> bool:
    """Whether the API server refused a call for want of permission: a 403 whose message
    says who `cannot` do what (RBAC's wording, and owner-reference enforcement's). Quotas
    and admission (PodSecurity, say) refuse with 403 too, for reasons of their own."""
    if not isinstance(error, ApiException) or error.status != 403:
        return False
    message = ""
    with contextlib.suppress(ValueError, AttributeError):
        message = json.loads(error.body or b"{}").get("message", "")
    return " cannot " in message


def contains(live: Any, desired: Any) -> bool:
    """Whether `live` holds every field of `desired` (it may hold more, such as defaults)."""
    if isinstance(desired, dict):
        return isinstance(live, dict) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


@dataclass(frozen=True)
class Applied:
    wrote: bool
    resource_version: str


@dataclass(frozen=True)
class _KindApi:
    read: Any
    create: Any
    replace: Any
    patch: Any


class Kube:
    """The operations Switchyard performs on the API server, and nothing else."""

    def __init__(self, configuration: client.Configuration) -> None:
        api = client.ApiClient(configuration)
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.coordination = client.CoordinationV1Api(api)
        apps = client.AppsV1Api(api)
        policy = client.PolicyV1Api(api)
        networking = client.NetworkingV1Api(api)
        self._apis = {
            kind: _KindApi(
                read=getattr(owner, f"read_namespaced_{suffix}"),
                create=getattr(owner, f"create_namespaced_{suffix}"),
                replace=getattr(owner, f"replace_namespaced_{suffix}"),
                patch=getattr(owner, f"patch_namespaced_{suffix}"),
            )
            for kind, owner, suffix in (
                ("Secret", self.core, "secret"),
                ("ConfigMap", self.core, "config_map"),
                ("Service", self.core, "service"),
                ("Deployment", apps, "deployment"),
                ("PodDisruptionBudget", policy, "pod_disruption_budget"),
                ("NetworkPolicy", networking, "network_policy"),
            )
        }

    @property
    def server(self) -> tuple[str, int]:
        """The API server's host and port, as this client reaches it."""
        parts = urlsplit(str(self.api.configuration.host))
        return parts.hostname or "", parts.port or 443

    async def close(self) -> None:
        await self.api.close()

    async def list_custom(
        self, plural: str, namespaces: Sequence[str] = ()
    ) -> list[dict[str, Any]]:
        """Every object of one of our kinds, in all namespaces or in the ones given."""
        if not namespaces:
            reply = await _json(self.custom.list_cluster_custom_object, GROUP, VERSION, plural)
            return list(reply.get("items", []))
        items: list[dict[str, Any]] = []
        for namespace in namespaces:
            reply = await _json(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
            )
            items += reply.get("items", [])
        return items

    async def read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        found: dict[str, Any] | None = await _found(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return found

    async def list_namespaces(self) -> list[dict[str, Any]]:
        reply = await _json(self.core.list_namespace)
        return list(reply.get("items", []))

    async def annotate_pods(
        self, namespace: str, selector: dict[str, str], annotations: dict[str, str]
    ) -> int:
        """Set annotations on the running Pods that match `selector`; returns how many.

        The kubelet syncs a Pod as soon as it sees the Pod change, and that sync refreshes
        the Pod's mounted Secrets and ConfigMaps; without it, only the kubelet's periodic
        sync does, a minute or more later."""
        reply = await _json(
            self.core.list_namespaced_pod,
            namespace,
            label_selector=",".join(f"{k}={v}" for k, v in sorted(selector.items())),
        )
        patched = 0
        for pod in reply.get("items", []):
            metadata = pod["metadata"]
            if metadata.get("deletionTimestamp") or all(
                (metadata.get("annotations") or {}).get(k) == v for k, v in annotations.items()
            ):
                continue
            try:
                await _json(
                    self.core.patch_namespaced_pod, metadata["name"], namespace,
                    {"metadata": {"annotations": annotations}},
                )  # fmt: skip
            except ApiException as error:
                if not _is_not_found(error):  # a Pod that went meanwhile needs nothing
                    raise
            else:
                patched += 1
        return patched

    async def service_account_issuer(self) -> tuple[str, str] | None:
        """The issuer of this cluster's ServiceAccount tokens and its public keys (a JWKS),
        from the API server's OIDC discovery documents (which every ServiceAccount may read
        by default)."""
        discovery = await self._get_json("/.well-known/openid-configuration")
        keys = await self._get_json("/openid/v1/jwks", "application/jwk-set+json")
        issuer = discovery.get("issuer")
        if not isinstance(issuer, str) or not keys.get("keys"):
            return None
        return issuer, json.dumps(keys, sort_keys=True)

    async def _get_json(self, path: str, accept: str = "application/json") -> dict[str, Any]:
        metrics.API_REQUESTS.labels("discovery").inc()
        response = await self.api.call_api(
            path, "GET", header_params={"Accept": accept},
            auth_settings=["BearerToken"], _preload_content=False,
        )  # fmt: skip
        found: dict[str, Any] = await _body(response)
        return found

    async def read_service_account(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ServiceAccount, or None when it does not exist."""
        account: dict[str, Any] | None = await _found(
            self.core.read_namespaced_service_account, name, namespace
        )
        return account

    async def service_account_token(
        self, namespace: str, name: str, audience: str, seconds: int
    ) -> str:
        """A token for the ServiceAccount, bound to `audience` and expiring after `seconds`
        (TokenRequest): the one a projected token volume would give its Pods."""
        body = {"spec": {"audiences": [audience], "expirationSeconds": seconds}}
        answer = await _json(
            self.core.create_namespaced_service_account_token, name, namespace, body
        )
        return str(answer["status"]["token"])

    async def read_secret_data(self, namespace: str, name: str) -> dict[str, str] | None:
        """A Secret's base64 `data`, or None when the Secret does not exist."""
        secret = await self.read_secret(namespace, name)
        return None if secret is None else dict(secret.get("data") or {})

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A whole Secret (metadata and data), or None when it does not exist."""
        secret: dict[str, Any] | None = await _found(
            self.core.read_namespaced_secret, name, namespace
        )
        return secret

    async def write_secret(self, secret: dict[str, Any]) -> dict[str, Any]:
        """Create a Secret, or replace it at the resourceVersion it carries (409 when
        someone wrote it since: of two writers, one wins and the other reads again)."""
        metadata = secret["metadata"]
        if metadata.get("resourceVersion"):
            written: dict[str, Any] = await _json(
                self.core.replace_namespaced_secret, metadata["name"], metadata["namespace"],
                secret,
            )  # fmt: skip
        else:
            written = await _json(self.core.create_namespaced_secret, metadata["namespace"], secret)
        logger.info("wrote Secret %s/%s", metadata["namespace"], metadata["name"])
        return written

    async def apply_owned(
        self, manifest: dict[str, Any], known_version: str | None = None
    ) -> Applied:
        """Create or repair an object the operator owns. Returns whether it wrote, and the
        object's resourceVersion after.

        An unchanged object costs one read and no write: a Secret or ConfigMap is compared
        by its `data`, a Deployment or Service by whether the live `spec` still holds every
        field the operator sets (the API server adds defaults of its own). Secrets and
        ConfigMaps are replaced whole, so stray keys go; Deployments and Services are
        server-side applied. Every write is conditional on the resourceVersion compared. An
        object of that name owned by someone else is left alone.
        """
        kind = manifest["kind"]
        api = self._apis[kind]
        metadata = manifest["metadata"]
        namespace, name = metadata["namespace"], metadata["name"]
        if known_version is not None and "data" in manifest:
            # The caller wrote or verified this object at known_version and has seen no
            # change since: replace it at that version without reading it first. If it did
            # move, the API server refuses (409) and the object is read and compared below.
            try:
                written = await _json(
                    api.replace, name, namespace,
                    {**manifest, "metadata": {**metadata, "resourceVersion": known_version}},
                )  # fmt: skip
            except ApiException as error:
                if error.status not in (404, 409):
                    raise
            else:
                logger.info("updated %s %s/%s", kind, namespace, name)
                return Applied(True, written["metadata"]["resourceVersion"])
        try:
            current = await _json(api.read, name, namespace)
        except ApiException as error:
            if not _is_not_found(error):
                raise
            if "data" in manifest:
                created = await _json(api.create, namespace, manifest)
            else:
                # Applied from the first write, so that the operator's apply owns every field
                # it sets and a later apply drops what it stops setting (a changed port).
                created = await _json(
                    api.patch, name, namespace, manifest,
                    field_manager=REPORTING_COMPONENT, force=True, _content_type=APPLY_PATCH,
                )  # fmt: skip
            logger.info("created %s %s/%s", kind, namespace, name)
            return Applied(True, created["metadata"]["resourceVersion"])
        owner_uids = {ref["uid"] for ref in metadata["ownerReferences"]}
        current_owners = current["metadata"].get("ownerReferences") or []
        if not any(ref.get("uid") in owner_uids for ref in current_owners):
            raise OwnershipConflict(
                f"{kind} {namespace}/{name} exists and is not owned by this ModelGateway"
            )
        labels = current["metadata"].get("labels") or {}
        content = "data" if "data" in manifest else "spec"
        if (
            contains(current.get(content) or {}, manifest[content])
            and (
                content == "spec"
                or all(
                    (current.get(k) or {}) == (manifest.get(k) or {})
                    for k in ("data", "binaryData")
                )
            )
            and all(labels.get(k) == v for k, v in metadata["labels"].items())
            and current_owners == metadata["ownerReferences"]
        ):
            return Applied(False, current["metadata"]["resourceVersion"])
        if content == "data":
            updated = {
                **manifest,
                "metadata": {
                    **metadata,
                    "labels": {**labels, **metadata["labels"]},
                    "resourceVersion": current["metadata"]["resourceVersion"],
                },
            }
            written = await _json(api.replace, name, namespace, updated)
        else:
            # At the version just compared: a deposed leader's write from a stale view, or
            # one that races another writer, is refused (409) instead of landing.
            conditional = {
                **manifest,
                "metadata": {**metadata, "resourceVersion": current["metadata"]["resourceVersion"]},
            }
            written = await _json(
                api.patch, name, namespace, conditional,
                field_manager=REPORTING_COMPONENT, force=True, _content_type=APPLY_PATCH,
            )  # fmt: skip
        logger.info("updated %s %s/%s", kind, namespace, name)
        return Applied(True, written["metadata"]["resourceVersion"])

    async def patch_status(
        self,
        plural: str,
        namespace: str,
        name: str,
        status: Mapping[str, Any],
        resource_version: str | None = None,
    ) -> dict[str, Any] | None:
        """Merge-patch the status subresource. None when the object is gone. With
        `resource_version`, only if the object is still at it (409 otherwise): a status
        computed from an older view, by a deposed leader say, never lands."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            result: dict[str, Any] = await _json(
                self.custom.patch_namespaced_custom_object_status,
                GROUP,
                VERSION,
                namespace,
                plural,
                name,
                body,
                _content_type=MERGE_PATCH,
            )
        except ApiException as error:
            if _is_not_found(error):
                return None
            raise
        return result

    async def read_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        lease: dict[str, Any] | None = await _found(
            self.coordination.read_namespaced_lease, name, namespace
        )
        return lease

    async def write_lease(self, lease: dict[str, Any]) -> dict[str, Any]:
        """Create the Lease, or replace it at the resourceVersion it carries (409 if someone
        else wrote it since: two candidates never both win one round)."""
        metadata = lease["metadata"]
        if metadata.get("resourceVersion"):
            call = self.coordination.replace_namespaced_lease
            written: dict[str, Any] = await _json(call, metadata["name"], metadata["namespace"],
                                                  lease)  # fmt: skip
        else:
            written = await _json(
                self.coordination.create_namespaced_lease, metadata["namespace"], lease
            )
        return written

    async def post_event(
        self, involved: Mapping[str, Any], event_type: str, reason: str, message: str
    ) -> None:
        """A core/v1 Event on `involved` (an object body), as `kubectl describe` shows them."""
        metadata = involved["metadata"]
        now = datetime.datetime.now(datetime.UTC)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{metadata['name']}.{uuid.uuid4().hex[:16]}",
                "namespace": metadata["namespace"],
            },
            "involvedObject": {
                "apiVersion": involved["apiVersion"],
                "kind": involved["kind"],
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", REPORTING_COMPONENT),
            "firstTimestamp": now.isoformat().replace("+00:00", "Z"),
            "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
            "count": 1,
        }
        try:
            await _json(self.core.create_namespaced_event, metadata["namespace"], event)
        except ApiException as error:
            # An Event is informative; failing to post one must not fail the reconcile.
            logger.warning(
                "could not post Event %s on %s: %s", reason, metadata["name"], describe_error(error)
            )
