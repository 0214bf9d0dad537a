"""Small synthetic run folders: known samples in, known figures out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

T0 = 1_700_000_000.0

# The model table every integration test's experiments file uses.
TINY_MODEL = """
[models.tiny]
arch = "tiny_cnn"
input_size = 32
classes = 10
seed = 0
"""

LOCUST_HEADER = ("Type,Name,Request Count,Failure Count,Median Response Time,"
                 "Average Response Time,Min Response Time,Max Response Time,"
                 "Average Content Size,Requests/s,Failures/s,50%,66%,75%,80%,90%,95%,98%,99%,"
                 "99.9%,99.99%,100%")


def write_mprof(path: Path, samples: list[tuple[float, float]],
                children: dict[int, list[tuple[float, float]]] | None = None) -> None:
    lines = ["CMDLINE python -m uvicorn servers.app_starlette:app"]
    for t, mb in samples:
        lines.append(f"MEM {mb:.6f} {t:.4f}")
    for idx, series in (children or {}).items():
        for t, mb in series:
            lines.append(f"CHLD {idx} {mb:.6f} {t:.4f}")
    path.write_text("\n".join(lines) + "\n")


def write_locust(path: Path, requests: int, failures: int, rps: float, p50: float,
                 p95: float) -> None:
    agg = (f",Aggregated,{requests},{failures},{p50},{p50 + 5},1,{p95 + 50},100,{rps},0.0,"
           f"{p50},{p50},{p50},{p50},{p95},{p95},{p95},{p95},{p95},{p95},{p95}")
    row = agg.replace(",Aggregated,", "POST,/predict [batch 2],", 1)
    path.write_text("\n".join([LOCUST_HEADER, row, agg]) + "\n")


def phase(kind: str, a: float, b: float, **kw: Any) -> dict[str, Any]:
    return {"kind": kind, **kw, "start": T0 + a, "end": T0 + b}


def make_variant(run_dir: Path, name: str = "v1", status: str = "complete",
                 cut_cooldown: bool = False) -> Path:
    """Baseline 0-10 s at 100 MB, step 1 (batch 2) 10-20 s rising to 150, drain 20-22,
    pause 22-30, step 2 (batch 4) 30-40 rising to 200, drain 40-42, cooldown 42-52 at 180."""
    d = run_dir / name
    d.mkdir(parents=True)
    samples: list[tuple[float, float]] = []
    for i in range(0, 521):  # every 0.1 s for 52 s
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
        samples.append((T0 + t, mb))
    write_mprof(d / "mprofile.dat", samples)
    cooldown = phase("cooldown", 42, 52)
    if cut_cooldown:
        cooldown["cut_short"] = True
    phases = {
        "schema": 1, "variant": name, "status": status, "stopped_in": None, "error": None,
        "server_start": T0 - 5, "healthy": T0 - 0.5, "server_stop": T0 + 53,
        "phases": [
            phase("baseline", 0, 10),
            phase("step", 10, 20, index=1, batch=2, users=4, requests_started=50,
                  requests_finished=48, cut_off=2),
            phase("drain", 20, 22, index=1, batch=2, cut_off=2),
            phase("pause", 22, 30, index=1, batch=2, server_busy_s=1.5),
            phase("step", 30, 40, index=2, batch=4, users=4, requests_started=30,
                  requests_finished=30, cut_off=0),
            phase("drain", 40, 42, index=2, batch=4, cut_off=0),
            cooldown,
        ],
    }
    (d / "phases.json").write_text(json.dumps(phases))
    write_locust(d / "step1-b2_stats.csv", 48, 1, 4.8, 120, 300)
    write_locust(d / "step2-b4_stats.csv", 30, 0, 3.0, 240, 500)
    return d


def make_run(tmp: Path, names: tuple[str, ...] = ("v1", "v2")) -> Path:
    run_dir = tmp / "20260101-000000-smoke-abc123"
    run_dir.mkdir(parents=True)
    for n in names:
        make_variant(run_dir, n)
    (run_dir / "run.json").write_text(json.dumps({
        "schema": 1, "run_id": run_dir.name, "status": "complete", "started": T0,
        "wall_seconds": 60.0, "profile": "smoke", "models": ["tiny"], "runtime": "native",
        "variants": list(names), "results": {n: "complete" for n in names},
        "machine": {"cpus": 2, "cpu": "test", "memory_gib": 24, "python": "3.11"},
        "git": {"revision": None},
    }))
    return run_dir
