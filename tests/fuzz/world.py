"""The fuzz world: the namespaces, Secrets and canaries of one run, and the rounds played in
it. A round applies a batch of fuzzed objects as a List (kubectl apply), waits until the
operator has reported every object the API server admitted as the rules say, then checks
what it pushes to each gateway's Envoys with the real Envoy, and that it is alive and
logged no error."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fuzz import envoy_check
from fuzz.oracle import (
    Body,
    Key,
    Verdict,
    World,
    conditions_of,
    gateway_admits,
    judge,
    key_of,
)
from fuzz.strategies import (
    GATEWAYS,
    NAMESPACE_LABELS,
    SECRETS,
    TEAM_A,
    TEAM_A_SECRETS,
    TEAM_B,
    TEAM_B_LABELS,
    Batch,
    Spec,
    canary_model,
    canary_name,
)
from gatewaylab import FakeProcess
from switchyard.api.models import ModelEndpointSpec, ModelGatewaySpec
from switchyard.render.envoy import cluster_name
from tests_support import hygiene
from tests_support.cluster import Cluster
from tests_support.scenario import API_VERSION, Operator
from tests_support.xds_tls import gateway_credentials

FUZZ_LABEL = "switchyard.test/fuzz"
CANARY_BACKEND = "canary"
CANARY_SECRET = "canary-key"
Ref = tuple[str, str, str]  # (kind, namespace, name)
# How long the operator may take to report a round: about a second, typically, on a 2-core
# machine; generous, since a pass that failed is retried after a backoff of up to 30 s.
SETTLE_SECONDS = 60.0
# How long what xDS serves may lag the statuses: a pass or two after a deletion.
XDS_CATCH_UP_SECONDS = 10.0
# Operator log lines that mean it broke: a traceback, a status the API server refused for
# another reason than a conflict (the object moved on: the pass is retried), a pass that
# failed for another reason than owned objects the API server refused (those show on the
# gateway's Ready condition, which the oracle reads).
TROUBLE = re.compile(
    r"Traceback"
    r"|could not write the status(?!.*409 Conflict)"
    r"|pass over ModelGateway .* failed \((?!ApplyFailed\b)"
)


class LogWatch(logging.Handler):
    """Every warning and error logged in this process (the operator runs in a thread of it),
    with its traceback; read and cleared while a round settles and after it."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def take(self) -> list[str]:
        lines, self.lines = self.lines, []
        return lines


@dataclass
class Tally:
    """What the run did, for its summary."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    phases: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    rounds: int = 0
    seconds: float = 0.0
    slowest_settle: float = 0.0

    def summary(self) -> str:
        phases = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in self.phases.items())
        lines = [
            f"{self.rounds} rounds in {self.seconds:.0f}s ({phases}; the slowest round took "
            f"{self.slowest_settle:.1f}s to settle)"
        ]
        lines += [f"  {count:6d}  {what}" for what, count in sorted(self.counts.items())]
        lines += ["examples:", *(f"  {what}: {said}" for what, said in self.examples.items())]
        return "\n".join(lines)


@dataclass(repr=False)
class FuzzWorld:
    cluster: Cluster
    operator: Operator
    run: str
    namespaces: dict[str, str]  # role token -> namespace of this run
    fake: FakeProcess
    directory: Path
    log: LogWatch
    key_material: list[str] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    present: set[Ref] = field(default_factory=set)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # role -> labels now
    team_a_secrets: list[Body] = field(default_factory=list)
    team_a_secrets_exist: bool = True

    def __repr__(self) -> str:
        # Hypothesis prints the arguments of a failing example: never the key material.
        return f"FuzzWorld(run={self.run!r})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    # --- documents

    def resolve(self, value: Any) -> Any:
        """Role tokens (`@team-a`) to this run's namespaces, wherever they stand."""
        if isinstance(value, str):
            return self.namespaces.get(value, value)
        if isinstance(value, list):
            return [self.resolve(item) for item in value]
        if isinstance(value, dict):
            return {self.resolve(k): self.resolve(v) for k, v in value.items()}
        return value

    def document(self, kind: str, namespace: str, name: str, spec: Spec) -> Body:
        return {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {
                "name": name,
                "namespace": self.resolve(namespace),
                "labels": {FUZZ_LABEL: self.run},
            },
            "spec": self.resolve(spec),
        }

    def canary(self, gateway: str, weight: int) -> Body:
        backend = {
            "name": CANARY_BACKEND,
            "provider": "OpenAICompatible",
            "model": "llama",
            "url": self.fake.url,
            "credentialsRef": {"name": CANARY_SECRET, "key": "api-key"},
            "weight": weight,
        }
        spec = {
            "gatewayRef": {"name": gateway},
            "model": canary_model(gateway),
            "backends": [backend],
        }
        return self.document("ModelEndpoint", GATEWAYS, canary_name(gateway), spec)

    def secret(self, namespace: str, name: str, keys: list[str]) -> Body:
        """Fake keys, each kind of value a reference may find: a key, an empty value, white
        space only (both count as missing), and a key wrapped in white space."""
        data = {}
        for key in keys:
            if key == "empty":
                data[key] = ""
            elif key == "blank":
                data[key] = " \n\t"
            else:
                value = f"sk-fuzz-{key}-{uuid.uuid4().hex}"
                self.key_material.append(value)
                data[key] = f"\n  {value}\n" if key == "padded" else value
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": self.namespaces[namespace]},
            "stringData": data,
        }

    def set_up(self) -> None:
        """The namespaces with their labels and Secrets, and the canaries' Secret."""
        for role, labels in NAMESPACE_LABELS.items():
            metadata = {"name": self.namespaces[role], "labels": {**labels, FUZZ_LABEL: self.run}}
            self.cluster.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": metadata})
            self.labels[role] = dict(labels)
            for name, keys in SECRETS.items():
                self.cluster.apply(self.secret(role, name, list(keys)))
        for name, keys in TEAM_A_SECRETS.items():
            self.team_a_secrets.append(self.secret(TEAM_A, name, list(keys)))
        self.cluster.apply(*self.team_a_secrets)
        canary_secret = self.secret(GATEWAYS, CANARY_SECRET, [])
        canary_secret["stringData"] = {"api-key": self.fake.api_key}
        self.cluster.apply(canary_secret)

    def arrange(self, batch: Batch) -> None:
        """TEAM_B's labels and TEAM_A's extra Secret as the batch has them."""
        labels = TEAM_B_LABELS[batch.team_b_labels]
        if labels != self.labels[TEAM_B]:
            changes = [f"{k}={v}" for k, v in labels.items()]
            changes += [f"{k}-" for k in self.labels[TEAM_B] if k not in labels]
            self.cluster.kubectl(
                "label", "namespace", self.namespaces[TEAM_B], "--overwrite", *changes
            )
            self.labels[TEAM_B] = dict(labels)
        if batch.team_a_secrets != self.team_a_secrets_exist:
            if batch.team_a_secrets:
                self.cluster.apply(*self.team_a_secrets)
            else:
                for secret in self.team_a_secrets:
                    self.cluster.delete(
                        "secrets", secret["metadata"]["name"], self.namespaces[TEAM_A]
                    )
            self.team_a_secrets_exist = batch.team_a_secrets

    def facts(self) -> World:
        """The namespaces' labels, and which Secret keys resolve, as they stand."""
        labels = {
            self.namespaces[role]: {
                **found,
                FUZZ_LABEL: self.run,
                "kubernetes.io/metadata.name": self.namespaces[role],
            }
            for role, found in self.labels.items()
        }
        secrets: dict[Key, dict[str, bool]] = {}
        for namespace in labels:
            for name, keys in SECRETS.items():
                secrets[(namespace, name)] = dict(keys)
        if self.team_a_secrets_exist:
            for name, keys in TEAM_A_SECRETS.items():
                secrets[(self.namespaces[TEAM_A], name)] = dict(keys)
        secrets[(self.namespaces[GATEWAYS], CANARY_SECRET)] = {"api-key": True}
        return World(labels, secrets)

    # --- a round

    def play(self, batch: Batch) -> None:
        started = time.monotonic()
        self.arrange(batch)
        world = self.facts()
        self.tally.rounds += 1
        weight = self.tally.rounds % 1000 + 1
        fuzzed = [self.document("ModelGateway", GATEWAYS, g.name, g.spec) for g in batch.gateways]
        fuzzed += [
            self.document("ModelEndpoint", e.namespace, e.name, e.spec) for e in batch.endpoints
        ]
        canaries = [self.canary(g.name, weight) for g in batch.gateways]
        admitted, refusals = self.apply(fuzzed + canaries)
        unadmitted_canaries = [c for c in canaries if ref_of(c) not in admitted]
        assert not unadmitted_canaries, f"a canary was refused: {refusals}"
        disagreements = self.compare_with_offline_models(fuzzed, admitted, refusals)
        assert not disagreements, self.report(disagreements, fuzzed)
        self.delete(self.present - admitted)
        self.present = admitted

        applied = time.monotonic()
        endpoints, gateways, verdict = self.settle(world, weight)
        settled = time.monotonic()
        # The statuses waited for are those of the objects present; the passes that take
        # the previous round's deleted endpoints out of xDS may still be on their way.
        deadline = time.monotonic() + XDS_CATCH_UP_SECONDS
        problems = self.check_data_plane(endpoints, gateways, verdict, weight)
        while problems and time.monotonic() < deadline:
            time.sleep(0.5)
            problems = self.check_data_plane(endpoints, gateways, verdict, weight)
        problems += self.check_operator()
        self.tally.phases["apply"] += applied - started
        self.tally.phases["settle"] += settled - applied
        self.tally.slowest_settle = max(self.tally.slowest_settle, settled - applied)
        self.tally.phases["data plane"] += time.monotonic() - settled
        self.tally.seconds += time.monotonic() - started
        for body in endpoints:
            for type_ in ("Accepted", "Ready"):
                condition = conditions_of(body).get(type_, {})
                self.tally.counts[
                    f"endpoint {type_}={condition.get('status')} {condition.get('reason')}"
                ] += 1
        assert not problems, self.report(problems, endpoints + gateways + fuzzed)

    def apply(self, documents: list[Body]) -> tuple[set[Ref], dict[Ref, str]]:
        """Apply every document; returns those the API server admitted, and its message for
        each one it refused. Client-side apply: a server-side apply is sent as YAML, which
        cannot carry every character a JSON string can (C1 controls). It costs a read and a
        write per object, one at a time: two kubectl calls share the list."""

        def kubectl_apply(items: list[Body]) -> tuple[str, str]:
            done = subprocess.run(
                [
                    str(self.cluster.kubectl_path), "--kubeconfig", self.cluster.kubeconfig,
                    "apply", "--validate=false", "-o", "name", "-f", "-",
                ],
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )  # fmt: skip
            return done.stdout, done.stderr

        with ThreadPoolExecutor(max_workers=2) as pool:
            outputs = list(pool.map(kubectl_apply, [documents[0::2], documents[1::2]]))
        stdout = "".join(out for out, _ in outputs)
        stderr = "".join(err for _, err in outputs)
        applied = set(stdout.split())
        admitted: set[Ref] = set()
        refusals: dict[Ref, str] = {}
        lines = stderr.splitlines()
        for document in documents:
            ref = ref_of(document)
            if f"{document['kind'].lower()}.switchyard.dev/{ref[2]}" in applied:
                admitted.add(ref)
                continue
            quoted = (f'"{ref[2]}"', f"/{ref[2]};", f"/{ref[2]},")
            naming = [line for line in lines if any(q in line for q in quoted)]
            assert naming, f"{ref} was neither applied nor refused: {stderr[-3000:]}"
            refusals[ref] = "\n".join(naming)
        for ref, said in refusals.items():
            self.tally.counts[f"{ref[0]} refused at apply"] += 1
            self.tally.counts[f"  refused: {refused_field(said)}"] += 1
        for ref in admitted:
            self.tally.counts[f"{ref[0]} admitted"] += 1
        return admitted, refusals

    def compare_with_offline_models(
        self, documents: list[Body], admitted: set[Ref], refusals: dict[Ref, str]
    ) -> list[str]:
        """The CRD is generated from the pydantic models, whose validators repeat its CEL
        rules for the operator's own reading of each object and for `switchyard plan`. A
        spec the API server admits and the models refuse is a failure: the operator reads it
        as an invalid spec. The other way round (`switchyard plan` passes a file the API
        server refuses) is tallied, with an example, for the summary."""
        problems = []
        for document in documents:
            model = ModelGatewaySpec if document["kind"] == "ModelGateway" else ModelEndpointSpec
            try:
                model.model_validate(document["spec"])
                offline: str | None = None
            except ValidationError as error:
                offline = "; ".join(
                    ".".join(map(str, e["loc"])) + ": " + e["msg"] for e in error.errors()
                )
            ref = ref_of(document)
            if ref in admitted and offline is not None:
                problems.append(
                    f"{ref[0]} {ref[1]}/{ref[2]}: admitted by the API server, refused by the "
                    f"models ({offline}): the operator reads it as an invalid spec"
                )
            elif ref in refusals and offline is None:
                said = refusals[ref]
                what = f"passed offline, refused by the API server: {refused_field(said)}"
                self.tally.counts[what] += 1
                self.tally.examples.setdefault(what, said.splitlines()[0][-300:])
        return problems

    def delete(self, refs: set[Ref]) -> None:
        if not refs:
            return
        documents = [
            {"apiVersion": API_VERSION, "kind": kind, "metadata": {"namespace": ns, "name": name}}
            for kind, ns, name in sorted(refs)
        ]
        self.cluster.kubectl(
            "delete", "--ignore-not-found", "--wait=false", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": documents}),
        )  # fmt: skip

    def listing(self) -> tuple[list[Body], list[Body]]:
        selector = f"{FUZZ_LABEL}={self.run}"
        text = self.cluster.kubectl(
            "get", "modelendpoints,modelgateways", "-A", "-l", selector, "-o", "json"
        )
        found = json.loads(text)["items"]
        endpoints = [item for item in found if item["kind"] == "ModelEndpoint"]
        gateways = [item for item in found if item["kind"] == "ModelGateway"]
        return endpoints, gateways

    def settle(self, world: World, weight: int) -> tuple[list[Body], list[Body], Verdict]:
        """Wait until the operator has reported every object as the rules say; stop at once
        if its log shows trouble (a pass that fails holds up every object of its gateway)."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            trouble = self.log_trouble()
            assert not trouble, "\n".join(trouble)
            endpoints, gateways = self.listing()
            verdict = judge(endpoints, gateways, world)
            verdict.violations += self.canary_violations(endpoints, gateways, world, weight)
            if not verdict.violations:
                return endpoints, gateways, verdict
            if time.monotonic() > deadline:
                raise AssertionError(
                    self.report(
                        [f"not reported within {SETTLE_SECONDS:.0f}s:", *verdict.violations],
                        endpoints + gateways,
                    )
                )
            time.sleep(0.25)

    def canary_violations(
        self, endpoints: list[Body], gateways: list[Body], world: World, weight: int
    ) -> list[str]:
        """Each canary has the round's weight in its spec (so a new generation), and is
        Ready wherever its gateway exists and admits it: the operator kept serving it."""
        problems = []
        by_key = {key_of(g): g for g in gateways}
        namespace = self.namespaces[GATEWAYS]
        for endpoint in endpoints:
            if not endpoint["metadata"]["name"].startswith("canary-"):
                continue
            gateway = by_key.get((namespace, endpoint["spec"]["gatewayRef"]["name"]))
            if gateway is None or not gateway_admits(gateway, namespace, world):
                continue
            ready = conditions_of(endpoint).get("Ready", {})
            if ready.get("status") != "True":
                problems.append(
                    f"canary {namespace}/{endpoint['metadata']['name']} of gateway "
                    f"{gateway['metadata']['name']} is not Ready: {ready.get('reason')} "
                    f"{ready.get('message')}"
                )
        return problems

    def check_data_plane(
        self, endpoints: list[Body], gateways: list[Body], verdict: Verdict, weight: int
    ) -> list[str]:
        """Per gateway: what xDS serves matches what the endpoints report, the canary has
        its new weight, and the real Envoy accepts the whole config."""
        problems = []
        models = {key_of(e): e["spec"]["model"] for e in endpoints}
        configs = {}
        for gateway in gateways:
            namespace, name = key_of(gateway)
            node = f"{namespace}/{name}"
            try:
                credentials = gateway_credentials(self.cluster, namespace, name)
                if credentials is None:
                    problems.append(f"no control-channel certificate for {node}")
                    continue
                resources = envoy_check.fetch_snapshot(self.operator.xds_address, node, credentials)
            except envoy_check.NoSnapshot as missing:
                problems.append(str(missing))
                continue
            expected = {models[k] for k in verdict.attached.get((namespace, name), set())}
            routed, listed = envoy_check.served_models(resources)
            if routed != expected or listed != expected:
                problems.append(
                    f"xDS of {node} routes {sorted(routed)} and lists {sorted(listed)}, but the "
                    f"endpoints served by it are {sorted(expected)}"
                )
            canary = (namespace, canary_name(name))
            if canary in verdict.attached.get((namespace, name), set()):
                shown = envoy_check.locality_weights(resources, cluster_name(canary_model(name)))
                if shown.get(CANARY_BACKEND) != weight:
                    problems.append(
                        f"xDS of {node}: the canary's weight is {shown.get(CANARY_BACKEND)}, "
                        f"not {weight}"
                    )
            configs[node] = envoy_check.static_bootstrap(node, resources)
        directory = self.directory / f"round-{self.tally.rounds}"
        for node, complaint in envoy_check.envoy_verdicts(configs, directory).items():
            problems.append(f"Envoy refuses what xDS serves {node}: {complaint}")
        self.tally.counts["gateway configs validated by Envoy"] += len(configs)
        return problems

    def check_operator(self) -> list[str]:
        """Still running, healthy, and no error in its log since the last round."""
        problems = []
        runner = self.operator.runner
        if runner is None or runner.future.done():
            problems.append("the operator has stopped")
        try:
            url = f"http://{self.operator.metrics_address}/healthz"
            with urllib.request.urlopen(url, timeout=10) as reply:
                if reply.status != 200:
                    problems.append(f"/healthz answers {reply.status}")
        except OSError as error:
            problems.append(f"/healthz does not answer: {error}")
        return problems + self.log_trouble()

    def log_trouble(self) -> list[str]:
        """The operator's log lines since the last call that mean it broke."""
        return [f"operator log: {line[-4000:]}" for line in self.log.take() if TROUBLE.search(line)]

    # --- reporting

    def report(self, problems: list[str], objects: list[Body]) -> str:
        """The problems, then the spec of every object they name."""
        text = "\n".join(problems)
        named = []
        seen = set()
        for body in objects:
            namespace, name = key_of(body)
            if f"{namespace}/{name}" in text and (namespace, name, body["kind"]) not in seen:
                seen.add((namespace, name, body["kind"]))
                spec = json.dumps(body["spec"], ensure_ascii=False)
                named.append(f"{body['kind']} {namespace}/{name}: {spec}")
        return "\n".join([*problems[:40], "", "objects named above:", *named[:40]])

    def leaked_key_material(self) -> list[str]:
        """Key material in the operator's log, or in what the API server shows of the
        fuzzed namespaces besides their Secrets."""
        namespaces = [n for n in self.namespaces.values()
                      if self.cluster.get("namespaces", n, "") is not None]  # fmt: skip
        places = {"operator log": self.operator.log}
        places.update(hygiene.cluster_places(self.cluster, namespaces))
        return hygiene.leaks(places, self.key_material)


def refused_field(message: str) -> str:
    """The first field an API server refusal names, without list indexes."""
    found = re.search(r"\bspec(\.[A-Za-z]+|\[\d+\])*", message)
    return re.sub(r"\[\d+\]", "[]", found[0]) if found else "(no field named)"


def ref_of(document: Body) -> Ref:
    metadata = document["metadata"]
    return (document["kind"], metadata["namespace"], metadata["name"])
