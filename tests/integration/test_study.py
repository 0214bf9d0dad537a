"""The real path on a tiny workload: real servers under real mprof, real Locust, real files."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from infbench.paths import ROOT
from infbench.results import samples

pytestmark = pytest.mark.integration

# The shipped experiments plus a slower profile, so a test can interrupt a step mid-way.
EXTRA = """
[profiles.slow]
users = 2
spawn_rate = 2
steps = [{ batch = 1, seconds = 60 }, { batch = 2, seconds = 60 }]
baseline = 1
pause = 1
cooldown = 1
drain_timeout = 2
wait = [0.1, 0.3]
"""


def infbench(results: Path, *args: str, experiments: Path | None = None) -> list[str]:
    exp = ["--experiments", str(experiments)] if experiments else []
    return [sys.executable, "-m", "infbench", "--results", str(results), *exp, *args]


def strays(marker: Path) -> list[str]:
    """Processes whose command line names this run's folder: mprof, the server, Locust."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(str(marker) in part for part in p.info["cmdline"] or []):
                found.append(f"{p.pid}: {' '.join(p.info['cmdline'])}")
        except psutil.Error:
            pass
    return found


@pytest.fixture(scope="module")
def study(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    results = tmp_path_factory.mktemp("results")
    res = subprocess.run(
        infbench(results, "run", "starlette-uvicorn", "starlette-gunicorn", "--profile", "smoke",
                 "--model", "tiny"),
        cwd=ROOT, capture_output=True, text=True, timeout=420)
    runs = [p for p in results.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, (res.stdout, res.stderr)
    return runs[0], res


def test_study_exits_cleanly_and_prints_the_table(study: tuple[Path, Any]) -> None:
    run_dir, res = study
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "after API start (MB)" in res.stdout
    assert f"results: {run_dir}" in res.stdout
    assert "[1/2 starlette-uvicorn]" in res.stdout  # the progress line
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete"
    assert info["results"] == {"starlette-uvicorn": "complete", "starlette-gunicorn": "complete"}
    assert strays(run_dir) == []


@pytest.mark.parametrize("variant", ["starlette-uvicorn", "starlette-gunicorn"])
def test_artifacts_exist(study: tuple[Path, Any], variant: str) -> None:
    run_dir, _ = study
    d = run_dir / variant
    for name in ("mprofile.dat", "phases.json", "server.log", "manifest.json", "summary.json",
                 "server.json", "memory.png"):
        assert (d / name).stat().st_size > 0, name
    for step in ("step1-b1", "step2-b3"):
        for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", ".html",
                       "_counts.json"):
            assert (d / f"{step}{suffix}").exists(), step + suffix
    for name in ("summary.md", "summary.csv", "memory_overlay.png"):
        assert (run_dir / name).stat().st_size > 0
    m = json.loads((d / "manifest.json").read_text())
    assert m["schema"] == 1 and m["config"]["variant"]["name"] == variant
    assert "locust" in m["packages"] and "tensorflow-cpu" in m["packages"]
    assert m["machine"]["cpus"] == os.cpu_count()


@pytest.mark.parametrize("variant", ["starlette-uvicorn", "starlette-gunicorn"])
def test_summary_agrees_with_the_raw_files(study: tuple[Path, Any], variant: str) -> None:
    run_dir, _ = study
    d = run_dir / variant
    s = json.loads((d / "summary.json").read_text())
    ph = json.loads((d / "phases.json").read_text())
    mp = samples.parse_mprof(d / "mprofile.dat")
    assert s["status"] == "complete" and ph["status"] == "complete"
    assert len(mp.mem) > 50 and mp.bad_lines == 0

    # Phases are in order, back to back, on mprof's clock.
    kinds = [p["kind"] for p in ph["phases"]]
    assert kinds == ["baseline", "step", "drain", "pause", "step", "drain", "pause", "cooldown"]
    ends = [(p["start"], p["end"]) for p in ph["phases"]]
    assert all(a <= b for a, b in ends)
    assert all(ends[i][1] <= ends[i + 1][0] + 0.5 for i in range(len(ends) - 1))
    assert mp.mem[0][0] <= ph["phases"][0]["start"] <= ph["phases"][-1]["end"] <= mp.mem[-1][0]

    # Memory figures, recomputed from the samples.
    base = ph["phases"][0]
    start = statistics.median(m for t, m in mp.mem if base["start"] <= t <= base["end"])
    assert s["memory_mb"]["start"] == pytest.approx(start, abs=0.06)
    assert s["memory_mb"]["peak"] == pytest.approx(max(m for _, m in mp.mem), abs=0.06)
    assert s["memory_mb"]["growth"] == pytest.approx(
        s["memory_mb"]["end"] - s["memory_mb"]["start"], abs=0.11)
    assert s["memory_mb"]["start"] > 100  # TensorFlow alone is hundreds of MB

    # Requests: Locust's CSV and the locustfile's own counters agree.
    for step in s["steps"]:
        agg = samples.locust_aggregate(d / f"step{step['index']}-b{step['batch']}_stats.csv")
        counts = json.loads((d / f"step{step['index']}-b{step['batch']}_counts.json").read_text())
        assert agg is not None and step["requests"] == agg["requests"] > 0
        assert step["failures"] == agg["failures"] == 0
        assert counts["finished"] == agg["requests"]
        assert step["cut_off"] == counts["started"] - counts["finished"] >= 0
    assert s["totals"]["requests"] == sum(st["requests"] for st in s["steps"])


@pytest.mark.parametrize("variant", ["starlette-uvicorn", "starlette-gunicorn"])
def test_cpu_per_request_and_run_queue_wait(study: tuple[Path, Any], variant: str) -> None:
    # The image servers write no timing lines: CPU and run-queue wait per request are measured,
    # the off-CPU share is not (infbench/analysis/cpu_io.py).
    s = json.loads((study[0] / variant / "summary.json").read_text())
    steps = s["cpu_io"]["steps"]
    assert steps and [st["index"] for st in steps] == [st["index"] for st in s["steps"]]
    for st in steps:
        assert st["service"] == "server" and st["requests"] > 0
        assert st["cpu_ms_per_request"] > 0 and st["run_wait_ms_per_request"] >= 0
        assert st["off_cpu_share"] is None and "not measured" in st["reading"]


def test_gunicorn_workers_are_counted(study: tuple[Path, Any]) -> None:
    run_dir, _ = study
    mp = samples.parse_mprof(run_dir / "starlette-gunicorn" / "mprofile.dat")
    assert len(mp.children) >= 2  # two workers, recorded separately as CHLD lines
    # MEM includes the children: it is larger than any single worker.
    worker_peak = max(m for series in mp.children.values() for _, m in series)
    assert max(m for _, m in mp.mem) > worker_peak


@pytest.mark.parametrize("variant", ["starlette-uvicorn", "starlette-gunicorn"])
def test_sampler_agrees_with_mprof(study: tuple[Path, Any], variant: str) -> None:
    d = study[0] / variant
    s = json.loads((d / "summary.json").read_text())
    p = s["processes_mb"]
    rows = samples.process_rows(d / "processes.csv")
    # Two independent measurements of the same processes: the sampler's RSS sum and mprof's MEM
    # at the idle baseline agree closely (they sample a few ms apart).
    assert p["rss"]["start"] == pytest.approx(s["memory_mb"]["start"], rel=0.03)
    assert p["samples"] > 50 and len(rows) >= p["samples"]
    # The server's own processes from the baseline to the end: the master and two workers. Before
    # the baseline a short-lived child can show in one sample (CI once saw four processes) and
    # so in processes_max: a start-up detail, not a restart (the process watch reports those).
    expected = 3 if variant == "starlette-gunicorn" else 1
    phase_list = json.loads((d / "phases.json").read_text())["phases"]
    run_span = (phase_list[0]["start"], phase_list[-1]["end"])
    by_time: dict[float, list[str]] = {}
    for r in rows:
        by_time.setdefault(r["time"], []).append(f"{r['pid']} {r['name']}")
    odd = {t: names for t, names in by_time.items() if run_span[0] <= t <= run_span[1]
           and len(names) != expected}
    assert not odd, list(odd.items())[:3]
    assert p["processes_max"] >= expected
    rolled = [r for r in rows if r["pss_mb"] is not None]
    assert len(rolled) >= 5  # smaps_rollup every 2 s
    for r in rolled:
        assert r["uss_mb"] <= r["pss_mb"] + 0.01 and r["pss_mb"] <= r["rss_mb"] + 0.01
    if variant == "starlette-gunicorn":
        # The master and two workers share their libraries: RSS summed counts them three
        # times, PSS once.
        assert p["pss"]["start"] < 0.9 * p["rss"]["start"]
    ph = json.loads((d / "phases.json").read_text())
    assert ph["sampler"]["samples"] >= p["samples"] and ph["sampler"]["cpu_s"] >= 0


def test_report_rebuilds_from_files(study: tuple[Path, Any]) -> None:
    run_dir, _ = study
    before = json.loads((run_dir / "starlette-uvicorn" / "summary.json").read_text())
    (run_dir / "summary.md").unlink()
    res = subprocess.run(infbench(run_dir.parent, "report", run_dir.name), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert (run_dir / "summary.md").exists()
    assert json.loads((run_dir / "starlette-uvicorn" / "summary.json").read_text()) == before


def _start_slow_run(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    exp = tmp_path / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    results = tmp_path / "results"
    p = subprocess.Popen(
        infbench(results, "run", "starlette-uvicorn", "--profile", "slow", "--model", "tiny",
                 experiments=exp),
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        phases = list(results.glob("*/starlette-uvicorn/phases.json"))
        if phases:
            ph = json.loads(phases[0].read_text())
            step = [x for x in ph["phases"] if x["kind"] == "step"]
            counts = list(results.glob("*/starlette-uvicorn/step1-b1_counts.json"))
            if step and counts and json.loads(counts[0].read_text()).get("finished", 0) > 0:
                return p, phases[0].parent.parent
        if p.poll() is not None:
            raise AssertionError(p.stdout.read() if p.stdout else "exited")
        time.sleep(0.3)
    os.killpg(p.pid, signal.SIGKILL)
    raise AssertionError("the run never reached its first step")


def test_ctrl_c_mid_step_stops_everything_and_keeps_the_data(tmp_path: Path) -> None:
    p, run_dir = _start_slow_run(tmp_path)
    os.kill(p.pid, signal.SIGINT)  # what Ctrl-C sends to the harness
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out
    assert "interrupted" in out
    assert strays(run_dir) == []
    server = json.loads((run_dir / "starlette-uvicorn" / "server.json").read_text())
    assert server["server_pids"] and not any(psutil.pid_exists(x) for x in server["server_pids"])
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "interrupted" and info["stopped_in"] == "starlette-uvicorn"
    ph = json.loads((run_dir / "starlette-uvicorn" / "phases.json").read_text())
    assert ph["status"] == "interrupted" and ph["stopped_in"] == "step 1 (batch 1)"
    assert ph["phases"][-1]["cut_short"] is True
    # What was measured is kept, and the report can be rebuilt from it.
    mp = samples.parse_mprof(run_dir / "starlette-uvicorn" / "mprofile.dat")
    assert mp.mem and mp.mem[-1][0] >= ph["phases"][-1]["start"]
    res = subprocess.run(infbench(run_dir.parent, "report", run_dir.name), cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    md = (run_dir / "summary.md").read_text()
    assert "interrupted" in md and "step 1 (batch 1)" in md


def test_sigterm_goes_the_same_way(tmp_path: Path) -> None:
    p, run_dir = _start_slow_run(tmp_path)
    os.kill(p.pid, signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 143, out
    assert strays(run_dir) == []
    assert json.loads((run_dir / "run.json").read_text())["status"] == "interrupted"


def test_server_dying_mid_step_fails_the_variant_and_leaves_nothing(tmp_path: Path) -> None:
    p, run_dir = _start_slow_run(tmp_path)
    server = json.loads((run_dir / "starlette-uvicorn" / "server.json").read_text())
    for pid in server["server_pids"]:
        os.kill(pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 1, out
    assert "FAILED starlette-uvicorn" in out and "server exited" in out
    assert strays(run_dir) == []
    ph = json.loads((run_dir / "starlette-uvicorn" / "phases.json").read_text())
    assert ph["status"] == "failed" and "server exited" in ph["error"]
    assert ph["stopped_in"].startswith(("step 1", "drain 1"))
    s = json.loads((run_dir / "starlette-uvicorn" / "summary.json").read_text())
    assert s["status"] == "failed" and s["memory_mb"]["start"] is not None
