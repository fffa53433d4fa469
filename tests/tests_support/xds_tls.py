"""The control channel's keys for an XdsServer run inside a test, without an API server: a
CA and server certificate in memory (what `ControlChannel` keeps), and a gateway's
certificate written as files the way the kubelet mounts its Secret, with the SDS files its
Envoy reads them through."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import grpc

from switchyard import pki
from switchyard.render.deployment import xds_tls_secret_name
from switchyard.render.envoy import XdsTls, xds_sds_files
from switchyard.xds.server import ServerCertificate, gateway_of_node
from tests_support.cluster import Cluster

LOOPBACK = ("127.0.0.1", "localhost")


class TestAuthority:
    """A CA of its own, and the xDS server's certificate from it."""

    __test__ = False  # not a test class, despite its name

    def __init__(self, lifetimes: pki.Lifetimes | None = None) -> None:
        self.lifetimes = lifetimes or pki.Lifetimes()
        now = time.time()
        self.authorities = pki.advance(None, now, self.lifetimes)
        server = pki.issue_server(
            self.authorities.signing, list(LOOPBACK), now, self.lifetimes.certificate
        )
        self.current = ServerCertificate(server.certificate, server.key, self.authorities.bundle)

    def server_tls(self) -> ServerCertificate:
        return self.current

    def issue(self, node: str) -> pki.Issued:
        namespace, name = gateway_of_node(node)
        return pki.issue_gateway(
            self.authorities.signing, namespace, name, time.time(), self.lifetimes.certificate
        )

    def gateway_files(self, node: str, directory: Path) -> XdsTls:
        """A gateway's certificate, key and trust bundle in `directory`/certificates, and the
        SDS files in `directory`/sds: what a bootstrap's `tls` names."""
        issued = self.issue(node)
        certificates, sds = directory / "certificates", directory / "sds"
        certificates.mkdir(parents=True)
        sds.mkdir()
        (certificates / pki.TLS_CERT).write_bytes(issued.certificate)
        (certificates / pki.TLS_KEY).write_bytes(issued.key)
        (certificates / pki.TLS_CA).write_bytes(self.authorities.bundle)
        for file, content in xds_sds_files(str(certificates)).items():
            (sds / file).write_text(json.dumps(content))
        return XdsTls(certificates=str(certificates), sds=str(sds))

    def channel_credentials(self, node: str | None) -> grpc.ChannelCredentials:
        """A gRPC client's credentials: with `node`'s certificate, or none at all."""
        if node is None:
            return grpc.ssl_channel_credentials(self.authorities.bundle)
        issued = self.issue(node)
        return grpc.ssl_channel_credentials(self.authorities.bundle, issued.key, issued.certificate)


def gateway_secret(cluster: Cluster, namespace: str, name: str) -> dict[str, bytes] | None:
    """The gateway's control-channel Secret as the operator wrote it, decoded."""
    secret = cluster.get("secret", xds_tls_secret_name(name), namespace)
    if secret is None:
        return None
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


def gateway_credentials(
    cluster: Cluster, namespace: str, name: str
) -> grpc.ChannelCredentials | None:
    """A gRPC client's credentials as the gateway's Envoys have them, from its Secret."""
    data = gateway_secret(cluster, namespace, name)
    if data is None:
        return None
    return grpc.ssl_channel_credentials(data[pki.TLS_CA], data[pki.TLS_KEY], data[pki.TLS_CERT])
