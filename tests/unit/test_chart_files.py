"""The chart carries copies of the CRDs, rules and dashboard: they must not drift."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "switchyard"


@pytest.mark.parametrize(
    ("copy", "original"),
    [
        *((f"crds/{p.name}", f"crds/{p.name}") for p in sorted((ROOT / "crds").iterdir())),
        ("files/switchyard-rules.yaml", "monitoring/switchyard-rules.yaml"),
        ("files/switchyard-dashboard.json", "monitoring/grafana/switchyard-dashboard.json"),
    ],
)
def test_the_chart_copy_matches(copy: str, original: str) -> None:
    assert (CHART / copy).read_text() == (ROOT / original).read_text(), (
        f"charts/switchyard/{copy} differs from {original}: copy it again"
    )


def test_the_chart_has_no_stray_crds() -> None:
    assert sorted(p.name for p in (CHART / "crds").iterdir()) == sorted(
        p.name for p in (ROOT / "crds").iterdir()
    )
