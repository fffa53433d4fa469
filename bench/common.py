"""What every benchmark shares: where results go, summary statistics, the machine, and real
processes (the local control plane, the operator as users run it) to measure."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "hack", ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import localcluster  # noqa: E402
from gatewaylab import wait_for_port  # noqa: E402
from pins import CACHE_ROOT  # noqa: E402
from ports import free_port  # noqa: E402
from tests_support.cluster import Cluster  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PLOTS = ROOT / "bench" / "plots"
WORK = CACHE_ROOT / "bench"
SWITCHYARD = shutil.which("switchyard", path=str(Path(sys.executable).parent)) or "switchyard"


# --- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank: a value that was actually observed."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median and range of one figure over repeated runs."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": len(values),
    }


# --- results


def save(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())[1])  # type: ignore[index]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# --- processes


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of one live process, in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status)[1]) / 1024  # type: ignore[index]


def tree_pids(pid: int) -> list[int]:
    """A process and all its descendants."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    found = [pid]
    if children.exists():
        for child in children.read_text().split():
            found += tree_pids(int(child))
    return found


def rss_mb(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue
        match = re.search(r"VmRSS:\s+(\d+)", status)
        total += int(match[1]) if match else 0
    return total / 1024


@contextmanager
def control_plane(name: str = "control-plane") -> Iterator[Cluster]:
    """The cluster KUBECONFIG names, or a local control plane of its own (state in WORK/name,
    so that parts run side by side never stop each other's), with the CRDs installed."""
    directory = WORK / name
    existing = os.environ.get("KUBECONFIG")
    if existing:
        kubeconfig = existing
    else:
        localcluster.stop(directory)
        kubeconfig = str(localcluster.start(directory).kubeconfig)
    try:
        cluster = Cluster(localcluster.build() / "kubectl", kubeconfig)
        cluster.install_crds(ROOT / "crds")
        yield cluster
    finally:
        if not existing:
            localcluster.stop(directory)


@dataclass
class OperatorProcess:
    """`switchyard run`, as users run it, in its own process: its memory is its own."""

    kubeconfig: str
    log: Path
    xds_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra_args: Sequence[str] = ()

    def start(self) -> None:
        self.xds_port = self.xds_port or free_port()
        self.metrics_port = self.metrics_port or free_port()
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [
                SWITCHYARD, "run", "--xds-address", f"127.0.0.1:{self.xds_port}",
                "--metrics-port", str(self.metrics_port), *self.extra_args,
            ],
            # The control channel's CA in a namespace every cluster has.
            env={**os.environ, "KUBECONFIG": self.kubeconfig,
                 "SWITCHYARD_CA_SECRET": "default/switchyard-ca"},
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for_port(self.metrics_port, self.process, timeout=60)

    @property
    def xds_address(self) -> str:
        return f"127.0.0.1:{self.xds_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def peak_rss_mb(self) -> float:
        return peak_rss_mb(self.pid)

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.read().decode()  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def metric_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of one series in Prometheus text whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] != name:
            continue
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


# --- report


def fmt(figure: dict[str, float], digits: int = 0, unit: str = "") -> str:
    """`median (min–max)` of a spread()."""
    if figure["runs"] == 1 or figure["min"] == figure["max"]:
        return f"{figure['median']:,.{digits}f}{unit}"
    return (
        f"{figure['median']:,.{digits}f}{unit} "
        f"({figure['min']:,.{digits}f}–{figure['max']:,.{digits}f})"
    )


def target(what: str, measured: str, met: bool) -> dict[str, Any]:
    """One row of BENCHMARKS.md's table of targets."""
    return {"target": what, "measured": measured, "met": met}


def bars(
    filename: str,
    title: str,
    ylabel: str,
    groups: Sequence[str],
    series: dict[str, Sequence[dict[str, float]]],
    log: bool = False,
) -> str:
    """A grouped bar chart of spreads: bar at the median, whisker over min–max. Returns the
    Markdown image link."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    PLOTS.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / max(1, len(series))
    for index, (label, spreads) in enumerate(series.items()):
        positions = [g + (index - (len(series) - 1) / 2) * width for g in range(len(groups))]
        medians = [s["median"] for s in spreads]
        errors = [
            [s["median"] - s["min"] for s in spreads],
            [s["max"] - s["median"] for s in spreads],
        ]
        axes.bar(positions, medians, width, yerr=errors, capsize=3, label=label)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    if log:
        axes.set_yscale("log")
    if len(series) > 1:
        axes.legend()
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(PLOTS / filename)
    plt.close(figure)
    return f"![{title}](bench/plots/{filename})"
