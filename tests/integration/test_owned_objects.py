"""What the operator writes of the objects a gateway owns, against the real API server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from switchyard.kube.client import Kube, load_configuration
from tests_support.cluster import Cluster
from tests_support.scenario import API_VERSION

pytestmark = pytest.mark.integration


@pytest.fixture
def owner(cluster: Cluster, namespace: str) -> dict[str, Any]:
    cluster.apply({"apiVersion": API_VERSION, "kind": "ModelGateway",
                   "metadata": {"name": "gw", "namespace": namespace}, "spec": {}})  # fmt: skip
    gateway = cluster.get("modelgateways", "gw", namespace)
    assert gateway is not None
    return {"apiVersion": API_VERSION, "kind": "ModelGateway", "name": "gw",
            "uid": gateway["metadata"]["uid"], "controller": True}  # fmt: skip


def service(
    namespace: str, owner: dict[str, Any], port: int = 8080, app: str = "a"
) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "owned", "namespace": namespace, "labels": {},
                         "ownerReferences": [owner]},
            "spec": {"ports": [{"name": "http", "port": port}],
                     "selector": {"app": app}}}  # fmt: skip


def test_a_changed_port_replaces_the_old_one(
    cluster: Cluster, namespace: str, owner: dict[str, Any]
) -> None:
    """The operator's apply owns every field it set from the first write, so a field it
    stops setting goes: a gateway moved to another listener port kept the old one beside
    the new, and the API server refused both under one port name."""

    async def writes() -> None:
        kube = Kube(await load_configuration())
        try:
            await kube.apply_owned(service(namespace, owner, port=8080))
            await kube.apply_owned(service(namespace, owner, port=9000))
        finally:
            await kube.close()

    asyncio.run(writes())
    live = cluster.get("services", "owned", namespace)
    assert live is not None
    assert [p["port"] for p in live["spec"]["ports"]] == [9000]


def test_an_owned_object_computed_from_an_older_version_is_refused(
    cluster: Cluster, namespace: str, owner: dict[str, Any]
) -> None:
    """A Deployment or Service write rests on the version just read and compared: if another
    writer moves the object in between, the write is refused and the other's change stays."""
    cluster.apply(service(namespace, owner, app="first"))

    async def race() -> int:
        kube = Kube(await load_configuration())
        api = kube._apis["Service"]
        read = api.read

        async def read_then_another_writes(*args: Any, **kwargs: Any) -> Any:
            answer = await read(*args, **kwargs)
            # the current leader, between the read and the write
            cluster.apply(service(namespace, owner, app="current"))
            return answer

        object.__setattr__(api, "read", read_then_another_writes)
        try:
            await kube.apply_owned(service(namespace, owner, app="stale"))
        except ApiException as error:
            return int(error.status)
        finally:
            await kube.close()
        return 200

    assert asyncio.run(race()) == 409
    live = cluster.get("services", "owned", namespace)
    assert live is not None
    assert live["spec"]["selector"] == {"app": "current"}
