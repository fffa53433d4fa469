"""The operator's in-memory view of the cluster."""

from __future__ import annotations

from typing import Any

from switchyard.handlers.state import LAST_APPLIED, Store


def _endpoint(generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "switchyard.dev/v1alpha1",
        "kind": "ModelEndpoint",
        "metadata": {
            "name": "chat",
            "namespace": "team-a",
            "uid": "u-1",
            "generation": generation,
            "resourceVersion": "7",
            "annotations": {LAST_APPLIED: '{"spec": "..."}', "team": "a"},
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {
            "gatewayRef": {"name": "shared"},
            "model": "chat",
            "backends": [
                {
                    "name": "local",
                    "provider": "OpenAICompatible",
                    "url": "http://127.0.0.1:9",
                    "model": "m",
                }
            ],
        },
        "status": {"observedGeneration": 1},
    }


def test_store_keeps_endpoints_without_managed_fields_or_kubectls_copy() -> None:
    store = Store()
    assert store.put_endpoint(_endpoint()) == {("team-a", "shared")}
    kept = store.endpoints[("team-a", "chat")].body
    assert "managedFields" not in kept["metadata"]
    assert kept["metadata"]["annotations"] == {"team": "a"}
    # What a pass and its Events need is all there.
    assert kept["metadata"]["uid"] == "u-1"
    assert kept["metadata"]["resourceVersion"] == "7"
    assert kept["status"] == {"observedGeneration": 1}


def test_a_status_only_change_is_kept_without_a_new_pass() -> None:
    store = Store()
    store.put_endpoint(_endpoint())
    moved = _endpoint()
    moved["status"] = {"observedGeneration": 1, "conditions": []}
    assert store.put_endpoint(moved) == set()
    kept = store.endpoints[("team-a", "chat")].body
    assert kept["status"] == moved["status"]
    assert "managedFields" not in kept["metadata"]


def test_a_relist_drops_what_was_deleted_while_no_event_came() -> None:
    """After a watch gap (a 410, a cut connection) no DELETED event arrives: the relist
    must drop the object, or its gateway serves a ghost and keeps its keys."""
    store = Store()
    gateway = {"metadata": {"name": "shared", "namespace": "team-a", "uid": "g", "generation": 1},
               "spec": {}}  # fmt: skip
    ghost = _endpoint()
    ghost["metadata"] = {**ghost["metadata"], "name": "ghost", "uid": "u-2"}
    store.put_gateway(gateway)
    store.put_endpoint(_endpoint())
    store.put_endpoint(ghost)
    store.put_namespace("gone", {})
    affected = store.replace_all([gateway], [_endpoint()], {"team-a": {}})
    assert affected == {("team-a", "shared")}
    assert set(store.endpoints) == {("team-a", "chat")}
    assert [r.source.name for r in store.endpoints_of(("team-a", "shared"))] == ["chat"]
    assert "gone" not in store.namespace_labels
    # Nothing changed since: a relist marks nothing.
    assert store.replace_all([gateway], [_endpoint()], {"team-a": {}}) == set()
    assert store.replace_all([], [], {"team-a": {}}) == {("team-a", "shared")}
    assert not store.gateways
    assert not store.endpoints


def test_a_relist_keeps_what_events_and_writes_brought_after_its_list() -> None:
    """A relist lists first and replaces later; events and status writes in between are
    newer than the list. Putting the listed state back would revert them for good: no later
    event repairs a reverted label, and a reverted resourceVersion makes every conditional
    status write fail with 409."""
    store = Store()
    gateway = {"metadata": {"name": "shared", "namespace": "team-a", "uid": "g", "generation": 1},
               "spec": {}}  # fmt: skip
    store.put_gateway(gateway)
    store.put_endpoint(_endpoint())
    store.put_namespace("team-a", {"tier": "gold"})
    store.put_namespace("team-b", {})
    store.relist_started()
    listed_gateways, listed_endpoints = [gateway], [_endpoint()]
    listed_namespaces = {"team-a": {"tier": "gold"}, "team-b": {}}
    # Meanwhile: a status write of ours, a relabel, a new namespace, a new endpoint, and a
    # deletion.
    store.set_endpoint_status(
        ("team-a", "chat"), {"metadata": {"resourceVersion": "8"}, "status": {"x": 1}}
    )
    store.put_namespace("team-a", {"tier": "silver"})
    store.put_namespace("team-c", {})
    late = _endpoint()
    late["metadata"] = {**late["metadata"], "name": "late", "uid": "u-3"}
    store.put_endpoint(late)
    store.put_namespace("team-b", None)
    store.replace_all(listed_gateways, listed_endpoints, listed_namespaces)
    assert store.endpoints[("team-a", "chat")].body["metadata"]["resourceVersion"] == "8"
    assert store.namespace_labels == {"team-a": {"tier": "silver"}, "team-c": {}}
    assert set(store.endpoints) == {("team-a", "chat"), ("team-a", "late")}
    # The next relist, with nothing in between, is the list's word again.
    store.relist_started()
    store.replace_all(listed_gateways, listed_endpoints, listed_namespaces)
    assert set(store.endpoints) == {("team-a", "chat")}
    assert store.endpoints[("team-a", "chat")].body["metadata"]["resourceVersion"] == "7"
    assert store.namespace_labels == listed_namespaces
