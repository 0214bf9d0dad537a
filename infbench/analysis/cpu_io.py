"""CPU or IO bound, per request: what each service spent on a core, waiting for one, and off one.

Per service and per step (the step's load, start to the end of its drain), from the files:

    cpu_ms_per_request      CPU (user + system) of the service's processes over the step
                            (processes.csv `cpu_s`, last sample minus first, per process, summed)
                            / the requests Locust counted in the step (answered or failed: a
                            failed request costs CPU too), in ms
    run_wait_ms_per_request the same for the time its threads were runnable but waiting for a
                            core (processes.csv `run_wait_s`, from schedstat), in ms; None for a
                            processes.csv from before the column
    main_thread_cpu_ms_per_request
                            the same for the CPU of each process's main thread (processes.csv
                            `main_cpu_s`, schedstat): an asyncio server's event loop (HTTP,
                            parsing, the app's coroutines, the answers); None for a
                            processes.csv from before the column
    wait_share              run-queue wait / (CPU + run-queue wait): of the time the service had
                            work, the share it waited for a core. High on a machine whose cores
                            are all busy, whoever is busy
    off_cpu_share           1 - CPU / wall over the request phases whose timing lines say how much
                            CPU the thread that ran them used (`<phase>_cpu_ms` beside
                            `<phase>_ms`: the TF-Serving-compatible server's decode and model);
                            summed over the step's lines, so long requests weigh more. Clamped
                            to [0, 1] (thread CPU and wall are read by two clocks). None ("not
                            measured") when the service writes no such field: a phase that
                            yields (an await) would count other requests' CPU, so only phases that
                            run on one thread without yielding are measured
    energy_j_per_request    the machine's energy over the step (powercap, every top-level zone,
                            linearly interpolated at the step's start and end) / requests; None
                            ("not available") where no counter is readable: never estimated

The reading names the larger of on- and off-CPU and, when the service waited for a core a
quarter of its runnable time or more, that the machine's cores are contended.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infbench.results.samples import ENERGY_FILE, energy_rows
from infbench.results.variant import VariantFiles, files_of

CONTENDED = 0.25  # a wait share from which the reading says the cores are contended
NOT_AVAILABLE = "not available"
NOT_MEASURED = "not measured"


def _delta(rows: list[dict[str, Any]], key: str, t0: float, t1: float) -> float | None:
    """Last minus first value of `key` per process over [t0, t1], summed; None when no
    process has two values there."""
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for r in rows:
        if t0 <= r["time"] <= t1 and r.get(key) is not None:
            first.setdefault(r["pid"], r[key])
            last[r["pid"]] = r[key]
    if not last:
        return None
    return sum(max(0.0, last[p] - first[p]) for p in last)


def off_cpu(lines: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any] | None:
    """Off-CPU share over the measured phases of the lines received in [t0, t1]."""
    cpu = wall = 0.0
    phases: set[str] = set()
    counted = 0
    for ln in lines:
        if not t0 <= ln["_t"] <= t1:
            continue
        used = False
        for key, value in ln.items():
            if not key.endswith("_cpu_ms") or not isinstance(value, int | float):
                continue
            phase = key.removesuffix("_cpu_ms")
            spent = ln.get(f"{phase}_ms")
            if isinstance(spent, int | float) and spent > 0:
                cpu += float(value)
                wall += float(spent)
                phases.add(phase)
                used = True
        counted += used
    if wall <= 0:
        return None
    share = min(1.0, max(0.0, 1.0 - cpu / wall))
    return {"share": round(share, 3), "phases": sorted(phases), "lines": counted,
            "cpu_ms": round(cpu, 1), "wall_ms": round(wall, 1)}


def _unwrapped(rows: list[tuple[float, int, int]]) -> list[tuple[float, float]]:
    """(time, µJ since the first sample) of one zone, across wraps."""
    out: list[tuple[float, float]] = []
    total = 0.0
    for k, (t, uj, max_range) in enumerate(rows):
        if k:
            prev = rows[k - 1][1]
            total += uj - prev if uj >= prev else uj + max_range - prev
        out.append((t, total))
    return out


def _at(series: list[tuple[float, float]], t: float) -> float | None:
    """The series linearly interpolated at t; None outside its samples."""
    times = [s[0] for s in series]
    if not series or t < times[0] or t > times[-1]:
        return None
    k = bisect.bisect_left(times, t)
    if times[k] == t:
        return series[k][1]
    (ta, a), (tb, b) = series[k - 1], series[k]
    return a + (b - a) * (t - ta) / (tb - ta)


def energy_j(zones: dict[str, list[tuple[float, int, int]]], t0: float,
             t1: float) -> float | None:
    """Joules over [t0, t1], every zone summed; None if any zone does not cover the window."""
    if not zones:
        return None
    total = 0.0
    for rows in zones.values():
        series = _unwrapped(rows)
        a, b = _at(series, t0), _at(series, t1)
        if a is None or b is None:
            return None
        total += b - a
    return total / 1e6


def energy_status(ph: dict[str, Any], zones: dict[str, Any]) -> dict[str, Any]:
    """Whether the run read energy, and why not (phases.json's "energy", written at stop)."""
    rec = ph.get("energy")
    if zones:
        return {"available": True, "zones": sorted(zones),
                "why": None}
    if isinstance(rec, dict) and rec.get("available") is False:
        return {"available": False, "why": rec.get("why") or "no energy counter"}
    if isinstance(rec, dict) and rec.get("available"):
        return {"available": False, "why": f"{ENERGY_FILE} has no samples"}
    return {"available": False, "why": "not recorded (a run from before energy was read)"}


def _folders(v: VariantFiles, labels: list[str]) -> list[Path]:
    """Where a service's replicas wrote their timing lines: one folder per replica, or the
    variant's own folder for a one-service variant."""
    dirs = [v.dir / label for label in labels if (v.dir / label).is_dir()]
    return dirs or [v.dir]


def _per_request(seconds: float | None, requests: int | None) -> float | None:
    return None if seconds is None or not requests else round(1000.0 * seconds / requests, 3)


def reading(row: dict[str, Any]) -> str:
    """One line: CPU or IO bound, and whether the cores were contended."""
    off, wait = row.get("off_cpu_share"), row.get("wait_share")
    if off is not None:
        if off >= 0.5:
            head = f"IO or waiting bound: {100 * off:.0f}% of the server's time off CPU"
        else:
            head = f"CPU bound: {100 * (1 - off):.0f}% of the server's time on CPU"
    elif row.get("cpu_pct") is not None:
        head = (f"{row['cpu_pct']:.0f}% of a core (off-CPU share not measured: no timing "
                "line carries its CPU)")
    else:
        return ""
    if wait is not None:
        head += f"; waiting for a core {100 * wait:.0f}% of its runnable time"
        if wait >= CONTENDED:
            head += ": the machine's cores are contended"
    return head


def figures(variant_dir: Path | VariantFiles, ph: dict[str, Any], steps: list[dict[str, Any]],
            read_timings: Callable[[Path], list[dict[str, Any]]]) -> dict[str, Any] | None:
    """summary.json's "cpu_io": the energy status and one row per service per step; None
    when the run recorded no services (phases.json version 1). `read_timings`: the one reader
    of a folder's timing lines (summary.read_timings, which calls this)."""
    services = ph.get("services", {})
    if not services:
        return None
    v = files_of(variant_dir)
    zones = energy_rows(v.dir / ENERGY_FILE)
    rows_out: list[dict[str, Any]] = []
    for name in sorted({d.get("service", k) for k, d in services.items()}):
        labels = [k for k, d in services.items() if d.get("service") == name]
        mine = [r for r in v.processes if r.get("service") == name]
        lines = [ln for folder in _folders(v, labels) for ln in read_timings(folder)]
        for st in steps:
            t0, t1, n = st.get("t_start"), st.get("t_end"), st.get("requests")
            if t0 is None or t1 is None or t1 <= t0:
                continue
            cpu = _delta(mine, "cpu_s", t0, t1)
            wait = _delta(mine, "run_wait_s", t0, t1)
            main = _delta(mine, "main_cpu_s", t0, t1)
            off = off_cpu(lines, t0, t1)
            joules = energy_j(zones, t0, t1)
            row = {
                "service": name, "index": st["index"], "requests": n,
                "cpu_pct": None if cpu is None else round(100.0 * cpu / (t1 - t0), 1),
                "cpu_ms_per_request": _per_request(cpu, n),
                "run_wait_ms_per_request": _per_request(wait, n),
                "main_thread_cpu_ms_per_request": _per_request(main, n),
                "wait_share": round(wait / (cpu + wait), 3)
                if cpu is not None and wait is not None and cpu + wait > 0 else None,
                "off_cpu_share": off["share"] if off else None,
                "off_cpu": off,
                "energy_j_per_request": round(joules / n, 4) if joules is not None and n
                else None,
            }
            row["reading"] = reading(row)
            rows_out.append(row)
    return {"energy": energy_status(ph, zones), "steps": rows_out}
