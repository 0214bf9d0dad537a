"""The Docker runtime: command lines, image tags, cgroup memory and the error without an engine
(no engine needed), and one real-engine smoke run (marked `docker`; make test-docker)."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infbench.launch.docker import container as dk
from infbench.launch.docker import engine as dke
from infbench.paths import ROOT
from infbench.results import samples

# -- a real engine ---------------------------------------------------------------------------
EXTRA = """
[profiles.slow]
users = 2
spawn_rate = 2
steps = [{ batch = 1, seconds = 60 }]
baseline = 1
pause = 1
cooldown = 1
drain_timeout = 2
wait = [0.1, 0.3]
"""


def our_containers(run_id: str) -> list[str]:
    res = subprocess.run(["docker", "ps", "-a", "--filter", f"label={dk.RUN_LABEL}={run_id}",
                          "--format", "{{.Names}} {{.Status}}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.split("\n") if res.stdout.strip() else []


@pytest.fixture(scope="module")
def docker_run(tmp_path_factory: pytest.TempPathFactory
               ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    problem = dke.engine_problem()
    if problem:
        pytest.fail(f"INFBENCH_DOCKER_TESTS=1 but no engine: {problem} (make docker-engine)")
    results = tmp_path_factory.mktemp("results")
    res = subprocess.run(
        [sys.executable, "-m", "infbench", "--results", str(results), "run", "starlette-uvicorn",
         "--runtime", "docker", "--profile", "smoke", "--model", "tiny", "--probes"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    runs = [p for p in results.iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1, res.stdout[-3000:] + res.stderr[-3000:]
    return runs[0], res


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.timeout(1500)
def test_docker_smoke_run(docker_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    run_dir, res = docker_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "container cgroup memory" in res.stdout
    d = run_dir / "starlette-uvicorn"
    for name in ("mprofile.dat", "phases.json", "cgroup_memory.csv", "summary.json",
                 "server.log", "server.json", "processes.csv", "memory.png"):
        assert (d / name).stat().st_size > 0, name
        assert (d / name).stat().st_uid == os.getuid(), name
    info = json.loads((d / "server.json").read_text())
    assert info["launcher"] == "docker"
    assert info["container"] == f"infbench-{run_dir.name}-starlette-uvicorn-server"
    assert info["image"].startswith("infbench-server:")
    assert json.loads((run_dir / "run.json").read_text())["runtime"] == "docker"

    s = json.loads((d / "summary.json").read_text())
    ph = json.loads((d / "phases.json").read_text())
    mp = samples.parse_mprof(d / "mprofile.dat")
    cg = samples.parse_cgroup_csv(d / "cgroup_memory.csv")
    assert s["status"] == "complete" and len(mp.mem) > 50 and len(cg) > 50
    assert mp.cmdline.startswith(f"{dk.CONTAINER_PYTHON} -m uvicorn")  # mprof ran inside
    # One clock: phases, mprof and the cgroup samples all span the run.
    first, last = ph["phases"][0]["start"], ph["phases"][-1]["end"]
    assert mp.mem[0][0] <= first <= last <= mp.mem[-1][0]
    assert cg[0][0] <= first and cg[-1][0] >= last - 1
    # The figures recomputed from the raw samples.
    assert s["memory_mb"]["peak"] == pytest.approx(max(m for _, m in mp.mem), abs=0.06)
    c = s["cgroup_memory_mb"]
    assert c["peak"] == pytest.approx(max(m for _, m in cg), abs=0.06)
    base = ph["phases"][0]
    assert c["start"] == pytest.approx(
        statistics.median(m for t, m in cg if base["start"] <= t <= base["end"]), abs=0.06)
    # The cgroup holds the server's anonymous memory (and docker-init's and mprof's); the file
    # pages of its libraries are in mprof's RSS but charged to whichever cgroup first read
    # them (with vfs, the engine's copy of the image; with overlay2, often the container).
    # Growth under load is anonymous: both see the same growth.
    anon = s["processes_mb"]["anon"]["start"]
    assert s["memory_mb"]["start"] > 100 and anon > 50
    assert 0.9 * anon <= c["start"] <= 1.5 * s["memory_mb"]["start"] + 100
    # Growth under load is anonymous; the cgroup's own count of it (memory.stat) matches the
    # sampler's. (The `docker stats` figure can grow by more: on a cold page cache the
    # container is charged its libraries' pages, and the load moves them to the active list.)
    ca = s["cgroup_anon_mb"]
    assert abs(ca["growth"] - s["processes_mb"]["anon"]["growth"]) <= 20
    assert ca["start"] <= c["start"] + 1
    assert s["totals"]["requests"] > 0 and s["totals"]["failures"] == 0
    # The probes are injected inside the container too: the hook on the image's PYTHONPATH
    # started them before the server's own call could (via "hook"), into the mounted folder.
    probed = ph["probes"]
    assert probed and all(v["probed"] >= 1 and "hook" in v["via"] for v in probed.values()), probed
    assert list(d.glob("probes-*.jsonl"))
    assert our_containers(run_dir.name) == []


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.timeout(600)
def test_docker_sigterm_mid_step_leaves_no_container(
        tmp_path: Path, docker_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    exp = tmp_path / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    results = tmp_path / "results"
    p = subprocess.Popen(
        [sys.executable, "-m", "infbench", "--experiments", str(exp), "--results", str(results),
         "run", "starlette-uvicorn", "--runtime", "docker", "--profile", "slow", "--model",
         "tiny"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and p.poll() is None:
            counts = list(results.glob("*/starlette-uvicorn/step1-b1_counts.json"))
            if counts and json.loads(counts[0].read_text() or "{}").get("finished", 0) > 0:
                break
            time.sleep(0.5)
        run_dir = next(r for r in results.iterdir() if r.is_dir() and not r.is_symlink())
        assert our_containers(run_dir.name), "the container should be running mid-step"
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 143, out[-3000:]
    assert our_containers(run_dir.name) == []
    ph = json.loads((run_dir / "starlette-uvicorn" / "phases.json").read_text())
    assert ph["status"] == "interrupted"
    assert samples.parse_mprof(run_dir / "starlette-uvicorn" / "mprofile.dat").mem
    assert samples.parse_cgroup_csv(run_dir / "starlette-uvicorn" / "cgroup_memory.csv")


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.timeout(1500)
@pytest.mark.requires("redis-server")
def test_docker_queue_topology(tmp_path: Path,
                               docker_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    """API + Redis + a model worker, each in its own container on harness-chosen ports."""
    res = subprocess.run(
        [sys.executable, "-m", "infbench", "--results", str(tmp_path), "run", "queue-fastapi",
         "--runtime", "docker", "--profile", "queue-smoke", "--model", "tiny"],
        cwd=ROOT, capture_output=True, text=True, timeout=1200)
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink()]
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    d = run_dir / "queue-fastapi"
    for label in ("redis-0", "model-0", "api-0"):
        info = json.loads((d / "server.json").read_text())
        replicas = {r["service"] + "-" + str(r["replica"]): r for r in info["replicas"]}
        assert replicas[label]["launcher"] == "docker"
        assert (d / label / "mprofile.dat").stat().st_size > 0
        assert (d / label / "cgroup_memory.csv").stat().st_size > 0
    s = json.loads((d / "summary.json").read_text())
    assert s["status"] == "complete" and s["totals"]["failures"] == 0
    assert our_containers(run_dir.name) == []
