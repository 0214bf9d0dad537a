"""Whole synthetic runs for compare/check/report.html tests: tests/synth.py's variant folders,
with Locust stats history (one row a second, as Locust writes it), chosen throughput, latency
and memory, noise from a fixed seed, and summary.json written by the real analysis."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from infbench import analysis
from infbench.files import write_json
from tests.synth import T0, make_variant, write_locust, write_mprof

HISTORY_HEADER = ("Timestamp,User Count,Type,Name,Requests/s,Failures/s,50%,66%,75%,80%,90%,"
                  "95%,98%,99%,99.9%,99.99%,100%,Total Request Count,Total Failure Count,"
                  "Total Median Response Time,Total Average Response Time,"
                  "Total Min Response Time,Total Max Response Time,Total Average Content Size")
STEPS = ((1, 2, 10.0, 20.0), (2, 4, 30.0, 40.0))  # index, batch, start, end (s after T0)
MACHINE = {"cpus": 2, "cpu": "test", "memory_gib": 24, "python": "3.11"}


def write_history(path: Path, start: float, end: float, rps: float, p50: float, p95: float,
                  rng: random.Random, noise: float) -> tuple[int, float]:
    """Per-second Aggregated rows from `start` to `end`: requests at about `rps` a second and
    latencies about p50/p95, each multiplied by (1 ± noise). Returns (requests, mean rps)."""
    lines = [HISTORY_HEADER,
             f"{int(T0 + start)},0,,Aggregated,0,0" + ",N/A" * 11 + ",0,0,0,0.0,0,0,0"]
    total = 0
    carry = 0.0
    for s in range(int(start) + 1, int(end) + 1):
        carry += rps * (1 + rng.uniform(-noise, noise))
        done = int(carry)
        carry -= done
        total += done
        a = p50 * (1 + rng.uniform(-noise, noise))
        b = p95 * (1 + rng.uniform(-noise, noise))
        pct = ",".join(f"{x:.0f}" for x in (a, a, a, a, b, b, b, b, b, b, b))
        lines.append(f"{int(T0 + s)},4,,Aggregated,{rps:.2f},0,{pct},{total},0,{a:.0f},"
                     f"{a:.1f},1,{b:.0f},100")
    path.write_text("\n".join(lines) + "\n")
    return total, total / (end - start)


def memory(extra_mb: float, rng: random.Random, noise_mb: float) -> list[tuple[float, float]]:
    """synth.make_variant's curve (100 MB at rest, +100 MB by the end of the load, 180 MB in the
    cooldown), with `extra_mb` added from the first step on, and noise."""
    out = []
    for i in range(0, 521):
        t = i / 10
        if t < 10:
            mb = 100.0
        elif t < 20:
            mb = 100 + 5 * (t - 10)
        elif t < 30:
            mb = 150.0
        elif t < 40:
            mb = 150 + 5 * (t - 30)
        elif t <= 42:
            mb = 200.0
        else:
            mb = 180.0
        mb += (extra_mb if t >= 10 else 0.0) + rng.uniform(-noise_mb, noise_mb)
        out.append((T0 + t, mb))
    return out


def make_run(root: Path, name: str, *, seed: int, rps: float = 5.0, p50: float = 200.0,
             p95: float = 400.0, extra_mb: float = 0.0, noise: float = 0.1,
             p50_reported: float | None = None,
             variants: tuple[str, ...] = ("v1",), profile: str = "smoke",
             machine: dict[str, Any] | None = None, models: tuple[str, ...] = ("tiny",),
             run_hash: str = "abc123") -> Path:
    """A finished run with every file compare/check/report read; summary.json by analysis.
    `p50_reported`: the p50 of Locust's *_stats.csv when it should differ from the history's."""
    run_dir = root / f"{name}-{profile}-{run_hash}"
    run_dir.mkdir(parents=True)
    rng = random.Random(seed)
    for v in variants:
        vd = make_variant(run_dir, v)
        write_mprof(vd / "mprofile.dat", memory(extra_mb, rng, 1.0))
        for index, batch, start, end in STEPS:
            total, mean = write_history(vd / f"step{index}-b{batch}_stats_history.csv", start,
                                        end, rps, p50, p95, rng, noise)
            write_locust(vd / f"step{index}-b{batch}_stats.csv", total, 0, round(mean, 2),
                         p50 if p50_reported is None else p50_reported, p95)
        write_json(vd / "summary.json", analysis.summarize_variant(vd))
    (run_dir / "run.json").write_text(json.dumps({
        "schema": 2, "run_id": run_dir.name, "status": "complete", "started": T0,
        "wall_seconds": 60.0, "profile": profile, "models": list(models), "runtime": "native",
        "variants": list(variants), "results": {v: "complete" for v in variants},
        "machine": machine or MACHINE, "git": {"revision": None}, "harness": None,
    }))
    return run_dir
