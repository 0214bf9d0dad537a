"""The load generator's own load, from a step's `*_loadgen.csv` (infbench/measure/loadgen.py
writes it): the busiest window's CPU share of one core and run-queue wait, and whether it was
the limit of the step rather than the server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infbench.results.samples import loadgen_rows

WINDOW_S = 5.0


LIMIT = 0.90  # of one core
# Starved: waiting for a CPU this share of a core's time, however little work it had. A
# generator niced onto a core beside a CPU hog got 1.5% of a core and waited 87.1% of the
# step, its demand (88.7%) under LIMIT only because it was also blocked on the network the
# rest; free generators waited 0.9% (median) to 17.6% (the most) in 88 steps here.
STARVED = 0.50


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
            limit: float = LIMIT, starved: float = STARVED) -> dict[str, Any] | None:
    """The generator's CPU over a step's load (t0..t1): mean and busiest-window CPU and demand
    of its busiest process, and whether it was the limit (and how: busy, its demand at
    `limit` with its CPU too, or starved: its demand at `limit` mostly waiting, or its wait
    alone at `starved` of a core); and
    `total_cpu_pct`, the mean CPU of all its processes together, the figure to set beside the
    server's own CPU (also summed over processes, % of one core)."""
    per = loadgen_rows(path)
    if not per or t0 is None or t1 is None or t1 <= t0:
        return None
    best: dict[str, Any] | None = None
    every: list[dict[str, Any]] = []
    total = 0.0
    for pid, rows in per.items():
        whole = _rate(rows, t0, t1)
        if whole is None:
            continue
        total += whole[0]
        peak_cpu, peak_demand, peak_wait = 0.0, 0.0, 0.0
        for a in _starts(t0, t1, window):
            r = _rate(rows, a, min(a + window, t1))
            if r is not None:
                peak_cpu = max(peak_cpu, r[0])
                peak_demand = max(peak_demand, r[0] + (r[1] or 0.0))
                peak_wait = max(peak_wait, r[1] or 0.0)
        cpu, wait = whole
        row: dict[str, Any] = {"pid": pid, "cpu_pct": round(100 * cpu, 1),
                               "wait_pct": None if wait is None else round(100 * wait, 1),
                               "demand_pct": round(100 * (cpu + (wait or 0.0)), 1),
                               "peak_cpu_pct": round(100 * peak_cpu, 1),
                               "peak_demand_pct": round(100 * peak_demand, 1),
                               "peak_wait_pct": round(100 * peak_wait, 1)}
        # Each process judged on its own (a distributed step's master and every worker): one
        # saturated worker limits its share of the load however idle the others are.
        row["limited"] = (row["peak_demand_pct"] >= 100 * limit
                          or row["peak_wait_pct"] >= 100 * starved)
        every.append(row)
        if best is None or (row["limited"], row["peak_demand_pct"]) > \
                (best["limited"], best["peak_demand_pct"]):
            best = row
    if best is None:
        return None
    limited = bool(best["limited"])
    how = None
    if limited:
        how = "busy" if best["peak_cpu_pct"] >= 100 * limit else "starved"
    return {**best, "processes": len(per), "total_cpu_pct": round(100 * total, 1),
            "per_process": every, "processes_limited": sum(r["limited"] for r in every),
            "window_s": window, "limit_pct": 100 * limit, "starved_pct": 100 * starved,
            "limited": limited, "how": how,
            "note": _note(best, how, window, len(per)) if limited else ""}


def _note(row: dict[str, Any], how: str | None, window: float, processes: int = 1) -> str:
    who = f"Locust (pid {row['pid']}, one of {processes} processes)" if processes > 1 \
        else "Locust"
    if how == "busy":
        return (f"limited by the load generator: {who} used {row['peak_demand_pct']:.0f}% of "
                f"a core over {window:g} s")
    return (f"limited by the load generator: {who} had work for {row['peak_demand_pct']:.0f}% "
            f"of a core over {window:g} s and waited for a CPU {row['peak_wait_pct']:.0f}% of "
            f"those {window:g} s (starved)")
