"""The fuzz world of a session: namespaces with Secrets, a healthy fake provider for the
canaries, and the operator under KopfRunner with fixed xDS and metrics ports (the suite
reads the xDS snapshots and /healthz)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator

import pytest

from fuzz.strategies import MISSING_NAMESPACE, NAMESPACE_LABELS
from fuzz.world import FuzzWorld, LogWatch
from gatewaylab import FakeProcess
from ports import free_port
from tests_support.cluster import Cluster
from tests_support.scenario import Operator

SUMMARIES: list[str] = []


@pytest.fixture(scope="module")
def fuzz_world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzWorld]:
    # A letter first: a label value such as 123e45, unquoted in YAML, reads as a number.
    run = "r" + uuid.uuid4().hex[:5]
    namespaces = {role: f"fz-{role.lstrip('@')}-{run}" for role in NAMESPACE_LABELS}
    namespaces[MISSING_NAMESPACE] = f"fz-missing-{run}"
    fake = FakeProcess("OpenAICompatible", f"sk-fuzz-canary-{uuid.uuid4().hex}", "llama")
    log = LogWatch()
    logging.getLogger().addHandler(log)
    operator = Operator(
        xds_address=f"127.0.0.1:{free_port()}", metrics_address=f"127.0.0.1:{free_port()}"
    )
    world = FuzzWorld(
        cluster=cluster,
        operator=operator,
        run=run,
        namespaces=namespaces,
        fake=fake,
        directory=tmp_path_factory.mktemp("fuzz"),
        log=log,
        key_material=[fake.api_key],
    )
    try:
        world.set_up()
        operator.start()
        yield world
        SUMMARIES.append(world.tally.summary())
    finally:
        try:
            operator.stop()
        finally:
            logging.getLogger().removeHandler(log)
            fake.stop()
            for role in NAMESPACE_LABELS:
                cluster.kubectl(
                    "delete", "namespace", namespaces[role], "--wait=false", "--ignore-not-found"
                )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for summary in SUMMARIES:
        terminalreporter.write_sep("-", "fuzz summary")
        terminalreporter.write_line(summary)
