"""Condition bookkeeping and namespace selectors."""

from __future__ import annotations

from dataclasses import dataclass

from switchyard.api.models import LabelSelector
from switchyard.plan.conditions import DesiredCondition, merge_conditions, transitions
from switchyard.plan.selectors import selector_matches
from switchyard.render.status import programmed_condition

READY = DesiredCondition.true("Ready", "Ready", "served")
NOT_READY = DesiredCondition.false("Ready", "GatewayNotFound", "gone")


def test_transition_time_moves_only_when_the_status_does() -> None:
    first = merge_conditions([], [READY], 1, "2026-01-01T00:00:00Z")
    assert first[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    again = merge_conditions(first, [READY], 2, "2026-01-02T00:00:00Z")
    assert again[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert again[0]["observedGeneration"] == 2
    flipped = merge_conditions(again, [NOT_READY], 2, "2026-01-03T00:00:00Z")
    assert flipped[0]["lastTransitionTime"] == "2026-01-03T00:00:00Z"


def test_transitions_are_changes_of_status_or_reason() -> None:
    current = merge_conditions([], [READY], 1, "t")
    assert transitions(current, [READY]) == []
    assert [t.event_type for t in transitions(current, [NOT_READY])] == ["Warning"]
    assert [t.event_type for t in transitions([], [READY])] == ["Normal"]


def test_degraded_is_bad_when_true_and_its_recovery_is_worth_an_event() -> None:
    degraded = DesiredCondition.true("Degraded", "BackendsUnavailable", "backend a: Unhealthy")
    fine = DesiredCondition.false("Degraded", "AllBackendsAvailable", "all fine")
    accepted = DesiredCondition.true("Accepted", "Accepted", "ok")
    [first_fine, first_accepted] = transitions([], [fine, accepted])
    assert first_fine.good
    assert not first_fine.worth_an_event
    assert not first_accepted.worth_an_event
    current = merge_conditions([], [fine], 1, "t")
    [worse] = transitions(current, [degraded])
    assert (worse.event_type, worse.worth_an_event) == ("Warning", True)
    [better] = transitions(merge_conditions([], [degraded], 1, "t"), [fine])
    assert (better.event_type, better.worth_an_event) == ("Normal", True)


def test_label_selectors() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"team": "a"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["prod", "staging"]},
                {"key": "blocked", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selector_matches(selector, {"team": "a", "tier": "prod"})
    assert not selector_matches(selector, {"team": "a", "tier": "dev"})
    assert not selector_matches(selector, {"team": "b", "tier": "prod"})
    assert not selector_matches(selector, {"team": "a", "tier": "prod", "blocked": ""})
    not_in = LabelSelector.model_validate(
        {
            "matchExpressions": [
                {"key": "env", "operator": "NotIn", "values": ["dev"]},
                {"key": "owner", "operator": "Exists"},
            ]
        }
    )
    assert selector_matches(not_in, {"owner": "x"})
    assert not selector_matches(not_in, {"owner": "x", "env": "dev"})
    assert not selector_matches(not_in, {})


@dataclass(frozen=True)
class _Envoys:
    streams: int
    programmed: bool = True
    rejection: str | None = None


def test_programmed_reads_the_same_however_many_envoys_are_connected() -> None:
    """Envoys reconnect one by one after an operator restart or a Pod roll: a condition that
    counted them would be rewritten each time."""
    one, two = programmed_condition("Envoy", _Envoys(1)), programmed_condition("Envoy", _Envoys(2))
    assert one == two
    assert one.status == "True"
