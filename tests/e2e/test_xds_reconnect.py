"""The ADS connection between the real Envoy and the operator's xDS server, both on loopback:
how soon Envoy takes its config from a restarted server, and how each side lets go of a
peer that vanished without a FIN.

No Kubernetes API: the XdsServer runs in-process with a snapshot rendered from a small
plan, and Envoy runs with the gateway Pods' own bootstrap (`render.envoy.bootstrap`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gatewaylab import EnvoyProcess
from ports import free_port
from switchyard.plan.gateway import plan_gateway
from switchyard.render.envoy import bootstrap, render
from switchyard.xds.server import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS, XdsServer
from tests_support.plans import ALL_KEYS, GATEWAY_KEY, endpoint, gateway
from tests_support.xds_tls import TestAuthority

pytestmark = pytest.mark.e2e

# How long the server stays away in each restart (an operator restart takes seconds): the
# later ones long enough for Envoy's default back-off, 0.5 s doubling to 30 s, to have grown
# to many seconds. With that default, gateways took a median 2.5 s, and up to 26 s, to take
# their config from a restarted operator.
DOWN_SECONDS = (1.0, 2.0, 4.0, 8.0, 12.0)
# The bootstrap retries a lost stream within 2 s; the rest is margin for a busy machine.
# (With the default back-off, all five rounds come in under this about 1 time in 25, by a
# simulation of its jittered doubling.)
RECONNECT_LIMIT = 3.0


def resources(upstream_port: int) -> dict[str, list[dict[str, Any]]]:
    """A gateway with one model on one backend on loopback (nothing needs to answer there)."""
    backend = {
        "name": "a",
        "provider": "OpenAICompatible",
        "model": "served",
        "url": f"http://127.0.0.1:{upstream_port}",
    }
    plan = plan_gateway(
        GATEWAY_KEY, gateway(), [endpoint("chat", backends=[backend])], {}, ALL_KEYS
    )
    return render(plan, 8080)


# One CA for every server of a test module, as an operator's restarts share its CA Secret.
AUTHORITY = TestAuthority()


class Envoy(EnvoyProcess):
    """The real Envoy with the gateway Pods' bootstrap, its listener moved to loopback, and
    its control-channel certificate in files as its Pod has them."""

    def __init__(
        self,
        node: str,
        xds_port: int,
        workdir: Path,
        adjust: Callable[[dict[str, Any]], None] = lambda config: None,
        authority: TestAuthority = AUTHORITY,
    ) -> None:
        metadata = {"listen_address": "127.0.0.1", "listen_port": free_port()}
        name = node.replace("/", "-")
        tls = authority.gateway_files(node, workdir / f"{name}-xds-tls")
        config = bootstrap(node, "127.0.0.1", xds_port, free_port(), metadata, tls)
        adjust(config)
        credentials = workdir / f"{name}-credentials"
        credentials.mkdir()
        super().__init__(config, workdir, name, credentials)


async def served(
    snapshot: dict[str, list[dict[str, Any]]],
    port: int,
    *nodes: str,
    authority: TestAuthority = AUTHORITY,
) -> XdsServer:
    server = XdsServer(authority)
    for node in nodes:
        server.set_snapshot(node, snapshot)
    await server.start("127.0.0.1", port)
    return server


async def until(condition: Callable[[], bool], within: float, what: str) -> float:
    """Seconds until `condition` held, polled every 20 ms."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise TimeoutError(f"not within {within} s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def programmed(server: XdsServer, node: str, within: float) -> float:
    """Seconds until every Envoy of `node` ACKed the server's snapshot."""
    return await until(lambda: server.status(node).programmed, within, f"{node} programmed")


def test_envoy_takes_its_config_from_a_restarted_server_within_seconds(tmp_path: Path) -> None:
    node = "infra/restarts"
    port = free_port()
    snapshot = resources(free_port())

    async def scenario() -> list[float]:
        server = await served(snapshot, port, node)
        envoy: Envoy | None = None
        took: list[float] = []
        try:
            envoy = Envoy(node, port, tmp_path)
            await programmed(server, node, 30)
            for down in DOWN_SECONDS:
                await server.stop()
                await asyncio.sleep(down)
                server = await served(snapshot, port, node)
                took.append(await programmed(server, node, 40))
        finally:
            await server.stop()
            if envoy is not None:
                envoy.stop()
        return took

    took = asyncio.run(scenario())
    print("reconnected and ACKed after", ", ".join(f"{t:.2f} s" for t in took))
    assert max(took) < RECONNECT_LIMIT, took


@dataclass
class Link:
    """One connection through the relay: when each side closed its end, if it did."""

    dark: bool = False
    closed: dict[str, float] = field(default_factory=dict)  # "envoy" / "server" -> monotonic
    writers: list[asyncio.StreamWriter] = field(default_factory=list)


class Relay:
    """A TCP relay on loopback between Envoy and the xDS server. `cut()` makes the
    connections it carries go dark the way a dead node or a cut network does: from then on
    nothing passes either way, and neither side gets a FIN or a reset, so only keepalive can
    tell them. The relay notes when each side closes its end. Connections opened after the
    cut pass as usual: the network is back for them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.links: list[Link] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._carry, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def cut(self) -> list[Link]:
        for link in self.links:
            link.dark = True
        return list(self.links)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self.links:
            for writer in link.writers:
                writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _carry(
        self, envoy_reader: asyncio.StreamReader, envoy_writer: asyncio.StreamWriter
    ) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = Link(writers=[envoy_writer, server_writer])
        self.links.append(link)
        for pump in (
            self._pump(link, "envoy", envoy_reader, server_writer),
            self._pump(link, "server", server_reader, envoy_writer),
        ):
            task = asyncio.ensure_future(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(
        self, link: Link, side: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if not link.dark:  # dark: read on (so a close is seen), pass nothing on
                    writer.write(chunk)
                    await writer.drain()
        except ConnectionError:
            pass
        link.closed[side] = time.monotonic()
        if not link.dark:
            writer.close()  # an ordinary close reaches the other side, as on any network


def test_each_side_lets_go_of_a_vanished_peer_and_keeps_a_live_one(tmp_path: Path) -> None:
    """Two Envoys through relays: one whose connection goes dark, which both it and the
    server must drop by keepalive (and Envoy then connect anew); and one left alone that
    pings more often than the bootstrap's 15 s, which the server must not take for abuse
    (gRPC's default answers pings more often than every 5 minutes with GOAWAY)."""
    dark_node, live_node = "infra/vanishes", "infra/stays"
    xds_port = free_port()
    # Envoy pings every 15 s (+15 % jitter) and waits 10 s; the server pings every 20 s.
    envoy_limit = 15 * 1.15 + 10 + 3
    server_limit = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 + 3

    def ping_often(config: dict[str, Any]) -> None:
        [cluster] = config["static_resources"]["clusters"]
        options = cluster["typed_extension_protocol_options"]
        http2 = next(iter(options.values()))["explicit_http_config"]["http2_protocol_options"]
        http2.setdefault("connection_keepalive", {"timeout": "10s"})["interval"] = "6s"

    async def scenario() -> tuple[float, float]:
        server = await served(resources(free_port()), xds_port, dark_node, live_node)
        dark_relay, live_relay = Relay(xds_port), Relay(xds_port)
        envoys: list[Envoy] = []
        try:
            await dark_relay.start()
            await live_relay.start()
            envoys.append(Envoy(dark_node, dark_relay.port, tmp_path))
            envoys.append(Envoy(live_node, live_relay.port, tmp_path, ping_often))
            for node in (dark_node, live_node):
                await programmed(server, node, 30)
            # Past the flurry of the first pushes: a stream as it idles between changes.
            await asyncio.sleep(2)
            [dark] = dark_relay.cut()
            cut_at = time.monotonic()
            try:
                await until(
                    lambda: {"envoy", "server"} <= dark.closed.keys(),
                    max(envoy_limit, server_limit) + 10,
                    "both sides closing the dark connection",
                )
            except TimeoutError as error:
                closed = {side: round(at - cut_at, 1) for side, at in dark.closed.items()}
                raise AssertionError(f"{error}; closed after the cut: {closed}") from None
            # Envoy connected anew, and the server forgot the dead stream.
            await until(
                lambda: (
                    server.status(dark_node).streams == 1 and server.status(dark_node).programmed
                ),
                10,
                "the reconnected Envoy alone, programmed",
            )
            # The live Envoy kept its one connection throughout, pinging every 6 s.
            assert [link.closed for link in live_relay.links] == [{}]
            assert server.status(live_node).programmed
            return dark.closed["envoy"] - cut_at, dark.closed["server"] - cut_at
        finally:
            for envoy in envoys:
                envoy.stop()
            await dark_relay.stop()
            await live_relay.stop()
            await server.stop()

    envoy_took, server_took = asyncio.run(asyncio.wait_for(scenario(), 120))
    print(f"after the cut, Envoy let go in {envoy_took:.1f} s, the server in {server_took:.1f} s")
    assert envoy_took < envoy_limit
    assert server_took < server_limit
