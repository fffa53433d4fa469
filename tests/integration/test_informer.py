"""Relists against the real API server: what a watch gap loses, the operator finds again."""

from __future__ import annotations

import asyncio

import pytest

from switchyard.handlers import informer
from switchyard.handlers.health_monitor import HealthMonitor
from switchyard.handlers.state import Store
from switchyard.handlers.sync import GatewaySync
from switchyard.kube.client import Kube, load_configuration
from switchyard.kube.secrets import SecretCache
from switchyard.render.deployment import EnvoyPods
from switchyard.xds.server import XdsServer
from tests_support.backends import openai_backend
from tests_support.scenario import Scenario

pytestmark = pytest.mark.integration


def test_a_relist_drops_what_was_deleted_during_a_watch_gap(scenario: Scenario) -> None:
    """Objects deleted while no watch event reached the operator (Kopf lists again after a
    410 and reports no deletions): the relist finds them gone, and a rotated Secret."""
    scenario.secret("providers", {"api-key": scenario.new_key()})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
        scenario.endpoint_manifest("ghost", [openai_backend("oai", "providers")]),
    )
    scenario.wait_condition("ghost", "Ready", "True")
    app, gateway = scenario.app_namespace, (scenario.gateway_namespace, "shared")

    async def relisted() -> tuple[Store, set[tuple[str, str]]]:
        kube = Kube(await load_configuration())
        try:
            store = Store()
            await informer.prime(kube, store, ())
            secrets = SecretCache(kube, store.referenced_keys)
            await secrets.get((app, "providers"))
            sync = GatewaySync(
                store, kube, secrets, XdsServer(), EnvoyPods("xds", 1),
                HealthMonitor(secrets, lambda _: None),
            )  # fmt: skip
            assert (app, "ghost") in store.endpoints
            # The gap: deleted and rotated with nobody watching.
            await asyncio.to_thread(scenario.cluster.delete, "modelendpoints", "ghost", app)
            await asyncio.to_thread(scenario.secret, "providers", {"api-key": scenario.new_key()})
            await informer.resync(kube, store, sync, ())
            return store, set(sync._dirty)
        finally:
            await kube.close()

    store, marked = asyncio.run(relisted())
    assert set(store.endpoints) >= {(app, "chat")}
    assert (app, "ghost") not in store.endpoints
    assert gateway in marked


def test_an_owned_object_deleted_during_a_watch_gap_is_recreated_after_the_relist(
    scenario: Scenario,
) -> None:
    """A pass trusts what it last wrote of each owned object, and watch events tell it
    otherwise. With no event (a gap), only a relist makes the next pass look again."""
    scenario.secret("providers", {"api-key": scenario.new_key()})
    scenario.cluster.apply(
        scenario.gateway_manifest(),
        scenario.endpoint_manifest("chat", [openai_backend("oai", "providers")]),
    )
    scenario.wait_condition("chat", "Ready", "True")
    scenario.operator.stop()  # nobody watches: every change below is in the gap
    namespace, gateway = scenario.gateway_namespace, (scenario.gateway_namespace, "shared")

    def service() -> dict[str, object] | None:
        return scenario.cluster.get("services", "shared-switchyard", namespace)

    async def passes() -> tuple[bool, bool]:
        kube = Kube(await load_configuration())
        try:
            store = Store()
            await informer.prime(kube, store, ())
            secrets = SecretCache(kube, store.referenced_keys)
            sync = GatewaySync(
                store, kube, secrets, XdsServer(), EnvoyPods("xds", 1),
                HealthMonitor(secrets, lambda _: None),
            )  # fmt: skip
            await sync.sync(gateway)  # verifies every owned object, and remembers them
            await asyncio.to_thread(scenario.cluster.delete, "services", "shared-switchyard",
                                    namespace)  # fmt: skip
            await sync.sync(gateway)
            after_a_pass = await asyncio.to_thread(service) is not None
            await informer.resync(kube, store, sync, ())
            await sync.sync(gateway)
            after_a_relist = await asyncio.to_thread(service) is not None
            return after_a_pass, after_a_relist
        finally:
            await kube.close()

    try:
        after_a_pass, after_a_relist = asyncio.run(passes())
    finally:
        scenario.operator.start()
    assert not after_a_pass, "a pass with no event recreated it: the test shows no gap"
    assert after_a_relist
