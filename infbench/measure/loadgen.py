"""Was the load generator itself the limit? Locust's CPU, sampled on the run's clock.

Locust runs one gevent loop per process: past one core's worth of work it cannot send faster,
and a closed-loop user then simply sends less, which reads as the server's throughput. On a
2-core machine shared with the server it can also be starved without being busy: it has work
but waits for a core. So each sample reads, for every process of the step's Locust group,

    cpu_s     CPU time used so far (utime + stime, /proc/<pid>/stat)
    wait_s    time spent runnable but waiting for a CPU (/proc/<pid>/schedstat, 2nd field)

and `demand` = (cpu + wait) / wall time is the share of time the process had work to do. A
step is "limited by the load generator" when any Locust process's demand reached LIMIT (90%
of a core) over a window of WINDOW_S: it was busy, or starved, nearly all the time, so the
load it offered is not the load the profile asked for.

One row per process per sample in `step<i>-b<batch>_loadgen.csv`: time, pid, cpu_s, wait_s.
"""

from __future__ import annotations

import contextlib
import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from infbench.measure.base import CsvSampler
from infbench.measure.sampler import cpu_seconds

COLUMNS = ["time", "pid", "cpu_s", "wait_s"]
INTERVAL_S = 0.5
WINDOW_S = 5.0
LIMIT = 0.90  # of one core


def run_delay_s(pid: int) -> float | None:
    """Seconds this process has spent waiting on a run queue (None: not readable here)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def read_cpu(pid: int) -> tuple[float, float | None] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            cpu = cpu_seconds(f.read())
    except (OSError, ValueError, IndexError):
        return None
    return cpu, run_delay_s(pid)


class LoadgenSampler(CsvSampler):
    """Samples the processes `pids()` returns every `interval` s on a daemon thread, until
    stop() or until `alive()` says the group is gone (one last sample first)."""

    final_sample = True
    quiet_open_errors = True  # the step's other files say what went wrong with the folder

    def __init__(self, pids: Callable[[], list[int]], path: Path,
                 alive: Callable[[], bool], interval: float = INTERVAL_S) -> None:
        super().__init__(path, COLUMNS, interval, "infbench-loadgen")
        self.pids = pids
        self.alive = alive

    def done(self) -> bool:
        return not self.alive()

    def sample(self, out: Any) -> bool:
        now = time.time()
        for pid in self.pids():
            got = read_cpu(pid)
            if got is not None:
                cpu, wait = got
                out.writerow([f"{now:.3f}", pid, f"{cpu:.3f}",
                              "" if wait is None else f"{wait:.3f}"])
                self.samples += 1
        return True


def group_pids(leader: int) -> list[int]:
    """The Locust process and its children (`--processes N` forks workers)."""
    try:
        p = psutil.Process(leader)
        return [p.pid, *(c.pid for c in p.children(recursive=True))]
    except psutil.Error:
        return []


def read_samples(path: Path) -> dict[int, list[tuple[float, float, float | None]]]:
    """{pid: [(time, cpu_s, wait_s)]} from a step's loadgen CSV."""
    out: dict[int, list[tuple[float, float, float | None]]] = {}
    if not path.exists():
        return out
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                wait = float(r["wait_s"]) if r.get("wait_s") else None
                out.setdefault(int(r["pid"]), []).append(
                    (float(r["time"]), float(r["cpu_s"]), wait))
    for rows in out.values():
        rows.sort()
    return out


def _rate(rows: list[tuple[float, float, float | None]], a: float, b: float
          ) -> tuple[float, float | None] | None:
    """(cpu share, wait share) of one core between the samples nearest inside [a, b]."""
    inside = [r for r in rows if a - 1e-6 <= r[0] <= b + 1e-6]
    if len(inside) < 2 or inside[-1][0] - inside[0][0] <= 0:
        return None
    (t0, c0, w0), (t1, c1, w1) = inside[0], inside[-1]
    dt = t1 - t0
    wait = (w1 - w0) / dt if w0 is not None and w1 is not None else None
    return (c1 - c0) / dt, wait


def _starts(t0: float, t1: float, window: float, hop: float = 1.0) -> list[float]:
    """Window starts a `hop` apart, each window inside t0..t1 (one window if it is shorter)."""
    n = int(max(0.0, t1 - t0 - window) // hop)
    return [t0 + k * hop for k in range(n + 1)]


def figures(path: Path, t0: float | None, t1: float | None, window: float = WINDOW_S,
            limit: float = LIMIT) -> dict[str, Any] | None:
    """The generator's CPU over a step's load (t0..t1): mean and busiest-window CPU and demand
    of its busiest process, and whether it was the limit (and how: busy or starved); and
    `total_cpu_pct`, the mean CPU of all its processes together, the figure to set beside the
    server's own CPU (also summed over processes, % of one core)."""
    per = read_samples(path)
    if not per or t0 is None or t1 is None or t1 <= t0:
        return None
    best: dict[str, Any] | None = None
    total = 0.0
    for pid, rows in per.items():
        whole = _rate(rows, t0, t1)
        if whole is None:
            continue
        total += whole[0]
        peak_cpu, peak_demand = 0.0, 0.0
        for a in _starts(t0, t1, window):
            r = _rate(rows, a, min(a + window, t1))
            if r is not None:
                peak_cpu = max(peak_cpu, r[0])
                peak_demand = max(peak_demand, r[0] + (r[1] or 0.0))
        cpu, wait = whole
        row = {"pid": pid, "cpu_pct": round(100 * cpu, 1),
               "wait_pct": None if wait is None else round(100 * wait, 1),
               "demand_pct": round(100 * (cpu + (wait or 0.0)), 1),
               "peak_cpu_pct": round(100 * peak_cpu, 1),
               "peak_demand_pct": round(100 * peak_demand, 1)}
        if best is None or row["peak_demand_pct"] > best["peak_demand_pct"]:
            best = row
    if best is None:
        return None
    limited = best["peak_demand_pct"] >= 100 * limit
    how = None
    if limited:
        how = "busy" if best["peak_cpu_pct"] >= 100 * limit else "starved"
    return {**best, "processes": len(per), "total_cpu_pct": round(100 * total, 1),
            "window_s": window, "limit_pct": 100 * limit,
            "limited": limited, "how": how,
            "note": _note(best, how, window) if limited else ""}


def _note(row: dict[str, Any], how: str | None, window: float) -> str:
    verb = "used" if how == "busy" else "had work for"
    tail = " (waiting for a CPU most of it)" if how == "starved" else ""
    return (f"limited by the load generator: Locust {verb} {row['peak_demand_pct']:.0f}% of a "
            f"core over {window:g} s{tail}")
