"""Label values built from names: always valid, and distinct for distinct names."""

from __future__ import annotations

import dataclasses
import re

import pytest

from switchyard.render.deployment import (
    EnvoyPods,
    bootstrap_configmap,
    envoy_deployment,
    envoy_pdb,
    envoy_service,
    selector,
)
from switchyard.render.objects import GATEWAY_LABEL, label_value, plan_configmap
from tests_support.plans import gateway, sample_plan

# The API server's rule for a label value (k8s.io/apimachinery IsValidLabelValue).
VALID = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
PODS = EnvoyPods("switchyard.switchyard-system.svc", 18000, "localhost/envoy:test")


def is_label_value(value: str) -> bool:
    return len(value) <= 63 and VALID.fullmatch(value) is not None


@pytest.mark.parametrize(
    "name", ["gw", "a", "shared.team-a", "under_score", "x" * 63, "Mixed.Case-9"]
)
def test_a_name_that_is_a_label_value_is_kept_as_it_is(name: str) -> None:
    assert label_value(name) == name


@pytest.mark.parametrize("length", [64, 100, 253])
def test_a_long_name_becomes_a_valid_value_that_begins_like_it(length: int) -> None:
    name = ("gateway-" * 40)[: length - 1] + "z"
    value = label_value(name)
    assert is_label_value(value), value
    assert value[:40] == name[:40]
    assert label_value(name) == value  # the same every time: selectors must not move


def test_a_name_whose_63rd_character_is_a_dash_gives_a_valid_value() -> None:
    name = "a" * 62 + "-b"
    assert not is_label_value(name[:63])  # what cutting at 63 used to give
    assert is_label_value(label_value(name))
    # The readable prefix is trimmed to end alphanumeric before the hash is added.
    for name in ("a" * 50 + "-.-_" + "b" * 20, "a" * 51 + "." + "b" * 20):
        value = label_value(name)
        assert is_label_value(value), value
        assert "--" not in value
        assert ".-" not in value


def test_names_that_share_63_characters_get_different_values() -> None:
    shared = "team-a.inference-gateway-for-the-production-cluster-in-europe-w"
    assert len(shared) == 63
    first, second = shared + "est-1", shared + "est-2"
    assert label_value(first) != label_value(second)
    assert selector(first) != selector(second)
    # A name that is a prefix of a longer one, and the longer one, differ too.
    assert label_value(shared) != label_value(shared + "x")


def test_text_no_label_may_hold_still_gives_a_valid_value() -> None:
    for text in ("-leading", "trailing.", "ns/gateway", "é" * 10, "a b", "-" * 70):
        value = label_value(text)
        assert value, text
        assert is_label_value(value), (text, value)
    assert label_value("ns/gateway") != label_value("ns-gateway")


def test_every_object_of_a_long_named_gateway_carries_one_valid_gateway_label() -> None:
    shared = "g" * 63
    plans = [dataclasses.replace(sample_plan(), name=shared + suffix) for suffix in ("-1", "-2")]
    values = []
    for plan in plans:
        spec = gateway().spec
        config = bootstrap_configmap(plan, "uid-1", PODS)
        deployment = envoy_deployment(plan, spec, "uid-1", config, PODS)
        service = envoy_service(plan, spec, "uid-1")
        pdb = envoy_pdb(plan, spec, "uid-1")
        owned = [config, deployment, service, pdb, plan_configmap(plan, "uid-1")]
        labels = {manifest["metadata"]["labels"][GATEWAY_LABEL] for manifest in owned}
        [value] = labels
        assert is_label_value(value), value
        # What the Service sends to is what the Deployment's Pods carry, and no one else's.
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert deployment["spec"]["selector"]["matchLabels"] == template_labels
        assert service["spec"]["selector"] == template_labels == selector(plan.name)
        assert pdb["spec"]["selector"]["matchLabels"] == template_labels
        assert all(is_label_value(v) for v in template_labels.values())
        values.append(value)
    assert values[0] != values[1]
