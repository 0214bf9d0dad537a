"""What the probes cost: requests/s and p50 latency with and without them, from one run.

    python -m infbench overhead [RUN]      (make bench-probes runs the study, then this)

The run's variants are split by their manifest's `probes` flag; each step's figures are
averaged within each side and compared as probes / without. The sampler runs in both, so
this is the probes' own cost; the sampler's CPU time is printed beside it. One run on a
shared machine: read the spread between the repeated pairs before the ratio.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from infbench.report import tables
from infbench.results import store


def _load(run_dir: Path) -> list[tuple[bool, dict[str, Any]]]:
    out = []
    for vd in store.variant_dirs(run_dir):
        manifest = json.loads((vd / "manifest.json").read_text())
        summary = json.loads((vd / "summary.json").read_text())
        variant = manifest["config"]["variant"]
        # A topology's manifest has the flag per service; a flat (older) one on the variant.
        probed = variant.get("probes") or any(s.get("probes") for s in variant.get("services", []))
        out.append((bool(probed), summary))
    return out


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.3f}"


def table(run_dir: Path) -> list[str]:
    variants = _load(run_dir)
    sides = {True: [s for p, s in variants if p], False: [s for p, s in variants if not p]}
    if not sides[True] or not sides[False]:
        raise SystemExit(f"{run_dir}: needs variants with and without probes (this run has "
                         f"{len(sides[True])} with, {len(sides[False])} without)")
    lines = [f"run {run_dir.name}: {len(sides[False])} variant(s) without probes "
             f"({', '.join(s['variant'] for s in sides[False])}), {len(sides[True])} with "
             f"({', '.join(s['variant'] for s in sides[True])})", "",
             "| step | img/req | req/s without | req/s with | ratio | p50 ms without | "
             "p50 ms with | ratio | req/s of each variant |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    indexes = sorted({st["index"] for s in sides[False] for st in s["steps"]})
    for i in indexes:
        fig: dict[bool, dict[str, float | None]] = {}
        each = []
        for side, rows in sides.items():
            steps = [st for s in rows for st in s["steps"] if st["index"] == i]
            fig[side] = {"rps": _mean([st["rps"] for st in steps if st["rps"] is not None]),
                         "p50": _mean([st["p50_ms"] for st in steps
                                       if st["p50_ms"] is not None])}
            each += [f"{s['variant']} {st['rps']}" for s in rows for st in s["steps"]
                     if st["index"] == i]
        batch = next(st["batch"] for s in sides[False] for st in s["steps"] if st["index"] == i)
        lines.append(f"| {i} | {batch} | {tables.fmt(fig[False]['rps'], 2)} | "
                     f"{tables.fmt(fig[True]['rps'], 2)} | "
                     f"{_ratio(fig[True]['rps'], fig[False]['rps'])} | "
                     f"{tables.fmt(fig[False]['p50'])} | {tables.fmt(fig[True]['p50'])} | "
                     f"{_ratio(fig[True]['p50'], fig[False]['p50'])} | {'; '.join(each)} |")
    cpu = [f"{s['variant']} {s['processes_mb'].get('sampler_cpu_s')} s"
           for _, s in variants if s.get("processes_mb")]
    lines += ["", f"sampler CPU time (both sides): {', '.join(cpu)}"]
    return lines

