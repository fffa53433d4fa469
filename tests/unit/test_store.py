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
