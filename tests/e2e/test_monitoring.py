"""A real Prometheus scrapes the running operator while a fake provider fails and recovers:
alerts fire and resolve, and every dashboard panel's query returns data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from gatewaylab import CLIENT_KEY, chat, send_sync, wait_for_port
from ports import free_port
from tests_support.cluster import eventually

from .conftest import Lab

pytestmark = pytest.mark.e2e

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
FAST_PROBES = {"interval": "1s", "timeout": "500ms", "unhealthyThreshold": 2, "healthyThreshold": 2}
PRICING = {"currency": "USD", "inputPerMillion": "1", "outputPerMillion": "2"}
MESSAGES: Any = [{"role": "user", "content": "Say hello."}]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as reply:
            body = json.loads(reply.read())
        assert body["status"] == "success", body
        return body["data"]

    def firing(self, alert: str, **labels: str) -> bool:
        return any(
            a["labels"]["alertname"] == alert
            and a["state"] == "firing"
            and all(a["labels"].get(k) == v for k, v in labels.items())
            for a in self.get("/api/v1/alerts")["alerts"]
        )


@pytest.fixture(scope="module")
def prometheus(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    directory = tmp_path_factory.mktemp("prometheus")
    # The shipped rules, with their `for:` cut to seconds and their windows shortened, so the
    # test need not wait minutes.
    rules = yaml.safe_load((MONITORING / "switchyard-rules.yaml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "2s"
            rule["expr"] = rule["expr"].replace("[10m]", "[1m]").replace("[5m]", "[30s]")
    (directory / "rules.yaml").write_text(yaml.safe_dump(rules))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(directory / "rules.yaml")],
        "scrape_configs": [
            {
                "job_name": "switchyard",
                "static_configs": [{"targets": [lab.operator.metrics_address]}],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [
            binary, f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn",
        ],
        stdout=(directory / "prometheus.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, process)
        yield Prometheus(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_alerts_fire_and_resolve_and_every_panel_has_data(lab: Lab, prometheus: Prometheus) -> None:
    model = "monitored"
    priced = {**lab.backend("local-a"), "pricing": PRICING}
    lab.serve(model, [priced, lab.backend("local-c")], healthCheck=FAST_PROBES)
    # A streamed answer, for the time-to-first-token panel.
    sdk = openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=CLIENT_KEY, max_retries=0)
    list(sdk.chat.completions.create(model=model, messages=MESSAGES, stream=True))
    selector = {"namespace": lab.namespace, "endpoint": model, "backend": "local-c"}
    eventually(
        lambda: prometheus.get("/api/v1/query", query="switchyard_backend_up")["result"],
        timeout=20,
    )
    broken = lab.fakes["local-c"]
    broken.fault(status=503)
    try:
        eventually(lambda: prometheus.firing("BackendDown", **selector), timeout=20)
        eventually(lambda: prometheus.firing("FailoverActive", **selector), timeout=20)
        assert send_sync(lab.url, chat(model), 20, 2).failed == 0
    finally:
        broken.heal()
    eventually(lambda: not prometheus.firing("BackendDown", **selector), timeout=20)
    assert not prometheus.firing("OperatorDown")
    # A client that spends its tokens faster than its limit allows, until refused: the
    # limit rows' panels and the near-its-limit alert.
    key = lab.new_client(name="near-limit", limits={"tokensPerMinute": 60})
    limited = openai.OpenAI(base_url=f"{lab.envoy.url}/v1", api_key=key, max_retries=0)

    def refused() -> bool:
        try:
            limited.chat.completions.create(model=model, messages=MESSAGES)
        except openai.RateLimitError:
            return True
        return False

    # Apart, so that the scrapes see the client's tokens grow (a series that appears with
    # its last value shows no rate).
    eventually(refused, timeout=30, interval=1.5)
    client = f"{lab.namespace}/near-limit"
    eventually(lambda: prometheus.firing("ClientNearTokenLimit", client=client), timeout=30)

    dashboard = json.loads((MONITORING / "grafana" / "switchyard-dashboard.json").read_text())
    queries = {
        f"{panel['title']}: {target['expr']}": re.sub(
            r"\$(namespace|endpoint)", ".*", target["expr"]
        )
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }

    def empty() -> list[str]:
        """The queries without data yet: a rate needs two scrapes of a series that has only
        just appeared (the refusal's counter, say)."""
        return [
            k for k, q in queries.items() if not prometheus.get("/api/v1/query", query=q)["result"]
        ]

    try:
        eventually(lambda: not empty(), timeout=10)
    except AssertionError:
        raise AssertionError("dashboard queries without data:\n" + "\n".join(empty())) from None


def test_operator_down_fires_while_it_is_away(lab: Lab, prometheus: Prometheus) -> None:
    eventually(
        lambda: prometheus.get("/api/v1/query", query='up{job="switchyard"} == 1')["result"],
        timeout=20,
    )
    lab.operator.stop()
    try:
        eventually(lambda: prometheus.firing("OperatorDown"), timeout=20)
    finally:
        lab.operator.start()
    eventually(lambda: not prometheus.firing("OperatorDown"), timeout=30)
