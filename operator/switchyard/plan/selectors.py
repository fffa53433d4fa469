"""Kubernetes label selector semantics (metav1.LabelSelector)."""

from __future__ import annotations

from collections.abc import Mapping

from switchyard.api.models import LabelSelector, NamespacePolicy, NamespacesFrom


def namespace_admitted(
    policy: NamespacePolicy, home: str, namespace: str, labels: Mapping[str, str] | None
) -> bool:
    """Whether `policy` (Same, All, or a Selector), set on an object in namespace `home`,
    admits objects of `namespace`, whose labels are `labels` (None: not known yet)."""
    if policy.from_ == NamespacesFrom.ALL:
        return True
    if policy.from_ == NamespacesFrom.SAME:
        return namespace == home
    return (
        policy.selector is not None
        and labels is not None
        and selector_matches(policy.selector, labels)
    )


def selector_matches(selector: LabelSelector, labels: Mapping[str, str]) -> bool:
    """True when `labels` satisfy every matchLabels entry and every matchExpression."""
    if any(labels.get(k) != v for k, v in selector.match_labels.items()):
        return False
    for requirement in selector.match_expressions:
        present = requirement.key in labels
        value = labels.get(requirement.key)
        operator = requirement.operator
        if operator == "In" and value not in requirement.values:
            return False
        if operator == "NotIn" and present and value in requirement.values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True
