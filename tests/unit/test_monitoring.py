"""The alert rules (promtool) and the Grafana dashboard, checked against what we export."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

import switchyard.metrics

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana" / "switchyard-dashboard.json"
REQUIRED_ALERTS = {
    "BackendDown", "EndpointHasNoHealthyBackend", "FailoverActive", "CredentialsInvalid",
    "BackendRateLimited", "XdsConfigRejected", "OperatorDown", "TimeToFirstTokenHigh",
    "ClientNearTokenLimit",
}  # fmt: skip


def promtool(*args: str) -> str:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: `make test` installs Debian's prometheus package"
    done = subprocess.run([binary, *args], capture_output=True, text=True, cwd=MONITORING)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_rules_are_valid_and_pass_their_unit_tests() -> None:
    assert "SUCCESS: 12 rules found" in promtool("check", "rules", "switchyard-rules.yaml")
    assert "SUCCESS" in promtool("test", "rules", "tests/switchyard-rules.test.yaml")


def test_every_required_alert_exists_with_a_runbook() -> None:
    import yaml

    rules = yaml.safe_load((MONITORING / "switchyard-rules.yaml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"] if "alert" in r}
    assert set(alerts) >= REQUIRED_ALERTS
    for name, rule in alerts.items():
        assert rule["annotations"].get("runbook"), f"{name} has no runbook"


def exported_names() -> set[str]:
    """Every sample name the operator's series produce, children or not."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    names: set[str] = set()
    for metric in vars(switchyard.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            names.update(metric._name + suffix for suffix in suffixes[str(metric._type)])
        elif isinstance(metric, switchyard.metrics.BackendSeries | switchyard.metrics.AnswerSeries):
            for family in metric.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
    return names


@pytest.mark.parametrize(
    "title",
    [
        "Traffic split per endpoint",
        "Backend health",
        "Probe latency (p95)",
        "Failovers",
        "Credential problems",
        "Limit hits by client",
        "Tokens per minute against the limit",
    ],
)
def test_the_dashboard_has_the_panel(title: str) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panel = next((p for p in dashboard["panels"] if p["title"] == title), None)
    assert panel is not None, f"no panel {title!r}"
    assert panel["targets"]
    assert all(t["expr"] for t in panel["targets"])


def test_dashboard_queries_use_only_series_the_operator_exports() -> None:
    import yaml

    dashboard = json.loads(DASHBOARD.read_text())
    rules = yaml.safe_load((MONITORING / "switchyard-rules.yaml").read_text())
    recorded = {r["record"] for group in rules["groups"] for r in group["rules"] if "record" in r}
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    # Recording rules' series (level:metric:operation) come from the rules file.
    named = {name for expr in exprs for name in re.findall(r"\w+:\w+:\w+", expr)}
    assert named <= recorded, f"the dashboard queries rules nobody records: {named - recorded}"
    used = {
        name
        for expr in exprs
        for name in re.findall(r"(?:switchyard|gen_ai)_[a-z_]+", re.sub(r"\w+:\w+:\w+", "", expr))
        if name not in [*switchyard.metrics.ANSWER_LABELS, "gen_ai_token_type"]
    }
    # Histograms and counters are exported with their _bucket/_count/_total samples.
    missing = {name for name in used if name not in exported_names()}
    assert not missing, f"the dashboard queries series nobody exports: {missing}"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_backend_series_are_exported_as_they_become_known_and_go_with_the_backend() -> None:
    series = switchyard.metrics.BackendSeries()
    registry = CollectorRegistry()
    registry.register(series)
    labels = ("team-a", "chat", "openai", "OpenAI", "gw-ns/gw")
    names = dict(zip(switchyard.metrics.BACKEND_LABELS, labels, strict=True))

    def failovers(reason: str) -> float | None:
        return registry.get_sample_value("switchyard_failovers_total", {**names, "reason": reason})

    values = series.of(labels)
    # Failover counters exist from 0; nothing else is known before a probe or a plan.
    assert failovers("Unhealthy") == 0
    assert registry.get_sample_value("switchyard_backend_up", names) is None

    values.up, values.traffic_share = 1, 0.25
    values.observe_probe(0.04)
    values.observe_probe(3.0)
    values.failed_over("RateLimited")
    assert registry.get_sample_value("switchyard_backend_up", names) == 1
    assert registry.get_sample_value("switchyard_backend_traffic_share_ratio", names) == 0.25
    bucket = "switchyard_backend_probe_duration_seconds_bucket"
    assert registry.get_sample_value(bucket, {**names, "le": "0.05"}) == 1
    assert registry.get_sample_value(bucket, {**names, "le": "5"}) == 2
    assert registry.get_sample_value(bucket, {**names, "le": "+Inf"}) == 2
    assert registry.get_sample_value("switchyard_backend_probe_duration_seconds_sum", names) == 3.04
    assert failovers("RateLimited") == 1

    series.forget(labels)
    assert failovers("RateLimited") is None
