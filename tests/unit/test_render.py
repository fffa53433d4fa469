"""The objects a gateway owns, rendered from its plan."""

from __future__ import annotations

import base64
import gzip
import json

from switchyard.render.objects import (
    credentials_secret,
    owned_name,
    plan_configmap,
)
from tests_support.plans import sample_plan

KEY = "sk-unit-test-key-material"


def test_configmap_holds_the_plan_and_no_key_material() -> None:
    plan = sample_plan()
    configmap = plan_configmap(plan, "uid-1")
    document = json.loads(configmap["data"]["plan.json"])
    assert [e["model"] for e in document["endpoints"]] == ["chat"]
    assert document["endpoints"][0]["split"] == "oai=75% claude=25%"
    assert configmap["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    secret = credentials_secret(plan, "uid-1", {("team-a", "keys"): _encoded()}, {})
    assert KEY not in json.dumps(configmap)
    assert base64.b64decode(secret["data"]["team-a_keys_openai"]).decode() == KEY
    assert set(secret["data"]) == {"team-a_keys_openai", "team-a_keys_anthropic"}


def _encoded() -> dict[str, str]:
    value = base64.b64encode(KEY.encode()).decode()
    return {"openai": value, "anthropic": value}


def test_owned_names_stay_within_the_limit() -> None:
    assert owned_name("shared", "switchyard-plan") == "shared-switchyard-plan"
    long = owned_name("g" * 253, "switchyard-credentials")
    assert len(long) <= 253
    assert long.endswith("-switchyard-credentials")
    assert long != owned_name("g" * 252 + "h", "switchyard-credentials")


def test_a_plan_too_large_for_text_is_stored_compressed() -> None:
    plan = sample_plan()
    small = plan_configmap(plan, "uid-1")
    assert "binaryData" not in small
    plan.attached = plan.attached * 2000  # about 2 MB as indented JSON
    large = plan_configmap(plan, "uid-1")
    assert large["data"] == {}
    packed = base64.b64decode(large["binaryData"]["plan.json.gz"])
    assert len(packed) < 512 * 1024
    document = json.loads(gzip.decompress(packed))
    assert len(document["endpoints"]) == 2000
    assert plan_configmap(plan, "uid-1") == large  # the same plan is the same bytes


def test_key_material_is_copied_without_the_white_space_around_it() -> None:
    """`kubectl create secret --from-file` keeps the file's newline, which no HTTP header
    may carry: Envoy answered 503 for every request to that backend."""
    plan = sample_plan()
    with_newline = {
        k: base64.b64encode(base64.b64decode(v) + b"\n").decode() for k, v in _encoded().items()
    }
    secret = credentials_secret(plan, "uid-1", {("team-a", "keys"): with_newline}, {})
    assert base64.b64decode(secret["data"]["team-a_keys_openai"]).decode() == KEY
