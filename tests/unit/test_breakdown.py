"""Where the memory is: RSS split into file-backed, malloc in use, malloc free and the rest,
from a synthetic processes.csv and probe files with known figures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import breakdown
from infbench.paths import ROOT
from infbench.report import build
from infbench.results import samples
from tests.fixtures.synth import T0, make_run

# Two processes. Before t=42 (the cooldown) process A has 50 MB anonymous, of which malloc has
# 20 in use and 5 free; from then on 150 anonymous, 60 in use, 70 free. Process B is flat.
A = {"pid": 10, "file": 100.0, "before": (50.0, 20.0, 5.0), "after": (150.0, 60.0, 70.0)}
B = {"pid": 11, "file": 50.0, "before": (30.0, 10.0, 0.0), "after": (30.0, 10.0, 0.0)}


def figures_at(proc: dict[str, Any], t: float) -> tuple[float, float, float]:
    return proc["after"] if t >= 42 else proc["before"]  # type: ignore[no-any-return]


def write_sampler(d: Path) -> None:
    with (d / "processes.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(samples.PROCESS_COLUMNS)
        for i in range(0, 105):  # every 0.5 s for 52 s
            t = i / 2
            for p in (A, B):
                anon = figures_at(p, t)[0]
                w.writerow([T0 + t, p["pid"], 1, "python", anon + p["file"], "", "", anon,
                            p["file"], 0.0, 0.0, 4])


def write_probes(d: Path, allocator: str = "glibc") -> None:
    for p in (A, B):
        rows = []
        for t in range(0, 53):
            _, in_use, free = figures_at(p, t)
            malloc = None if allocator != "glibc" else \
                {"arena": in_use + free, "mmap": 0.0, "in_use": in_use, "free": free,
                 "releasable": 0.0}
            rows.append({"t": T0 + t, "pid": p["pid"], "rss_mb": 0, "threads": 4,
                         "py_blocks": 1000, "malloc": malloc, "allocator": allocator})
        (d / f"probes-{p['pid']}.jsonl").write_text(
            "\n".join(json.dumps(r) for r in rows) + "\n")


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    run = make_run(tmp_path, ("probed", "unprobed", "jemalloc"))
    for name in ("probed", "unprobed", "jemalloc"):
        write_sampler(run / name)
    write_probes(run / "probed")
    write_probes(run / "jemalloc", allocator="jemalloc")
    return run


def phases_of(d: Path) -> list[dict[str, Any]]:
    return list(json.loads((d / "phases.json").read_text())["phases"])


def test_parts_at_the_end_of_baseline_and_cooldown(run_dir: Path) -> None:
    d = run_dir / "probed"
    b = breakdown.figures(breakdown.series(d), phases_of(d))
    assert b is not None and b["probed"]
    start, after, growth = b["start"], b["after_cooldown"], b["growth"]
    assert (start["rss_mb"], start["file_mb"], start["malloc_in_use_mb"],
            start["malloc_free_mb"], start["other_anon_mb"]) == (230, 150, 30, 5, 45)
    assert (after["rss_mb"], after["malloc_in_use_mb"], after["malloc_free_mb"],
            after["other_anon_mb"]) == (330, 70, 70, 40)
    # The parts add up to RSS, and the growth is split among them.
    for m in (start, after):
        assert sum(m[k] for k in breakdown.PARTS) == pytest.approx(m["rss_mb"])
    assert (growth["rss_mb"], growth["malloc_in_use_mb"], growth["malloc_free_mb"],
            growth["other_anon_mb"], growth["file_mb"]) == (100, 40, 65, -5, 0)
    assert after["named_pct"] == pytest.approx(100 * 290 / 330, abs=0.05)


def test_without_malloc_figures_everything_anonymous_is_other(run_dir: Path) -> None:
    for name in ("unprobed", "jemalloc"):
        d = run_dir / name
        b = breakdown.figures(breakdown.series(d), phases_of(d))
        assert b is not None and not b["probed"]
        assert b["after_cooldown"]["other_anon_mb"] == 180  # all anonymous memory
        assert b["after_cooldown"]["malloc_free_mb"] is None
        assert b["after_cooldown"]["named_pct"] is None


def test_malloc_counting_more_than_is_resident_is_a_negative_remainder(tmp_path: Path) -> None:
    run = make_run(tmp_path, ("over",))
    d = run / "over"
    write_sampler(d)
    A["after"], saved = (150.0, 100.0, 80.0), A["after"]  # malloc says 180 of 150 resident
    try:
        write_probes(d)
    finally:
        A["after"] = saved
    after = breakdown.figures(breakdown.series(d), phases_of(d))["after_cooldown"]  # type: ignore[index]
    assert after["other_anon_mb"] == -30 + 20  # A: -30, B: +20
    assert after["named_pct"] > 100


def test_report_draws_the_stack_and_tables_the_growth(run_dir: Path) -> None:
    build.build(run_dir)
    for name in ("probed", "unprobed", "jemalloc"):
        assert (run_dir / name / "memory_parts.png").stat().st_size > 10_000
    md = (run_dir / "summary.md").read_text()
    assert "## Where the growth went" in md
    rows = [line for line in md.splitlines() if line.startswith("| probed |")
            and "→" in line and "+65" in line]
    assert rows, md
    assert not any(line.startswith("| unprobed |") and "+65" in line for line in md.splitlines())
    s = json.loads((run_dir / "probed" / "summary.json").read_text())
    assert s["breakdown_mb"]["growth"]["malloc_free_mb"] == 65
    assert "breakdown_mb" in s["definitions"]


def test_probe_overhead_compares_the_two_sides(tmp_path: Path) -> None:
    from infbench.report import overhead

    run = make_run(tmp_path, ("plain", "probed", "plain-2", "probed-2"))
    for name in ("plain", "probed", "plain-2", "probed-2"):
        (run / name / "manifest.json").write_text(
            json.dumps({"config": {"variant": {"name": name,
                                                 "probes": name.startswith("probed")}}}))
    build.build(run)
    # Same synthetic steps on both sides: every ratio is exactly 1.
    lines = overhead.table(run)
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 2 |")]
    assert len(rows) == 2
    assert all(row.split("|")[5].strip() == "1.000" and row.split("|")[8].strip() == "1.000"
               for row in rows), rows
    for name in ("probed", "probed-2"):
        (run / name / "manifest.json").write_text(
            json.dumps({"config": {"variant": {"probes": False}}}))
    with pytest.raises(SystemExit, match="needs variants with and without probes"):
        overhead.table(run)



def test_probe_overhead_through_the_cli(tmp_path: Path) -> None:
    """`infbench overhead [RUN]` (make bench-probes): the run resolved like `report` does (an
    id under --results, default latest), the table printed; a run without both sides exits 1."""
    run = make_run(tmp_path, ("plain", "probed"))
    for name in ("plain", "probed"):
        (run / name / "manifest.json").write_text(
            json.dumps({"config": {"variant": {"name": name, "probes": name == "probed"}}}))
    build.build(run)

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "infbench", *argv], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    res = cli("--results", str(run.parent), "overhead", run.name)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(f"run {run.name}: 1 variant(s) without probes (plain), 1 with "
                                 "(probed)")
    assert "| 1 |" in res.stdout and "sampler CPU time" in res.stdout
    res = cli("--results", str(tmp_path / "none"), "overhead")
    assert res.returncode == 1 and res.stderr.startswith("infbench: error:"), res.stderr
