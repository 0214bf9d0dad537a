"""The sample files of a run, read: one reader per format, each typed and tolerant of the torn
last line a killed process leaves.

    processes.csv        the /proc sampler (infbench/measure/sampler.py); version 1: time ..
                         threads; 2: + cpu_s, service, replica (read with defaults); 3: +
                         run_wait_s (read as None from 1-2: not measured); 4: + main_cpu_s
                         (read as None from 1-3)
    probes-<pid>.jsonl   the servers' own probes: one JSON object a line with "t"
    outside.jsonl        glibc's view read from outside the process (gdb)
    mprofile.dat         memory-profiler's own format (MEM / CHLD / CMDLINE / FUNC lines)
    cgroup_memory.csv    the container's memory (docker runtime)
    step*_loadgen.csv    the load generator's CPU and run-queue wait
    energy.csv           the machine's powercap counters, where readable (measure/energy.py)
    metrics.csv          a service's own Prometheus /metrics (measure/prometheus.py)
    Locust CSVs          *_stats.csv (the Aggregated row), *_stats_history.csv (one a second)
"""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infbench.results.readers import ReadError

PROCESS_COLUMNS = ["time", "pid", "ppid", "name", "rss_mb", "pss_mb", "uss_mb", "anon_mb",
                   "file_mb", "shmem_mb", "swap_mb", "threads", "cpu_s", "service", "replica",
                   "run_wait_s", "main_cpu_s"]
PROCESS_COLUMNS_V1 = PROCESS_COLUMNS[:12]  # version 2 added cpu_s, service, replica
# version 3 added run_wait_s (the threads' run-queue wait); older files read it as None;
# version 4 added main_cpu_s (the main thread's on-CPU seconds: an asyncio server's event loop)
LOADGEN_COLUMNS = ["time", "pid", "cpu_s", "wait_s"]
ENERGY_COLUMNS = ["time", "zone", "energy_uj", "max_energy_range_uj"]
ENERGY_FILE = "energy.csv"
OUTSIDE_FILE = "outside.jsonl"
CGROUP_FILE = "cgroup_memory.csv"
METRICS_COLUMNS = ["time", "name", "labels", "value"]
METRICS_FILE = "metrics.csv"
# infbench/measure/gpu.py, where a GPU is: one row per GPU per sample (pid empty: the device's
# memory in use and utilisation), and one per process using it (pid, its memory; util empty).
GPU_COLUMNS = ["time", "gpu", "pid", "memory_mb", "memory_total_mb", "util_gpu_pct",
               "util_memory_pct"]
GPU_FILE = "gpu.csv"


def process_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a processes.csv, typed; a missing file or a torn last line is skipped."""
    rows: list[dict[str, Any]] = []
    if not path.exists():
        return rows
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            try:
                row: dict[str, Any] = {"time": float(raw["time"]), "pid": int(raw["pid"]),
                                       "name": raw["name"], "threads": int(raw["threads"]),
                                       # Older files have no cpu/service/replica columns.
                                       "cpu_s": float(raw.get("cpu_s") or 0.0),
                                       "service": raw.get("service") or "server",
                                       "replica": int(raw.get("replica") or 0),
                                       "run_wait_s": float(raw["run_wait_s"])
                                       if raw.get("run_wait_s") else None,
                                       "main_cpu_s": float(raw["main_cpu_s"])
                                       if raw.get("main_cpu_s") else None}
                row.update({k: float(raw[k]) if raw[k] != "" else None
                            for k in PROCESS_COLUMNS[4:11]})
            except (KeyError, TypeError, ValueError):
                continue
            rows.append(row)
    return rows


def totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per sample time: the figures summed over processes, plus the process count. A figure
    some process lacks at that time (PSS between rollup reads) is None in the total."""
    by_time: dict[float, dict[str, Any]] = {}
    for row in rows:
        t = by_time.setdefault(row["time"], {"time": row["time"], "processes": 0,
                                             **{k: 0.0 for k in PROCESS_COLUMNS[4:13]}})
        t["processes"] += 1
        for k in PROCESS_COLUMNS[4:13]:
            t[k] = None if t[k] is None or row[k] is None else t[k] + row[k]
    return [by_time[t] for t in sorted(by_time)]


@dataclass
class Mprof:
    """memory-profiler's .dat: MEM <MiB> <unix time>, CHLD <n> <MiB> <unix time>."""

    cmdline: str = ""
    mem: list[tuple[float, float]] = field(default_factory=list)  # (t, MiB)
    children: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    bad_lines: int = 0


def parse_mprof(path: Path) -> Mprof:
    out = Mprof()
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            if parts[0] == "CMDLINE":
                out.cmdline = line[len("CMDLINE "):]
            elif parts[0] == "MEM" and len(parts) == 3:
                out.mem.append((float(parts[2]), float(parts[1])))
            elif parts[0] == "CHLD" and len(parts) == 4:
                out.children.setdefault(parts[1], []).append((float(parts[3]), float(parts[2])))
            elif parts[0] not in ("FUNC",):
                out.bad_lines += 1
        except ValueError:
            out.bad_lines += 1  # e.g. a last line cut short by a crash
    out.mem.sort()
    return out


def cgroup_series(path: Path) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """cgroup_memory.csv (docker runtime: time, mem_mb, ...) read once -> sorted (t, MiB)
    samples of the `docker stats` figure (mem_mb) and of the anonymous memory (anon_bytes;
    none in files written before the column, or by `docker stats`)."""
    mem: list[tuple[float, float]] = []
    anon: list[tuple[float, float]] = []
    if not path.exists():
        return mem, anon
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            t = number(row.get("time"), float)
            if t is None:
                continue
            mb, b = number(row.get("mem_mb"), float), number(row.get("anon_bytes"), float)
            if mb is not None:
                mem.append((t, mb))
            if b is not None:
                anon.append((t, round(b / 2**20, 3)))
    return sorted(mem), sorted(anon)


def parse_cgroup_csv(path: Path, anon: bool = False) -> list[tuple[float, float]]:
    """One of cgroup_series' two: the `docker stats` figure, or with `anon` the anonymous
    memory."""
    return cgroup_series(path)[1 if anon else 0]


def locust_aggregate(stats_csv: Path) -> dict[str, Any] | None:
    """The 'Aggregated' row of Locust's *_stats.csv, as numbers (None where Locust says N/A)."""
    if not stats_csv.exists():
        return None
    with stats_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                return {
                    "requests": number(row.get("Request Count"), int) or 0,
                    "failures": number(row.get("Failure Count"), int) or 0,
                    "rps": number(row.get("Requests/s"), float),
                    "p50_ms": number(row.get("50%"), float),
                    "p95_ms": number(row.get("95%"), float),
                    "p99_ms": number(row.get("99%"), float),
                    "max_ms": number(row.get("Max Response Time"), float),
                    "avg_ms": number(row.get("Average Response Time"), float),
                }
    return None


def number(value: str | None, kind: type) -> Any:
    if value in (None, "", "N/A"):
        return None
    try:
        return kind(float(value)) if kind is int else kind(value)
    except ValueError:
        return None


def read_probes(variant_dir: Path) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """probes-<pid>.jsonl files: samples by pid (in time order) and trim events."""
    samples: dict[int, list[dict[str, Any]]] = {}
    trims: list[dict[str, Any]] = []
    for path in sorted(variant_dir.rglob("probes-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed server
            if not isinstance(row, dict) or "t" not in row:
                continue
            if row.get("event"):
                trims.append(row)
            else:
                samples.setdefault(int(row.get("pid", 0)), []).append(row)
    for rows in samples.values():
        rows.sort(key=lambda r: r["t"])
    return samples, trims


def outside_rows(variant_dir: Path) -> list[dict[str, Any]]:
    """Every outside.jsonl row under a variant folder (each replica's), in time order."""
    rows: list[dict[str, Any]] = []
    for path in sorted(variant_dir.rglob(OUTSIDE_FILE)):
        for line in path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                row = json.loads(line)
                if isinstance(row, dict) and "t" in row and "pid" in row:
                    rows.append(row)
    return sorted(rows, key=lambda r: r["t"])


def loadgen_rows(path: Path) -> dict[int, list[tuple[float, float, float | None]]]:
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


def energy_rows(path: Path) -> dict[str, list[tuple[float, int, int]]]:
    """{zone: [(time, energy_uj, max_energy_range_uj)]} from an energy.csv, in time order; {}
    without the file (no readable counter)."""
    out: dict[str, list[tuple[float, int, int]]] = {}
    if not path.exists():
        return out
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                out.setdefault(r["zone"], []).append(
                    (float(r["time"]), int(r["energy_uj"]), int(r["max_energy_range_uj"])))
    for rows in out.values():
        rows.sort()
    return out


# -- sample files -----------------------------------------------------------------------------


def _header(path: Path) -> list[str]:
    try:
        with path.open(newline="") as f:
            return next(csv.reader(f), [])
    except OSError as e:
        raise ReadError(f"{path}: cannot read: {e.strerror or type(e).__name__}") from None


def _need_columns(path: Path, need: list[str] | tuple[str, ...], what: str) -> None:
    header = _header(path)
    missing = [c for c in need if c not in header]
    if missing:
        raise ReadError(f"{path}: not a {what} (no column {missing[0]!r})")


def processes_csv(variant_dir: Path) -> list[dict[str, Any]]:
    """processes.csv rows, typed ([] when the sampler did not run)."""
    path = variant_dir / "processes.csv"
    if not path.exists():
        return []
    _need_columns(path, PROCESS_COLUMNS_V1, "processes.csv")
    return process_rows(path)


def locust_stats(path: Path) -> dict[str, Any] | None:
    """The Aggregated row of a *_stats.csv as numbers; None when the file is missing."""
    if path.exists():
        _need_columns(path, ("Name", "Request Count", "Requests/s", "50%", "95%"),
                      "Locust stats file")
    return locust_aggregate(path)


HISTORY_COLUMNS = ("Timestamp", "Name", "User Count", "Requests/s", "50%", "95%",
                   "Total Request Count", "Total Failure Count")


def locust_history(path: Path) -> list[dict[str, Any]]:
    """The Aggregated rows of a *_stats_history.csv, one a second, typed: t, users, rps (Locust's
    current rate), p50_ms and p95_ms (its current percentiles; None while it has none), and the
    cumulative requests and failures. [] when the file is missing."""
    if not path.exists():
        return []
    _need_columns(path, HISTORY_COLUMNS, "Locust stats history file")

    def num(value: str | None) -> float | None:
        if value in (None, "", "N/A"):
            return None
        try:
            return float(value)
        except ValueError:
            return None

    rows = []
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            if raw.get("Name") != "Aggregated":
                continue
            t, total = num(raw.get("Timestamp")), num(raw.get("Total Request Count"))
            if t is None or total is None:
                continue  # a torn last line
            rows.append({"t": t, "users": num(raw.get("User Count")),
                         "rps": num(raw.get("Requests/s")), "p50_ms": num(raw.get("50%")),
                         "p95_ms": num(raw.get("95%")), "requests": int(total),
                         "failures": int(num(raw.get("Total Failure Count")) or 0)})
    return sorted(rows, key=lambda r: r["t"])
