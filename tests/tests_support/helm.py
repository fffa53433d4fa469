"""Helm, built from its Go module at the pinned release, as users run it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import localcluster

CHART = Path(__file__).resolve().parents[2] / "charts" / "switchyard"


def helm(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(localcluster.build_helm()), *args], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert done.returncode == 0, done.stdout + done.stderr
    return done
