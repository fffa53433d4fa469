"""The control channel's holes, each tried against the real gRPC server on loopback: only a
peer with a certificate of the operator's CA that names a gateway gets that gateway's
config, and only its reports count, for the backends its config has.

No Kubernetes API: the XdsServer runs in-process with keys from a CA in memory (the ones the
operator keeps in its CA Secret), as `test_xds_reconnect` runs it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from google.protobuf import wrappers_pb2
from prometheus_client import REGISTRY

from e2e.test_xds_reconnect import resources
from ports import free_port
from switchyard.render.envoy import CLUSTER_TYPE, LISTENER_TYPE, cluster_name
from switchyard.xds.server import FailedAttempt, XdsServer
from tests_support.xds_tls import TestAuthority

pytestmark = pytest.mark.e2e

GATEWAY = "infra/a"
OTHER = "infra/b"
CHAT = cluster_name("chat")


def series_naming(text: str) -> list[str]:
    """Every metric sample of the operator's registry with a label value holding `text`."""
    return [
        f"{sample.name}{sample.labels}"
        for family in REGISTRY.collect()
        for sample in family.samples
        if any(text in str(value) for value in sample.labels.values())
    ]


class Harness:
    def __init__(self, authority: TestAuthority) -> None:
        self.authority = authority
        self.server = XdsServer(authority)
        self.changes: list[str] = []
        self.reports: list[FailedAttempt] = []
        self.server.on_change = self.changes.append
        self.server.on_failed_attempt = self.reports.append
        self.address = ""

    async def start(self, *nodes: str) -> None:
        for node in nodes:
            self.server.set_snapshot(node, resources(free_port()))
        port = await self.server.start("127.0.0.1", free_port())
        self.address = f"127.0.0.1:{port}"

    def channel(self, credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(self.address)
        return grpc.aio.secure_channel(self.address, credentials)

    async def subscribe(
        self, credentials: grpc.ChannelCredentials | None, node: str, **metadata: Any
    ) -> tuple[grpc.StatusCode | None, list[discovery_pb2.DiscoveryResponse]]:
        """Ask for clusters and listeners as `node`; what came back within 3 s."""
        got: list[discovery_pb2.DiscoveryResponse] = []
        async with self.channel(credentials) as channel:
            stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
            call = stub.StreamAggregatedResources(timeout=3)
            first = discovery_pb2.DiscoveryRequest(type_url=CLUSTER_TYPE)
            first.node.id = node
            for key, value in metadata.items():
                first.node.metadata.fields[key].number_value = value
            try:
                await call.write(first)
                await call.write(discovery_pb2.DiscoveryRequest(type_url=LISTENER_TYPE))
                for _ in range(2):
                    got.append(await call.read())
            except grpc.aio.AioRpcError as error:
                return error.code(), got
            finally:
                call.cancel()
        return None, got

    async def report(
        self, credentials: grpc.ChannelCredentials | None, node: str, backend: str, cluster: str
    ) -> grpc.StatusCode | None:
        """One failed attempt, `429 retry-after: 3600`, reported as `node`."""
        entry = accesslog_pb2.HTTPAccessLogEntry(
            common_properties=accesslog_pb2.AccessLogCommon(
                upstream_cluster=cluster, custom_tags={"backend": backend}
            ),
            response=accesslog_pb2.HTTPResponseProperties(
                response_code=wrappers_pb2.UInt32Value(value=429),
                response_headers={"retry-after": "3600"},
            ),
        )
        message = als_pb2.StreamAccessLogsMessage(
            identifier=als_pb2.StreamAccessLogsMessage.Identifier(
                node=base_pb2.Node(id=node), log_name="switchyard-failed-attempts"
            ),
            http_logs=als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(log_entry=[entry]),
        )

        async def messages() -> AsyncIterator[als_pb2.StreamAccessLogsMessage]:
            yield message

        async with self.channel(credentials) as channel:
            stub = als_pb2_grpc.AccessLogServiceStub(channel)
            try:
                await stub.StreamAccessLogs(messages(), timeout=3)
            except grpc.aio.AioRpcError as error:
                return error.code()
        return None


def run(test: Any) -> None:
    async def scenario() -> None:
        harness = Harness(TestAuthority())
        await harness.start(GATEWAY, OTHER)
        try:
            await test(harness)
        finally:
            await harness.server.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_gateway_with_its_certificate_gets_its_config_and_its_reports_count() -> None:
    async def test(harness: Harness) -> None:
        own = harness.authority.channel_credentials(GATEWAY)
        code, got = await harness.subscribe(own, GATEWAY)
        assert code is None
        assert [r.type_url for r in got] == [CLUSTER_TYPE, LISTENER_TYPE]
        assert await harness.report(own, GATEWAY, "a", CHAT) is None
        assert [(r.node, r.backend, r.status) for r in harness.reports] == [(GATEWAY, "a", 429)]

    run(test)


def test_plain_text_gets_nothing_and_makes_no_metric_series() -> None:
    async def test(harness: Harness) -> None:
        before = series_naming("spoofed")
        code, got = await harness.subscribe(None, "infra/spoofed")
        assert code == grpc.StatusCode.UNAVAILABLE
        assert got == []
        assert await harness.report(None, GATEWAY, "a", CHAT) == grpc.StatusCode.UNAVAILABLE
        assert harness.changes == []
        assert harness.reports == []
        assert harness.server.status(GATEWAY).streams == 0
        assert series_naming("spoofed") == before == []

    run(test)


def test_a_certificate_of_another_ca_gets_nothing_and_its_nacks_and_reports_count_for_nothing() -> (
    None
):
    async def test(harness: Harness) -> None:
        stranger = TestAuthority()  # a CA of its own, with a certificate for the real gateway
        issued = stranger.issue(GATEWAY)
        # It trusts the operator's CA (it could learn it), so only the operator refuses.
        credentials = grpc.ssl_channel_credentials(
            harness.authority.authorities.bundle, issued.key, issued.certificate
        )
        code, got = await harness.subscribe(credentials, GATEWAY)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert got == []
        assert await harness.report(credentials, GATEWAY, "a", CHAT) == (
            grpc.StatusCode.UNAVAILABLE
        )
        assert harness.changes == []
        assert harness.reports == []
        assert harness.server.status(GATEWAY) == harness.server.status("nobody/at-all")

    run(test)


def test_a_certificate_for_one_gateway_gets_nothing_of_another() -> None:
    async def test(harness: Harness) -> None:
        as_a = harness.authority.channel_credentials(GATEWAY)
        code, got = await harness.subscribe(as_a, OTHER)
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert got == []
        # Nor may it speak for the other gateway in reports.
        assert await harness.report(as_a, OTHER, "a", CHAT) == grpc.StatusCode.PERMISSION_DENIED
        assert harness.changes == []
        assert harness.reports == []
        assert harness.server.status(OTHER).streams == 0

    run(test)


def test_what_a_peer_claims_grows_no_cache_and_no_metric_series() -> None:
    """Many listen ports, node ids of gateways that do not exist, reports of backends the
    config does not have: nothing is kept once the streams are gone, and no series appear."""

    async def test(harness: Harness) -> None:
        own = harness.authority.channel_credentials(GATEWAY)
        for port in range(20000, 20040):
            code, got = await harness.subscribe(own, GATEWAY, listen_port=port)
            assert code is None
            assert len(got) == 2
            # Moved listeners only for the streams still open (the last ones may be closing).
            assert len(harness.server._relocated) <= harness.server.status(GATEWAY).streams
        for _ in range(250):  # the server notices the last stream ended
            if not harness.server.status(GATEWAY).streams:
                break
            await asyncio.sleep(0.02)
        assert harness.server._relocated == {}
        for bad in (0.0, 70000.0, -1.0, 1.5):
            code, _ = await harness.subscribe(own, GATEWAY, listen_port=bad)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        before = series_naming("ghost")
        for index in range(20):
            ghost = f"infra/ghost-{index}"  # a certificate that names a gateway that is gone
            credentials = harness.authority.channel_credentials(ghost)
            code, got = await harness.subscribe(credentials, ghost)
            assert code == grpc.StatusCode.PERMISSION_DENIED
            assert got == []
            assert await harness.report(credentials, ghost, "a", CHAT) is None
        for index in range(20):
            await harness.report(own, GATEWAY, f"unknown-{index}", CHAT)
            await harness.report(own, GATEWAY, "a", f"switchyard/ghost-{index}")
        assert harness.reports == []
        assert series_naming("ghost") == before == []
        assert not [n for n in harness.changes if "ghost" in n]

    run(test)
