"""A distributed step: Locust's own master/worker engine, and what the harness makes of it.

With a profile's `load_processes = N` above 1 (or `load_external_workers`), a step runs one
headless Locust master (`--master --expect-workers W`, the CSV and HTML writer, no users of its
own) and N local workers (`--worker --master-host 127.0.0.1 --master-port P`), each in its own
process group. W = N + the external workers, started by hand from the script this module
writes (`<step>_worker<k>.sh`), possibly on another machine.

Locust splits a closed loop's users across the workers itself. The open loop is split here:
each worker k of W gets `rate / W` requests/s and its own seed (a Poisson process split in W
independent ones of rate/W is again Poisson of the whole rate); a `constant` schedule's worker
k starts k / rate seconds late, so W workers interleave into one schedule of the whole rate
rather than W bursts at once.

Each worker writes its own counters (`<step>_w<k>_counts.json`) and request log
(`<step>_w<k>_requests.csv`); the master its own counters (`<step>_master_counts.json`: the
step's clock, test_start and test_stopping). The step's `_counts.json` and `_requests.csv`
are the merge: counters summed, request logs concatenated in time order, so percentiles
are computed from every sample, never averaged across workers.

`until_stable` in a distributed step: each worker sends the master what finished (t_end,
latency, ok) once a second, a Locust custom message; the master applies the stability rule to
those rows, the windows a few seconds late, and quits the step as a lone process would.
"""

from __future__ import annotations

import csv
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from infbench.analysis.stability import percentile, read_requests
from infbench.config.schedule import step_seed
from infbench.paths import ROOT

SUMMED = ("started", "finished", "failed")
OPEN_LOOP_SUMMED = ("scheduled", "sent", "cap_hits", "cap_wait_s", "not_sent", "retried", "rate")
OPEN_LOOP_MAX = ("in_flight_max",)


def part_paths(out_dir: Path, name: str, k: int) -> tuple[Path, Path]:
    """Worker k's counters and request log (k from 1)."""
    return out_dir / f"{name}_w{k}_counts.json", out_dir / f"{name}_w{k}_requests.csv"


def worker_env(base: dict[str, str], k: int, workers: int, rate: float, arrival: str,
               seed: int, index: int, counts: Path, requests: Path) -> dict[str, str]:
    """Worker k's (of `workers`) environment: its share of an open-loop rate, its own seed
    and phase, its own files. Stability is not judged by a worker (it sees a share only): in
    an until_stable step it sends its rows to the master, which judges them all."""
    env = dict(base)
    forward = base.get("INFBENCH_UNTIL_STABLE") == "1"
    env.update({"INFBENCH_COUNTS": str(counts), "INFBENCH_REQUEST_LOG": str(requests),
                "INFBENCH_UNTIL_STABLE": "0", "INFBENCH_STABLE_FORWARD": "1" if forward else "0"})
    if rate > 0:
        env["INFBENCH_RATE"] = f"{rate / workers:g}"
        env["INFBENCH_ARRIVAL_SEED"] = str(step_seed(seed, index) * 1_000 + k)
        if arrival == "constant":
            env["INFBENCH_ARRIVAL_OFFSET_S"] = f"{(k - 1) / rate:.9f}"
    return env


def worker_argv(locustfile: Path, master_host: str, port: int,
                python: str = sys.executable) -> list[str]:
    return [python, "-m", "locust", "-f", str(locustfile), "--worker",
            "--master-host", master_host, "--master-port", str(port), "--loglevel", "WARNING"]


def write_worker_script(path: Path, env: dict[str, str], locustfile: Path, port: int) -> None:
    """A shell script that starts one external worker: `sh <script> [master-host]` (default
    127.0.0.1), from this checkout or one at the same path on another machine."""
    ours = {k: v for k, v in sorted(env.items())
            if k.startswith("INFBENCH_") or k == "PYTHONUNBUFFERED"}
    lines = ["#!/bin/sh",
             "# One Locust worker of this step (infbench: docs/load.md). Run it as",
             "#   sh " + path.name + " [master-host]",
             "# on this machine or another with the same checkout, images and Python at these",
             "# paths; the harness's master waits for it.",
             "set -e", f"cd {shlex.quote(str(ROOT))}"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in ours.items()]
    argv = worker_argv(locustfile, "MASTER", port)
    cmd = " ".join(shlex.quote(a) for a in argv).replace("MASTER", '"${1:-127.0.0.1}"')
    lines.append(f"exec {cmd}")
    path.write_text("\n".join(lines) + "\n")


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def merge_counts(master: dict[str, Any] | None, parts: list[dict[str, Any] | None]
                 ) -> dict[str, Any]:
    """One step's counters from the master's (its clock) and each worker's (summed); {} while
    nothing is written yet. `workers` lists each part's own figures; `parts_missing` the
    workers whose counters were never found."""
    found = [p for p in parts if p]
    if not master and not found:
        return {}
    out: dict[str, Any] = dict(master or found[0])
    for key in SUMMED:
        out[key] = sum(int(p.get(key, 0)) for p in found)
    ols = [p["open_loop"] for p in found if isinstance(p.get("open_loop"), dict)]
    if ols:
        ol = dict(ols[0])
        for key in OPEN_LOOP_SUMMED:
            ol[key] = sum(o.get(key) or 0 for o in ols)
        for key in OPEN_LOOP_MAX:
            ol[key] = max(o.get(key) or 0 for o in ols)
        starts = [o["schedule_start"] for o in ols if o.get("schedule_start")]
        ol["schedule_start"] = min(starts) if starts else None
        ol["seeds"] = [o.get("seed") for o in ols]  # "seed": the first worker's
        out["open_loop"] = ol
    if not out.get("test_start"):
        starts = [p["test_start"] for p in found if p.get("test_start")]
        out["test_start"] = min(starts) if starts else None
    out["workers"] = [
        None if p is None else {k: p.get(k) for k in (*SUMMED, "test_start", "test_stopping")}
        for p in parts]
    out["parts_missing"] = [k + 1 for k, p in enumerate(parts) if not p]
    return out


def merge_requests(paths: list[Path], out: Path) -> tuple[int, list[int]]:
    """Every worker's request log into one, in time order: (rows, the workers without a log)."""
    rows, missing = [], []
    for k, p in enumerate(paths, start=1):
        got = read_requests(p)
        if got is None:
            missing.append(k)
        else:
            rows.extend(got)
    rows.sort(key=lambda r: r.t_end)
    tmp = out.with_name(out.name + ".tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_end", "latency_ms", "ok", "lag_ms", "name"])
        for r in rows:
            w.writerow([f"{r.t_end:.4f}", f"{r.latency_ms:.3f}", 1 if r.ok else 0,
                        "" if r.lag_ms is None else f"{r.lag_ms:.3f}", r.name])
    tmp.replace(out)
    return len(rows), missing


def lag_figures(path: Path) -> dict[str, Any] | None:
    """The open loop's send lag over the merged log (what one process writes for itself)."""
    lags = [r.lag_ms for r in read_requests(path) or [] if r.lag_ms is not None]
    if not lags:
        return None
    return {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": max(lags),
            "requests": len(lags)}
