"""The load generator's CPU beside the server's, per step, in summary.md and summary.csv.

A synthetic run folder (tests/fixtures/synth.py) with known CPU: the server's processes.csv and each
step's Locust samples (`step*_loadgen.csv`, two Locust processes) grow at chosen rates, and the
report must show each step's figures, the server's and Locust's side by side.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from infbench.report import build, markdown, tables
from infbench.results import samples
from tests.fixtures.synth import T0, make_run

# (index, batch, start, end) of synth.make_variant's steps, seconds after T0.
STEPS = ((1, 2, 10.0, 20.0), (2, 4, 30.0, 40.0))
# Cores used during each step: the server's one process, and Locust's two.
SERVER_CORES = {1: 0.5, 2: 0.8}
LOCUST_CORES = {1: (0.3, 0.1), 2: (0.6, 0.15)}
LOCUST_PIDS = (200, 201)
DT = 0.5


def _cpu_at(t: float, rates: dict[int, float]) -> float:
    """CPU seconds used by time t (s after T0) by a process using rates[i] cores in step i."""
    used = 0.0
    for index, _, start, end in STEPS:
        used += rates[index] * max(0.0, min(t, end) - start)
    return used


def _grid(a: float, b: float) -> list[float]:
    return [a + k * DT for k in range(round((b - a) / DT) + 1)]


def add_cpu_samples(vd: Path) -> None:
    """A one-service variant's services entry, processes.csv and the steps' loadgen CSVs."""
    ph = json.loads((vd / "phases.json").read_text())
    ph["services"] = {"server": {"service": "server", "replica": 0}}
    (vd / "phases.json").write_text(json.dumps(ph))
    with (vd / "processes.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, samples.PROCESS_COLUMNS)
        w.writeheader()
        for t in _grid(0.0, 52.0):
            w.writerow({"time": f"{T0 + t:.3f}", "pid": 100, "ppid": 1, "name": "python",
                        "rss_mb": 100.0, "pss_mb": 90.0, "uss_mb": 80.0, "anon_mb": 50.0,
                        "file_mb": 30.0, "shmem_mb": 0.0, "swap_mb": 0.0, "threads": 4,
                        "cpu_s": f"{_cpu_at(t, SERVER_CORES):.3f}", "service": "server",
                        "replica": 0})
    for index, batch, start, end in STEPS:
        with (vd / f"step{index}-b{batch}_loadgen.csv").open("w", newline="") as f:
            out = csv.writer(f)
            out.writerow(samples.LOADGEN_COLUMNS)
            for t in _grid(start, end):
                for k, pid in enumerate(LOCUST_PIDS):
                    rates = {i: LOCUST_CORES[i][k] for i in LOCUST_CORES}
                    out.writerow([f"{T0 + t:.3f}", pid, f"{_cpu_at(t, rates):.3f}", "0.000"])


def pct(cores: float) -> str:
    return tables.fmt(100 * cores)


def test_loadgen_cpu_beside_the_server_cpu(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path, ("v1",))
    add_cpu_samples(run_dir / "v1")
    out = build.build(run_dir)

    steps = out["variants"][0]["steps"]
    for st in steps:
        g = st["loadgen"]
        assert g["processes"] == len(LOCUST_PIDS)
        assert g["total_cpu_pct"] == round(100 * sum(LOCUST_CORES[st["index"]]), 1)
        assert g["cpu_pct"] == round(100 * max(LOCUST_CORES[st["index"]]), 1)  # busiest

    md = (run_dir / "summary.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| variant | service"))
    assert "| CPU % per step | load gen CPU % per step |" in header
    # The server's CPU is over the step and its drain (analysis.service_figures): read it back.
    server_steps = out["variants"][0]["services"]["server"]["steps"]
    assert all(0 < st["cpu_pct"] < 100 * SERVER_CORES[st["index"]] + 1 for st in server_steps)
    server = " / ".join(tables.fmt(st["cpu_pct"]) for st in server_steps)
    gen = " / ".join(pct(sum(LOCUST_CORES[i])) for i, *_ in STEPS)
    row = next(line for line in md.splitlines() if line.startswith("| v1 | server |"))
    assert f"| {server} | {gen} |" in row, row

    with (run_dir / "summary.csv").open() as f:
        reader = csv.DictReader(f)
        (line,) = list(reader)
        fields = reader.fieldnames or []
    for index, batch, *_ in STEPS:
        key = f"s{index}_b{batch}_loadgen_cpu_pct"
        assert float(line[key]) == round(100 * sum(LOCUST_CORES[index]), 1)
    # Appended: every column the CSV had before keeps its place (the limit's came after).
    after = len(STEPS) * len(build.LIMIT_CSV)
    assert fields[-len(STEPS) - after:-after] == [f"s{i}_b{b}_loadgen_cpu_pct"
                                                  for i, b, *_ in STEPS]
    assert fields[-after:] == [f"s{i}_b{b}_{k}" for i, b, *_ in STEPS for k in build.LIMIT_CSV]


def test_without_loadgen_samples_the_column_says_so(tmp_path: Path) -> None:
    """A run (or an old summary) without Locust samples: "-", not a zero."""
    run_dir = make_run(tmp_path, ("v1",))
    add_cpu_samples(run_dir / "v1")
    for index, batch, *_ in STEPS:
        (run_dir / "v1" / f"step{index}-b{batch}_loadgen.csv").unlink()
    out = build.build(run_dir)
    md = (run_dir / "summary.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| v1 | server |"))
    server_steps = out["variants"][0]["services"]["server"]["steps"]
    server = " / ".join(tables.fmt(st["cpu_pct"]) for st in server_steps)
    assert f"| {server} | {' / '.join('-' for _ in STEPS)} |" in row, row
    with (run_dir / "summary.csv").open() as f:
        line = next(csv.DictReader(f))
    assert line["s1_b2_loadgen_cpu_pct"] == ""


def test_split_table_has_the_loadgen_cpu_column() -> None:
    """The per-step bottleneck table: Locust's CPU next to the sentence with the services'."""
    step = {"index": 1, "users": 10, "rps": 5.0, "p50_ms": 20.0, "p95_ms": 40.0,
            "loadgen": {"cpu_pct": 30.0, "total_cpu_pct": 42.5}}
    row = {"variant": "q", "steps": [step], "services": None,
           "split": [{"index": 1, "failures_by_kind": {},
                      "split": {"total_ms": 10.0, "model_ms": 6.0, "api_overhead_ms": 4.0}}]}
    head, _, line = markdown.lines(tables.split_table([row], 2))
    assert head.rstrip(" |").endswith("load gen CPU (%)")
    assert line.rstrip(" |").endswith(tables.fmt(42.5))
    old = dict(step, loadgen={"cpu_pct": 30.0})  # a summary written before total_cpu_pct
    assert tables.loadgen_cpu(old) == 30.0


def test_the_ranking_carries_the_split_and_both_cpus() -> None:
    def row(name: str, ips: float, model: float, cpu: float) -> dict[str, Any]:
        return {"variant": name,
                "steps": [{"index": i, "batch": b, "images_per_s": ips * b, "p50_ms": 10,
                           "p95_ms": 20, "failures": 0,
                           "loadgen": {"total_cpu_pct": 30.0}} for i, b in ((1, 1), (2, 4))],
                "split": [{"index": i, "split": {"total_ms": 8.0, "model_ms": model}}
                          for i in (1, 2)],
                "services": {"tfs": {"steps": [{"index": i, "cpu_pct": cpu} for i in (1, 2)]}}}

    table = markdown.lines(tables.ranking_table([row("slow", 100.0, 2.0, 90.0),
                                                row("fast", 200.0, 6.0, 150.0)]))
    assert "model share" in table[0] and "load gen CPU (%)" in table[0]
    assert "busiest service CPU (%)" in table[0]
    first = [c.strip() for c in table[2].split("|")[1:-1]]
    assert first[:3] == ["1", "1", "fast"]
    assert first[3:5] == ["200.0", "-"]  # no model alone: no limit
    assert first[8:] == ["8", "6", "75%", "150", "30"]
