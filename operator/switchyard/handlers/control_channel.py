"""The control channel's keys: the CA in its Secret, the xDS server's certificate, and each
gateway's client certificate.

One CA Secret (`switchyard-ca` in the operator's namespace, by default) serves every
replica: each reads it every `Lifetimes.check_interval`; the replica that writes (the
leader, or the only one) creates it when it is missing and rotates it as `pki.advance`
says. Every replica keeps the xDS server's certificate in memory, issued from the CA that
signs now and renewed at half-life. Gateway certificates are issued when a gateway's pass
asks (`gateway_secret_data`) and remembered, so that an unchanged certificate is not
rewritten; one found in the gateway's Secret after a restart is kept while it is usable.

Rotating the CA by hand: annotate the CA Secret with `switchyard.dev/rotate-ca=<any new
value>` to stage a new CA now (no connection is dropped: it signs once every Envoy trusts
it); delete the Secret to replace the CA at once (for a CA whose key leaked: Envoys
reconnect only once their new certificates reach them, and keep serving meanwhile).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from switchyard import pki
from switchyard.kube.client import ApiError, Kube, describe_error
from switchyard.plan.gateway import ObjectKey
from switchyard.render.deployment import xds_tls_secret_name
from switchyard.xds.server import ServerCertificate

logger = logging.getLogger(__name__)

CA_SECRET_NAME = "switchyard-ca"
ROTATE_ANNOTATION = "switchyard.dev/rotate-ca"
# The value of ROTATE_ANNOTATION the operator last acted on.
ROTATED_ANNOTATION = "switchyard.dev/rotated-ca"


@dataclass(frozen=True)
class _Issued:
    data: dict[str, str]  # the gateway Secret's data, base64
    issuer: bytes  # PEM of the CA that signed it
    renew_at: float


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


class ControlChannel:
    def __init__(
        self,
        kube: Kube,
        secret: ObjectKey,
        lifetimes: pki.Lifetimes,
        hosts: Collection[str],
    ) -> None:
        self.kube = kube
        self.secret = secret
        self.lifetimes = lifetimes
        self.hosts = list(hosts)
        self.authorities: pki.Authorities | None = None
        self._server: ServerCertificate | None = None
        self._server_renew_at = 0.0
        self._server_issuer = b""
        self._issued: dict[ObjectKey, _Issued] = {}
        self.ready = asyncio.Event()
        # Whether this replica may write the CA Secret (with leader election: it leads).
        self.may_write: Callable[[], bool] = lambda: True
        # Every gateway that exists: certificates of others are forgotten.
        self.gateways: Callable[[], Collection[ObjectKey]] = lambda: self._issued.keys()
        # Told the gateways whose Secret must change: a certificate due, a new trust bundle.
        self.on_due: Callable[[set[ObjectKey]], None] = lambda keys: None

    # --- the xDS server's side

    def server_tls(self) -> ServerCertificate | None:
        """What the xDS server presents, and the CAs it accepts clients of."""
        return self._server

    # --- the loop

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except Exception as error:  # the API unreachable, say: try again next time
                logger.warning("the control channel's keys were not refreshed: %s",
                               describe_error(error))  # fmt: skip
            await asyncio.sleep(self.lifetimes.check_interval)

    async def wait_ready(self) -> None:
        """Until there is a CA and a server certificate (a standby: until the leader made it)."""
        while not self.ready.is_set():
            await self.refresh()
            if not self.ready.is_set():
                await asyncio.sleep(min(1.0, self.lifetimes.check_interval))

    async def refresh(self) -> None:
        """Read the CA Secret, advance it if this replica writes, and renew what is due."""
        namespace, name = self.secret
        try:
            found = await self.kube.read_secret(namespace, name)
        except ApiError as error:
            logger.warning("cannot read the CA Secret %s/%s: %s", namespace, name,
                           describe_error(error))  # fmt: skip
            self._renew(time.time())  # with the CA known already
            return
        now = time.time()
        annotations = ((found or {}).get("metadata") or {}).get("annotations") or {}
        current = pki.Authorities.from_secret_data((found or {}).get("data") or {})
        asked = annotations.get(ROTATE_ANNOTATION)
        rotate = asked is not None and asked != annotations.get(ROTATED_ANNOTATION)
        wanted = pki.advance(current, now, self.lifetimes, rotate)
        if (wanted is not current or rotate) and self.may_write():
            if found is not None and current is None:
                logger.warning("the CA Secret %s/%s holds no usable CA: replacing it",
                               namespace, name)  # fmt: skip
            try:
                await self.kube.write_secret(self._manifest(found, wanted, asked))
            except ApiError as error:
                # Another replica wrote first, or the API refused: read again next time.
                logger.warning("cannot write the CA Secret %s/%s: %s", namespace, name,
                               describe_error(error))  # fmt: skip
            else:
                current = wanted
                logger.info("the control channel's CA is now %s", _describe(wanted))
        if current is None:
            return  # a standby before the leader made the CA
        before = self.authorities
        self.authorities = current
        if before is None or before.bundle != current.bundle:
            # Every gateway's Secret carries the bundle its Envoys trust the operator by.
            self.on_due(set(self.gateways()))
        self._renew(now)

    def _manifest(
        self, found: dict[str, Any] | None, wanted: pki.Authorities, asked: str | None
    ) -> dict[str, Any]:
        namespace, name = self.secret
        metadata: dict[str, Any] = dict((found or {}).get("metadata") or {})
        metadata.update(name=name, namespace=namespace)
        annotations = dict(metadata.get("annotations") or {})
        if asked is not None:
            annotations[ROTATED_ANNOTATION] = asked
        metadata["annotations"] = annotations
        metadata.setdefault("labels", {})["app.kubernetes.io/managed-by"] = "switchyard"
        return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": metadata,
                "data": wanted.to_secret_data()}  # fmt: skip

    def _renew(self, now: float) -> None:
        authorities = self.authorities
        if authorities is None:
            return
        signing = authorities.signing
        if (
            self._server is None
            or now >= self._server_renew_at
            or self._server_issuer != signing.certificate
            or self._server.client_cas != authorities.bundle
        ):
            if (
                self._server is None
                or self._server_issuer != signing.certificate
                or (now >= self._server_renew_at)
            ):
                issued = pki.issue_server(signing, self.hosts, now, self.lifetimes.certificate)
                self._server_renew_at = pki.renewal_due(issued.certificate, now)
                self._server_issuer = signing.certificate
                chain, private = issued.certificate, issued.key
            else:
                chain, private = self._server.certificate_chain, self._server.private_key
            self._server = ServerCertificate(chain, private, authorities.bundle)
            self.ready.set()
        exists = set(self.gateways())
        for key in [k for k in self._issued if k not in exists]:
            del self._issued[key]
        due = {
            key
            for key, issued in self._issued.items()
            if now >= issued.renew_at or issued.issuer not in authorities.trusted
        }
        if due:
            self.on_due(due)

    # --- the gateways' side

    async def gateway_secret_data(self, key: ObjectKey) -> dict[str, str] | None:
        """The data of the gateway's control-channel Secret: its certificate and key, and the
        trust bundle. The same as before while that certificate is usable. None before
        there is a CA."""
        authorities = self.authorities
        if authorities is None:
            return None
        now = time.time()
        namespace, name = key
        issued = self._issued.get(key)
        if issued is None:
            issued = await self._adopt(key, authorities, now)
        if issued is None or now >= issued.renew_at or issued.issuer not in authorities.trusted:
            fresh = pki.issue_gateway(
                authorities.signing, namespace, name, now, self.lifetimes.certificate
            )
            issued = _Issued(
                {pki.TLS_CERT: _b64(fresh.certificate), pki.TLS_KEY: _b64(fresh.key)},
                authorities.signing.certificate,
                pki.renewal_due(fresh.certificate, now),
            )
        bundle = _b64(authorities.bundle)
        if issued.data.get(pki.TLS_CA) != bundle:
            issued = _Issued({**issued.data, pki.TLS_CA: bundle}, issued.issuer, issued.renew_at)
        self._issued[key] = issued
        return issued.data

    async def _adopt(
        self, key: ObjectKey, authorities: pki.Authorities, now: float
    ) -> _Issued | None:
        """What the gateway's Secret holds, if usable (after a restart, a new leader)."""
        namespace, name = key
        try:
            data = await self.kube.read_secret_data(namespace, xds_tls_secret_name(name))
        except ApiError:
            return None
        if not data:
            return None
        try:
            issued = pki.Issued(
                base64.b64decode(data.get(pki.TLS_CERT, "")),
                base64.b64decode(data.get(pki.TLS_KEY, "")),
            )
            if not pki.gateway_certificate_usable(issued, authorities, namespace, name, now):
                return None
            issuer = next(
                pem for pem in authorities.trusted if authorities.trusts_as(issued.parsed, pem)
            )
        except (ValueError, TypeError, StopIteration):
            return None
        return _Issued(
            {pki.TLS_CERT: data[pki.TLS_CERT], pki.TLS_KEY: data[pki.TLS_KEY]},
            issuer,
            pki.renewal_due(issued.certificate, now),
        )


def _describe(authorities: pki.Authorities) -> str:
    """Which CA signs and how many are trusted: no key material."""
    staged = ", one staged" if authorities.staged is not None else ""
    return f"signing with one of {len(authorities.trusted)} trusted CA(s){staged}"
