"""CPU or IO bound, per request, on a real run: the TF-Serving-compatible server (whose timing
lines carry the CPU of its decode and model phases) under real REST users, through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import summary
from infbench.measure import energy
from infbench.paths import ROOT
from infbench.results import samples
from tests.fixtures.helpers import the_run

pytestmark = pytest.mark.integration

VARIANT = "tfs-rest-b64"  # base64 JPEGs: the server decodes them, so decode has CPU to measure


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("cpuio")
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp / "r"), "run",
                          VARIANT, "--profile", "transport-smoke"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return the_run(tmp / "r"), res


def test_the_timing_lines_carry_the_phases_cpu(run: tuple[Path, Any]) -> None:
    lines = [ln for ln in summary.read_timings(run[0] / VARIANT) if ln.get("ok")]
    assert lines
    for ln in lines:
        for phase in ("decode", "model"):
            cpu, wall = ln[f"{phase}_cpu_ms"], ln[f"{phase}_ms"]
            assert cpu >= 0 and wall >= 0
        assert ln["decode_cpu_ms"] > 0  # JPEG decoding is CPU work on that thread


def test_the_sampler_wrote_run_queue_waits(run: tuple[Path, Any]) -> None:
    rows = samples.process_rows(run[0] / VARIANT / "processes.csv")
    read = [r for r in rows if r["run_wait_s"] is not None]  # every 0.5 s, empty between
    assert len(read) >= 10 and all(r["run_wait_s"] >= 0 for r in read)
    for pid in {r["pid"] for r in read}:
        waits = [r["run_wait_s"] for r in read if r["pid"] == pid]
        assert waits == sorted(waits), pid  # cumulative over every thread it has had


def test_the_summary_and_the_report_have_the_cpu_or_io_table(run: tuple[Path, Any]) -> None:
    run_dir, _ = run
    found = json.loads((run_dir / VARIANT / "summary.json").read_text())["cpu_io"]
    steps = [st for st in found["steps"] if st["service"] == "tfs"]
    assert [st["index"] for st in steps] == [1, 2]
    for st in steps:
        assert st["requests"] > 0
        assert st["cpu_ms_per_request"] is not None and st["cpu_ms_per_request"] > 0
        assert st["run_wait_ms_per_request"] is not None and st["run_wait_ms_per_request"] >= 0
        assert 0.0 <= st["wait_share"] <= 1.0
        assert st["off_cpu_share"] is not None and 0.0 <= st["off_cpu_share"] <= 1.0
        assert st["off_cpu"]["phases"] == ["decode", "model"] and st["off_cpu"]["lines"] > 0
        assert st["reading"]
    zones, why = energy.zones()
    phases = json.loads((run_dir / VARIANT / "phases.json").read_text())
    if zones:  # a machine with readable counters
        assert found["energy"]["available"] and (run_dir / VARIANT / "energy.csv").exists()
    else:  # this one: said, not estimated
        assert found["energy"] == {"available": False, "why": why}
        assert phases["energy"] == {"available": False, "why": why}
        assert all(st["energy_j_per_request"] is None for st in steps)
        assert not (run_dir / VARIANT / "energy.csv").exists()
    md = (run_dir / "summary.md").read_text()
    assert "## CPU or IO bound (per service and step)" in md
    assert ("not available" in md) == (not zones)
    assert "CPU or IO bound (per service and step)" in (run_dir / "report.html").read_text()
