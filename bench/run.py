"""`make bench`: every benchmark in one run, then BENCHMARKS.md and its plots.

Each part saves its figures in bench/results/<part>.json; `--report` rewrites BENCHMARKS.md
from those without measuring again.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import common
import controlplane
import dataplane
import failover
import limits

PARTS: dict[str, ModuleType] = {
    "controlplane": controlplane,
    "dataplane": dataplane,
    "failover": failover,
    "limits": limits,
}

HEADER = """# Benchmarks

Written by `make bench` ({elapsed}; `make bench ONLY=<part>` reruns one part); every figure
below comes from a run on the machine described here, and is rewritten by the next. Each part
runs its measurements several times and shows the median with the range (min–max) over the
runs. The machine is shared, so absolute figures move from run to run: where a peer exists it
is measured in the same run, interleaved, and the comparison is a ratio.

Machine: {cpu}, {cores} cores, {memory_gib} GiB, Linux {kernel}, Python {python}. Measured:
{dates}.

## Targets

| Target | Measured | Met |
|---|---|---|
{targets}

"""


def report() -> str:
    parts = {name: common.load(name) for name in PARTS}
    present = {name: data for name, data in parts.items() if data is not None}
    rows = [
        f"| {t['target']} | {t['measured']} | {'yes' if t['met'] else '**no**'} |"
        for name, data in present.items()
        for t in PARTS[name].targets(data)
    ]
    elapsed = sum(data.get("elapsed_s", 0) for data in present.values())
    machine = next(iter(present.values()))["machine"] if present else common.machine()
    machine = {k: v for k, v in machine.items() if k != "date"}
    dates = "; ".join(f"{name} {data['machine']['date']}" for name, data in present.items())
    text = HEADER.format(
        elapsed=f"{elapsed / 60:.0f} minutes of measuring",
        dates=dates,
        targets="\n".join(rows),
        **machine,
    )
    for name, data in present.items():
        text += PARTS[name].section(data).strip() + "\n\n"
    path = common.ROOT / "BENCHMARKS.md"
    path.write_text(text.rstrip() + "\n")
    return str(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small scales and short runs")
    parser.add_argument("--only", action="append", choices=list(PARTS), help="run only this part")
    parser.add_argument("--report", action="store_true", help="only rewrite BENCHMARKS.md")
    args = parser.parse_args()
    if not args.report:
        for name in args.only or list(PARTS):
            started = time.monotonic()
            print(f"== {name}", flush=True)
            run: Callable[[bool], dict[str, Any]] = PARTS[name].run
            run(args.quick)
            print(f"== {name} done in {time.monotonic() - started:.0f} s", flush=True)
    print(f"wrote {report()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
