"""Kubernetes conditions: desired state, transition times, and the transitions worth an Event."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DesiredCondition:
    type: str
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str

    @classmethod
    def true(cls, type_: str, reason: str, message: str) -> DesiredCondition:
        return cls(type_, "True", reason, message)

    @classmethod
    def false(cls, type_: str, reason: str, message: str) -> DesiredCondition:
        return cls(type_, "False", reason, message)


# Conditions that are good when False.
NEGATIVE_POLARITY = frozenset({"Degraded"})


@dataclass(frozen=True)
class Transition:
    """A condition whose status or reason changed."""

    condition: DesiredCondition
    previous_status: str | None

    @property
    def good(self) -> bool:
        bad_status = "True" if self.condition.type in NEGATIVE_POLARITY else "False"
        return self.condition.status != bad_status

    @property
    def event_type(self) -> str:
        return "Normal" if self.good else "Warning"

    @property
    def worth_an_event(self) -> bool:
        """Every turn for the worse; for the better, Ready, and recoveries of Degraded.
        A new endpoint gets one Event, not one per condition."""
        if not self.good:
            return True
        return self.condition.type == "Ready" or (
            self.condition.type in NEGATIVE_POLARITY and self.previous_status == "True"
        )


def merge_conditions(
    current: Sequence[dict[str, Any]],
    desired: Sequence[DesiredCondition],
    generation: int,
    now: str,
) -> list[dict[str, Any]]:
    """The status.conditions list: lastTransitionTime moves only when the status does."""
    previous = {c.get("type"): c for c in current}
    merged = []
    for condition in desired:
        before = previous.get(condition.type) or {}
        unchanged = before.get("status") == condition.status
        merged.append(
            {
                "type": condition.type,
                "status": condition.status,
                "reason": condition.reason,
                "message": condition.message,
                "lastTransitionTime": before["lastTransitionTime"] if unchanged else now,
                "observedGeneration": generation,
            }
        )
    return merged


def transitions(
    current: Sequence[dict[str, Any]], desired: Sequence[DesiredCondition]
) -> list[Transition]:
    """Conditions whose status or reason differs from what the object shows now."""
    previous = {c.get("type"): (c.get("status"), c.get("reason")) for c in current}
    return [
        Transition(c, previous.get(c.type, (None, None))[0])
        for c in desired
        if previous.get(c.type) != (c.status, c.reason)
    ]
