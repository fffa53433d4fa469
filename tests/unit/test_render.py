"""The objects a gateway owns, rendered from its plan."""

from __future__ import annotations

import base64
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
    secret = credentials_secret(plan, "uid-1", {("team-a", "keys"): _encoded()})
    assert KEY not in json.dumps(configmap)
    assert base64.b64decode(secret["data"]["team-a_chat_oai"]).decode() == KEY
    assert set(secret["data"]) == {"team-a_chat_oai", "team-a_chat_claude"}


def _encoded() -> dict[str, str]:
    value = base64.b64encode(KEY.encode()).decode()
    return {"openai": value, "anthropic": value}


def test_owned_names_stay_within_the_limit() -> None:
    assert owned_name("shared", "switchyard-plan") == "shared-switchyard-plan"
    long = owned_name("g" * 253, "switchyard-credentials")
    assert len(long) <= 253
    assert long.endswith("-switchyard-credentials")
    assert long != owned_name("g" * 252 + "h", "switchyard-credentials")
