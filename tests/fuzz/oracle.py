"""What the operator must report for the objects of a fuzz round, judged from the objects
alone: an implementation of the README's rules of its own, written without the operator's
planner, so that the two can disagree.

Where the rules leave a choice (which reason wins when several apply, whether a backend's
probes have failed yet), any of the allowed answers is taken.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

Body = dict[str, Any]
Key = tuple[str, str]  # (namespace, name)

CAMEL_CASE = re.compile(r"^[A-Z][A-Za-z0-9]*$")
ENDPOINT_CONDITIONS = ("Accepted", "ResolvedRefs", "Ready")
GATEWAY_CONDITIONS = ("Accepted", "Programmed", "Ready")
OWNER = re.compile(r"already served by ModelEndpoint ([^/\s]+)/(\S+), which is older")


@dataclass(frozen=True)
class World:
    """What the oracle knows of the cluster besides the fuzzed objects."""

    namespace_labels: Mapping[str, Mapping[str, str]]  # every namespace that exists
    # (namespace, Secret) -> key -> whether it holds a value that is not blank
    secrets: Mapping[Key, Mapping[str, bool]]


@dataclass
class Verdict:
    violations: list[str] = field(default_factory=list)
    # Gateway -> the endpoints the gateway serves, by the endpoints' own status.
    attached: dict[Key, set[Key]] = field(default_factory=dict)


def key_of(body: Body) -> Key:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


def conditions_of(body: Body) -> dict[str, Body]:
    return {c.get("type", ""): c for c in (body.get("status") or {}).get("conditions") or []}


def selector_admits(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector, read leniently: the CRD admits requirements Kubernetes itself
    would refuse (In without values), which match nothing they do not name."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for requirement in selector.get("matchExpressions") or []:
        key, values = requirement["key"], requirement.get("values") or []
        present = key in labels
        admitted = {
            "In": present and labels.get(key) in values,
            "NotIn": not present or labels.get(key) not in values,
            "Exists": present,
            "DoesNotExist": not present,
        }[requirement["operator"]]
        if not admitted:
            return False
    return True


def gateway_admits(gateway: Body, namespace: str, world: World) -> bool:
    policy = ((gateway.get("spec") or {}).get("allowedEndpoints") or {}).get("namespaces") or {}
    source = policy.get("from", "Same")
    if source == "All":
        return True
    if source == "Same":
        return bool(namespace == gateway["metadata"]["namespace"])
    labels = world.namespace_labels.get(namespace)
    return labels is not None and selector_admits(policy.get("selector") or {}, labels)


def gateway_key_of(endpoint: Body) -> Key:
    ref = endpoint["spec"]["gatewayRef"]
    return (ref.get("namespace") or endpoint["metadata"]["namespace"], ref["name"])


def _zero_weight_tiers(backends: list[Body]) -> list[int]:
    totals: dict[int, int] = {}
    for backend in backends:
        priority = backend.get("priority", 0)
        totals[priority] = totals.get(priority, 0) + backend.get("weight", 1)
    return sorted(p for p, total in totals.items() if total == 0)


def _unresolved(endpoint: Body, world: World) -> dict[str, str]:
    """Backend name -> the reason its credentialsRef does not resolve."""
    namespace = endpoint["metadata"]["namespace"]
    found = {}
    for backend in endpoint["spec"]["backends"]:
        ref = backend.get("credentialsRef")
        if ref is None:
            continue
        secret = world.secrets.get((namespace, ref["name"]))
        if secret is None:
            found[backend["name"]] = "SecretNotFound"
        elif not secret.get(ref["key"], False):
            found[backend["name"]] = "SecretKeyNotFound"
    for backend in endpoint["spec"]["backends"]:
        if _never_a_backend(backend.get("url") or ""):
            found[backend["name"]] = "BackendNotAllowed"  # said before any Secret problem
    return found


def _never_a_backend(url: str) -> bool:
    """Cloud metadata and the API server's well-known names (the README's egress rule; the
    fuzzed hosts never spell an address in decimal or hex, nor hit the API server's port)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host in ("metadata", "metadata.google.internal", "instance-data", "kubernetes",
                "kubernetes.default") or host.startswith("kubernetes.default.svc"):  # fmt: skip
        return True
    try:
        address = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_link_local or str(address) in ("fd00:ec2::254", "100.100.100.200")


def _age(body: Body) -> tuple[str, str, str]:
    metadata = body["metadata"]
    return (metadata.get("creationTimestamp", ""), metadata["namespace"], metadata["name"])


def _check_conditions(body: Body, kind: str, required: tuple[str, ...]) -> list[str]:
    """observedGeneration everywhere, the required types, CamelCase reasons, a message for
    every False."""
    where = f"{kind} {'/'.join(key_of(body))}"
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    if status.get("observedGeneration") != generation:
        return [
            f"{where}: status.observedGeneration {status.get('observedGeneration')} is not "
            f"generation {generation}"
        ]
    problems = []
    conditions = conditions_of(body)
    missing = [t for t in required if t not in conditions]
    if missing:
        accepted = conditions.get("Accepted", {})
        problems.append(
            f"{where}: no {', '.join(missing)} condition (Accepted={accepted.get('status')} "
            f"{accepted.get('reason')}: {accepted.get('message')})"
        )
    for condition in conditions.values():
        name = f"{where}: condition {condition.get('type')}"
        if condition.get("observedGeneration") != generation:
            problems.append(f"{name} has observedGeneration {condition.get('observedGeneration')}")
        if condition.get("status") not in ("True", "False", "Unknown"):
            problems.append(f"{name} has status {condition.get('status')!r}")
        if not CAMEL_CASE.match(condition.get("reason") or ""):
            problems.append(f"{name} has reason {condition.get('reason')!r}, not CamelCase")
        if condition.get("status") == "False" and not condition.get("message"):
            problems.append(f"{name} is False with no message")
    return problems


def judge(endpoints: list[Body], gateways: list[Body], world: World) -> Verdict:
    """Every violation of the rules in the current objects, and what each gateway serves."""
    verdict = Verdict()
    gateways_by_key = {key_of(g): g for g in gateways}
    for gateway in gateways:
        verdict.violations += _check_conditions(gateway, "ModelGateway", GATEWAY_CONDITIONS)
    reported = []
    for endpoint in endpoints:
        problems = _check_conditions(endpoint, "ModelEndpoint", ENDPOINT_CONDITIONS)
        verdict.violations += problems
        if not problems:
            reported.append(endpoint)
    if verdict.violations:
        return verdict  # statuses are still catching up: judge them once they have

    accepted: dict[tuple[Key, str], list[Body]] = {}
    for endpoint in reported:
        where = f"ModelEndpoint {'/'.join(key_of(endpoint))}"
        conditions = conditions_of(endpoint)
        gateway_key = gateway_key_of(endpoint)
        target = gateways_by_key.get(gateway_key)
        unresolved = _unresolved(endpoint, world)
        backends = endpoint["spec"]["backends"]
        routable = any(b.get("weight", 1) > 0 and b["name"] not in unresolved for b in backends)

        # Accepted: the reasons that apply, in any order the operator likes.
        refusals = set()
        if target is None:
            refusals.add("GatewayNotFound")
        elif not gateway_admits(target, endpoint["metadata"]["namespace"], world):
            refusals.add("NotAllowedByGateway")
        if _zero_weight_tiers(backends):
            refusals.add("ZeroWeightTier")
        shown = conditions["Accepted"]
        if shown["status"] == "True":
            if refusals:
                verdict.violations.append(f"{where}: Accepted=True, expected one of {refusals}")
            accepted.setdefault((gateway_key, endpoint["spec"]["model"]), []).append(endpoint)
        elif shown["reason"] == "ModelConflict":
            verdict.violations += _check_conflict(endpoint, shown, endpoints, gateway_key)
        elif shown["reason"] not in refusals:
            verdict.violations.append(
                f"{where}: Accepted=False {shown['reason']} ({shown['message']}), expected "
                + (f"one of {sorted(refusals)}" if refusals else "Accepted=True")
            )

        # ResolvedRefs: exactly when every reference resolves, and why not.
        refs = conditions["ResolvedRefs"]
        if unresolved:
            reasons = set(unresolved.values())
            expected = reasons.pop() if len(reasons) == 1 else "RefsNotResolved"
            if (refs["status"], refs["reason"]) != ("False", expected):
                verdict.violations.append(
                    f"{where}: ResolvedRefs={refs['status']} {refs['reason']}, expected False "
                    f"{expected} for backends {sorted(unresolved)}"
                )
        elif refs["status"] != "True":
            verdict.violations.append(
                f"{where}: ResolvedRefs=False {refs['reason']} ({refs['message']}), but every "
                "reference resolves"
            )

        # Ready, and whether the gateway serves the endpoint.
        ready = conditions["Ready"]
        attached = False
        if shown["status"] != "True":
            if (ready["status"], ready["reason"]) != ("False", shown["reason"]):
                verdict.violations.append(
                    f"{where}: Ready={ready['status']} {ready['reason']} while Accepted=False "
                    f"{shown['reason']}"
                )
        elif not routable:
            if (ready["status"], ready["reason"]) != ("False", "NoRoutableBackend"):
                verdict.violations.append(
                    f"{where}: Ready={ready['status']} {ready['reason']}, but no backend with "
                    "weight has credentials: expected NoRoutableBackend"
                )
        else:
            attached = True
            allowed = (
                {("False", "RefsNotResolved"), ("False", "NoHealthyBackend")}
                if unresolved
                else {("True", "Ready"), ("False", "NoHealthyBackend")}
            )
            if (ready["status"], ready["reason"]) not in allowed:
                verdict.violations.append(
                    f"{where}: Ready={ready['status']} {ready['reason']} ({ready['message']}), "
                    f"expected one of {sorted(allowed)}"
                )
        if attached:
            verdict.attached.setdefault(gateway_key, set()).add(key_of(endpoint))
        verdict.violations += _check_backends(endpoint, unresolved, attached)

    for (gateway_key, model), claimants in accepted.items():
        if len(claimants) > 1:
            claimed_by = sorted("/".join(key_of(c)) for c in claimants)
            verdict.violations.append(
                f"model {model!r} on ModelGateway {'/'.join(gateway_key)} is Accepted for "
                f"several endpoints: {claimed_by}"
            )
    for served in gateways:
        count = (served.get("status") or {}).get("attachedEndpoints")
        serving = len(verdict.attached.get(key_of(served), set()))
        where = f"ModelGateway {'/'.join(key_of(served))}"
        if count != serving:
            verdict.violations.append(
                f"{where}: attachedEndpoints {count}, but {serving} endpoints say it serves them"
            )
        for type_ in ("Accepted", "Ready"):
            condition = conditions_of(served)[type_]
            if condition["status"] != "True":
                verdict.violations.append(
                    f"{where}: {type_}=False {condition['reason']}: {condition['message']}"
                )
    return verdict


def _check_conflict(
    endpoint: Body, shown: Body, endpoints: list[Body], gateway_key: Key
) -> list[str]:
    """A ModelConflict names an older endpoint on the same gateway, Accepted for the model."""
    where = f"ModelEndpoint {'/'.join(key_of(endpoint))}"
    match = OWNER.search(shown["message"])
    if match is None:
        return [f"{where}: ModelConflict names no owner: {shown['message']!r}"]
    owner = next((e for e in endpoints if key_of(e) == (match[1], match[2])), None)
    if owner is None:
        return [f"{where}: ModelConflict names {match[1]}/{match[2]}, which does not exist"]
    problems = []
    if gateway_key_of(owner) != gateway_key or owner["spec"]["model"] != endpoint["spec"]["model"]:
        problems.append(f"{where}: ModelConflict with {match[1]}/{match[2]}, which claims no such")
    if _age(owner) > _age(endpoint):
        problems.append(f"{where}: ModelConflict with {match[1]}/{match[2]}, which is newer")
    if conditions_of(owner).get("Accepted", {}).get("status") != "True":
        problems.append(f"{where}: ModelConflict with {match[1]}/{match[2]}, not Accepted itself")
    return problems


def _check_backends(endpoint: Body, unresolved: Mapping[str, str], attached: bool) -> list[str]:
    where = f"ModelEndpoint {'/'.join(key_of(endpoint))}"
    status = endpoint.get("status") or {}
    spec_backends = {b["name"]: b for b in endpoint["spec"]["backends"]}
    shown = {b.get("name"): b for b in status.get("backends") or []}
    if set(shown) != set(spec_backends):
        return [
            f"{where}: status.backends {sorted(shown)} are not the spec's {sorted(spec_backends)}"
        ]
    problems = []
    for name, backend in shown.items():
        effective = backend.get("effectiveWeight")
        if not isinstance(effective, int) or not 0 <= effective <= spec_backends[name].get(
            "weight", 1
        ):
            problems.append(f"{where}: backend {name} has effectiveWeight {effective!r}")
        elif name in unresolved and effective != 0:
            problems.append(f"{where}: backend {name} has no credentials but weight {effective}")
    if not attached and status.get("split"):
        problems.append(f"{where}: not served, yet its split is {status['split']!r}")
    return problems
