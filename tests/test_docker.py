"""The Docker runtime: command lines, image tags, cgroup memory and the error without an engine
(no engine needed), and one real-engine smoke run (marked `docker`; make test-docker)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from infbench import analysis, proc, report
from infbench.config import Variant, one_service, with_server
from infbench.launch.argv import mprof_argv, server_argv
from infbench.launch.contract import ReplicaSpec
from infbench.launch.docker import cgroup as dkc
from infbench.launch.docker import container as dk
from infbench.launch.docker import engine as dke
from infbench.launch.docker import image as dki
from infbench.launch.native import native_env
from infbench.paths import ROOT
from tests import synth

UVICORN = one_service("starlette-uvicorn", server="uvicorn", app="starlette")
GUNICORN = one_service("starlette-gunicorn", server="gunicorn", app="starlette", workers=2,
                       thread_limit=1, env={"MALLOC_ARENA_MAX": "2"})
RUN_ID = "20260101-000000-smoke-abc123"


def spec(tmp_path: Path, variant: Variant = UVICORN) -> ReplicaSpec:
    out = tmp_path / "results" / RUN_ID / variant.name
    out.mkdir(parents=True)
    model = tmp_path / "build" / "models" / "tiny-123456.keras"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"model")
    return ReplicaSpec(variant=variant, service=variant.entry_service, replica=0,
                       ports={"port": 43210}, out_dir=out, model_path=model,
                       sample_interval=0.1, run_id=RUN_ID, max_images=128)


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == flag]


# -- command lines ---------------------------------------------------------------------------
def test_build_argv_uses_the_host_network_and_the_build_arguments(tmp_path: Path) -> None:
    argv = dki.build_argv("infbench-x:0123456789ab", tmp_path, "infbench-base:bookworm",
                          "http://127.0.0.1:47811/")
    assert argv[:3] == ["docker", "build", "--force-rm"] and argv[-1] == str(tmp_path)
    assert pairs(argv, "--network") == ["host"]
    assert pairs(argv, "--file") == [str(tmp_path / "Dockerfile")]
    assert pairs(argv, "--tag") == ["infbench-x:0123456789ab"]
    assert pairs(argv, "--build-arg") == ["BASE_IMAGE=infbench-base:bookworm",
                                          "WHEELHOUSE=http://127.0.0.1:47811/"]


def test_the_dockerfile_defaults_to_a_slim_python_and_pip_defaults() -> None:
    text = dki.DOCKERFILE.read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert "ARG WHEELHOUSE=\n" in text  # no machine-specific location baked in
    assert "COPY servers/ /app/servers/" in text
    assert "COPY build" not in text  # the model is mounted at run time, not copied


def test_run_argv_mounts_names_labels_and_runs_mprof_inside(tmp_path: Path) -> None:
    s = spec(tmp_path)
    argv = dk.run_argv(s, "infbench-server:0123456789ab", user="1000:1000")
    assert argv[:2] == ["docker", "run"]
    assert pairs(argv, "--name") == [f"infbench-{RUN_ID}-starlette-uvicorn-server"]
    assert pairs(argv, "--label") == [f"infbench.run={RUN_ID}",
                                      "infbench.variant=starlette-uvicorn",
                                      "infbench.replica=server"]
    assert pairs(argv, "--network") == ["host"]
    assert pairs(argv, "--user") == ["1000:1000"]
    assert "--init" in argv and "--sig-proxy=false" in argv and "-d" not in argv
    assert s.model_path is not None
    assert pairs(argv, "--mount") == [
        f"type=bind,source={s.out_dir.resolve()},target=/out",
        f"type=bind,source={s.model_path.parent.resolve()},target=/models,readonly"]
    env = dict(e.split("=", 1) for e in pairs(argv, "--env"))
    assert env == {"PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "INFBENCH_SERVICE": "server", "INFBENCH_REPLICA": "0",
                   "INFBENCH_PORT": "43210", "INFBENCH_TIMING_DIR": "/out",
                   "PYTHONPATH": "/app",
                   "INFBENCH_MODEL_PATH": "/models/tiny-123456.keras",
                   "INFBENCH_ENDPOINT": "sync", "INFBENCH_CALL": "predict",
                   "INFBENCH_MAX_IMAGES": "128",
                   "INFBENCH_MAX_BODY_BYTES": str(64 * 2**20)}  # nothing of the host's
    image_at = argv.index("infbench-server:0123456789ab")
    inner = argv[image_at + 1:]
    py = dk.CONTAINER_PYTHON
    assert inner == mprof_argv(Path("/out/mprofile.dat"), 0.1,
                               server_argv(UVICORN.entry_service, s.values(dk.container_where(s)),
                                           py, "/out"), python=py)
    assert inner[:10] == [py, "-m", "mprof", "run", "--include-children", "--multiprocess",
                          "--exit-code", "--interval", "0.1", "-o"]
    assert inner[10] == "/out/mprofile.dat"
    assert pairs(inner, "--host") == ["127.0.0.1"] and pairs(inner, "--port") == ["43210"]


def test_run_argv_of_gunicorn_carries_workers_limit_and_env(tmp_path: Path) -> None:
    argv = dk.run_argv(spec(tmp_path, GUNICORN), "img:1")
    env = dict(e.split("=", 1) for e in pairs(argv, "--env"))
    assert env["INFBENCH_THREAD_LIMIT"] == "1" and env["MALLOC_ARENA_MAX"] == "2"
    assert pairs(argv, "--user") == [f"{os.getuid()}:{os.getgid()}"]
    inner = argv[argv.index("img:1") + 1:]
    assert "gunicorn" in inner and pairs(inner, "-w") == ["2"]
    assert pairs(inner, "-b") == ["127.0.0.1:43210"]


def test_probes_write_into_the_mounted_variant_folder(tmp_path: Path) -> None:
    v = with_server(UVICORN, probes=True, tracemalloc=True)
    env = dict(e.split("=", 1) for e in pairs(dk.run_argv(spec(tmp_path, v), "img:1"),
                                                "--env"))
    assert env["INFBENCH_PROBE_DIR"] == "/out" and env["INFBENCH_TRACEMALLOC"] == "1"


@pytest.mark.parametrize("change", [
    {"trim_each_request": True}, {"probes": True, "tracemalloc": True}, {"thread_limit": 3},
    {"endpoint": "async", "call": "predict_on_batch"}, {"env": {"MALLOC_ARENA_MAX": "2"}},
])
def test_native_and_docker_environments_agree(tmp_path: Path, change: dict[str, Any]) -> None:
    """One contract for both runtimes: every variable of ours reaches both, with the same
    value up to the paths (found by review: alloc-trim-each once ran as plain glibc in
    Docker, INFBENCH_TRIM_EACH missing)."""
    s = spec(tmp_path, with_server(UVICORN, **change))
    native = native_env(s)
    docker = dict(e.split("=", 1) for e in pairs(dk.run_argv(s, "img:1"), "--env"))
    paths = {str(s.out_dir): "/out", str(s.model_path): "/models/tiny-123456.keras",
             str(ROOT): "/app"}
    for key, value in docker.items():
        assert key in native, key
        if key != "PYTHONPATH":
            assert paths.get(native[key], native[key]) == value, key
    ours = {k for k in native if k.startswith("INFBENCH_") or k in change.get("env", {})}
    assert ours <= set(docker)


def test_container_and_image_names_are_valid_docker_names(tmp_path: Path) -> None:
    v = dataclasses.replace(UVICORN, name="My_Variant.v2 (test)")
    assert dki.image_tag("0123456789ab") == "infbench-server:0123456789ab"
    s = dataclasses.replace(spec(tmp_path, v), run_id="20260101-000000-smoke-abc123.1")
    assert dk.container_name(s) == \
        "infbench-20260101-000000-smoke-abc123.1-my_variant.v2-test-server"


# -- image tags ------------------------------------------------------------------------------
FILES = {"Dockerfile": b"FROM x\n", "requirements-server.txt": b"numpy==2.4.6\n",
         "servers/app_starlette.py": b"app = 1\n"}


def tag_hash(files: dict[str, bytes] = FILES, base: str = "infbench-base:bookworm",
             base_id: str = "sha256:aa") -> str:
    return dki.image_hash(files, base, base_id)


def test_image_hash_is_12_hex_and_stable() -> None:
    h = tag_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert tag_hash() == h


def test_image_hash_changes_with_files_and_base() -> None:
    h = tag_hash()
    assert tag_hash(files={**FILES, "servers/app_starlette.py": b"app = 2\n"}) != h
    assert tag_hash(files={**FILES, "servers/new.py": b""}) != h
    assert tag_hash(files={**FILES, "requirements-server.txt": b"numpy==2.4.5\n"}) != h
    assert tag_hash(base="python:3.11-slim") != h
    assert tag_hash(base_id="sha256:bb") != h


def test_the_context_is_the_dockerfile_the_pins_and_servers_only() -> None:
    files = dki.context_files("numpy==1\n")
    assert files["requirements-server.txt"] == b"numpy==1\n"
    assert files["Dockerfile"] == dki.DOCKERFILE.read_bytes()
    others = {k for k in files if k not in ("Dockerfile", "requirements-server.txt")}
    assert others and all(k.startswith("servers/") and "__pycache__" not in k for k in others)
    assert "servers/app_starlette.py" in others


def test_server_requirements_are_the_closure_pinned_by_the_lock() -> None:
    deps = {"tensorflow-cpu": ["numpy", "Keras", "setuptools"], "keras": ["numpy", "rich"],
            "rich": ["pygments"], "fastapi": ["starlette", "pydantic"]}
    lock = "# comment\nnumpy==2.4.6\nkeras==3.15.1\nrich==15.0.0\nPygments==2.21.0\n" \
           "matplotlib==3.11.2\nlocust==2.47.0\n"
    text = dki.server_requirements(lock, requires=lambda n: deps.get(n, []),
                                  version=lambda n: "9.9")
    pins = dict(ln.split("==") for ln in text.splitlines() if not ln.startswith("#"))
    assert pins["numpy"] == "2.4.6" and pins["keras"] == "3.15.1"
    assert pins["pygments"] == "2.21.0"  # a dependency of a dependency, from the lock
    assert pins["setuptools"] == "9.9"  # not in the lock: the installed version
    assert "matplotlib" not in pins and "locust" not in pins  # the harness's, not the servers'
    assert set(dki.SERVER_PACKAGES) <= set(pins)


def test_server_requirements_from_this_environment_cover_the_servers() -> None:
    pins = dict(ln.split("==") for ln in dki.server_requirements(dki.LOCK.read_text()).splitlines()
                if not ln.startswith("#"))
    lock = dki.read_lock(dki.LOCK.read_text())
    for name in ("tensorflow-cpu", "uvicorn", "gunicorn", "hypercorn", "memory-profiler"):
        assert pins[name] == lock[name]
    assert not {"locust", "matplotlib", "pytest", "mypy"} & set(pins)


# -- cgroup memory ---------------------------------------------------------------------------
STAT_V1 = """cache 104857600
rss 524288000
inactive_file 10485760
active_file 4194304
total_cache 104857600
total_rss 524288000
total_inactive_file 62914560
total_active_file 41943040
"""
STAT_V2 = """anon 524288000
file 104857600
kernel 8388608
active_file 41943040
inactive_file 62914560
"""


def test_docker_stats_figure_is_usage_minus_inactive_file() -> None:
    usage = 650 * 2**20
    v1 = dkc.parse_memory_stat(STAT_V1)
    assert v1["total_inactive_file"] == 60 * 2**20
    assert dkc.docker_stats_bytes(usage, v1) == 590 * 2**20  # v1: total_inactive_file
    v2 = dkc.parse_memory_stat(STAT_V2)
    assert dkc.docker_stats_bytes(usage, v2) == 590 * 2**20  # v2: inactive_file
    assert dkc.docker_stats_bytes(10, v2) == 10  # never below zero: the usage as it is
    assert dkc.docker_stats_bytes(usage, {}) == usage


MOUNTS = """25 30 0:23 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
V2_MOUNTS = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_cgroup_dir_v1_hybrid_and_v2() -> None:
    v1 = "12:devices:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n"
    assert dkc.cgroup_memory_dir(v1, MOUNTS) == (Path("/sys/fs/cgroup/memory/docker/abc"), 1)
    v2 = "0::/system.slice/docker-abc.scope\n"
    assert dkc.cgroup_memory_dir(v2, V2_MOUNTS) == (
        Path("/sys/fs/cgroup/system.slice/docker-abc.scope"), 2)
    nested = "35 31 0:32 /outer /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    assert dkc.cgroup_memory_dir("4:memory:/outer/docker/abc\n", nested) == (
        Path("/sys/fs/cgroup/memory/docker/abc"), 1)
    assert dkc.cgroup_memory_dir("4:memory:/docker/abc\n", V2_MOUNTS) is None


def test_parse_size_of_docker_stats() -> None:
    assert dkc.parse_size("512MiB ") == 512 * 2**20
    assert dkc.parse_size("1.5GiB") == int(1.5 * 2**30)
    assert dkc.parse_size("100kB") == 100_000
    assert dkc.parse_size("--") is None


def test_cgroup_monitor_samples_the_files_at_the_interval(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    cg = tmp_path / "cg"
    cg.mkdir()
    (cg / "memory.usage_in_bytes").write_text(str(650 * 2**20))
    (cg / "memory.stat").write_text(STAT_V1)
    monkeypatch.setattr(dkc, "cgroup_memory_dir", lambda *_: (cg, 1))
    monkeypatch.setattr(dkc.CgroupMonitor, "_pid", lambda self: os.getpid())
    out = tmp_path / "cgroup_memory.csv"
    mon = dkc.CgroupMonitor("c", out, 0.05)
    t0 = time.time()
    mon.start()
    time.sleep(0.6)
    (cg / "memory.usage_in_bytes").unlink()  # the container is gone: the monitor ends
    mon._thread.join(2)
    assert not mon._thread.is_alive()
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(dkc.CgroupMonitor.HEADER)
    assert 6 <= len(rows) <= 14
    assert all(float(r["mem_mb"]) == 590.0 and r["source"] == "cgroup-v1" for r in rows)
    times = [float(r["time"]) for r in rows]
    assert t0 <= times[0] and times == sorted(times)
    assert statistics.median(b - a for a, b in itertools.pairwise(times)) == \
        pytest.approx(0.05, abs=0.02)
    assert mon.source == cg


def test_summary_and_report_carry_the_cgroup_figures(tmp_path: Path) -> None:
    run_dir = synth.make_run(tmp_path, ("v1",))
    with (run_dir / "v1" / "cgroup_memory.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(dkc.CgroupMonitor.HEADER)
        for i in range(0, 521):  # mprof's synthetic curve + 20 MB (page cache, kernel)
            t = i / 10
            mb = 120.0 if t < 10 else 250.0 if t <= 42 else 210.0
            w.writerow([f"{synth.T0 + t:.4f}", f"{mb:.3f}", "", "", "cgroup-v1"])
    summary = report.build(run_dir)
    s = summary["variants"][0]
    assert s["cgroup_memory_mb"]["start"] == 120.0 and s["cgroup_memory_mb"]["peak"] == 250.0
    assert s["cgroup_memory_mb"]["after_cooldown"] == 210.0
    assert s["memory_mb"]["start"] == 100.0  # mprof's figures unchanged
    assert s["samples"]["cgroup"] == 521 and s["sources"]["cgroup_memory"] == "cgroup_memory.csv"
    md = (run_dir / "summary.md").read_text()
    assert "## Memory of the container (cgroup" in md
    assert "| v1 | 120 | 250 | +130 | 250 | 210 | +50 |" in md
    with (run_dir / "summary.csv").open() as f:
        row = next(csv.DictReader(f))
    assert row["cgroup_peak_mb"] == "250.0" and row["peak_mb"] == "200.0"
    assert analysis.parse_cgroup_csv(run_dir / "v1" / "missing.csv") == []


def test_native_summaries_have_no_cgroup_section(tmp_path: Path) -> None:
    run_dir = synth.make_run(tmp_path, ("v1",))
    s = report.build(run_dir)["variants"][0]
    assert "cgroup_memory_mb" not in s
    assert "cgroup" not in (run_dir / "summary.md").read_text()
    with (run_dir / "summary.csv").open() as f:
        assert "cgroup_peak_mb" not in f.readline()


# -- cleanup ---------------------------------------------------------------------------------
def test_stop_all_also_stops_and_removes_the_container(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The `docker run` client is a registered group: the one cleanup path removes the
    container (here a stand-in client and a recorded docker CLI)."""
    calls: list[tuple[str, ...]] = []

    removed: set[str] = set()

    def fake_docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[0] == "rm":
            removed.add(args[-1])
        gone = args[:2] == ("container", "inspect") and args[-1] in removed
        return subprocess.CompletedProcess(["docker", *args], 1 if gone else 0, "x\n", "")

    monkeypatch.setattr(dk, "docker", fake_docker)
    monkeypatch.setattr(dke, "docker", fake_docker)
    stopped: list[bool] = []
    group = dk.ContainerGroup([sys.executable, "-c", "import time; time.sleep(60)"],
                              name="infbench-run-v", log_path=tmp_path / "server.log",
                              on_stop=lambda: stopped.append(True))
    assert group in proc.live_groups()
    proc.stop_all(grace=1.0)
    assert not psutil.pid_exists(group.pid) or \
        psutil.Process(group.pid).status() == psutil.STATUS_ZOMBIE
    assert group not in proc.live_groups() and stopped == [True]
    assert ("stop", "--time", "1", "infbench-run-v") in calls
    assert ("rm", "--force", "--volumes", "infbench-run-v") in calls
    n = len(calls)
    group.stop(1.0)  # safe twice, and the second time asks docker nothing
    assert len(calls) == n


# -- no engine -------------------------------------------------------------------------------
def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infbench", "--results",
                           str(tmp_path / "results"), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("how", ["no docker on PATH", "dead socket"])
@pytest.mark.parametrize("cmd", [["run", "starlette-uvicorn", "--runtime", "docker", "--profile",
                                  "smoke", "--model", "tiny"],
                                 ["build", "starlette-gunicorn", "--model", "tiny"]])
def test_without_an_engine_docker_is_one_line_and_exit_1(tmp_path: Path, how: str,
                                                         cmd: list[str]) -> None:
    env = dict(os.environ, INFBENCH_RUNTIME="docker")  # `build` takes it from the environment
    if how == "no docker on PATH":
        empty = tmp_path / "bin"
        empty.mkdir()
        env["PATH"] = str(empty)
    else:
        if shutil.which("docker") is None:
            pytest.skip("no docker client installed to point at a dead socket")
        env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    started = time.monotonic()
    res = _cli(tmp_path, env, *cmd)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("infbench: error: RUNTIME=docker needs a Docker engine: ")
    assert "make docker-engine" in lines[0] and "scripts/docker-engine.sh start" in lines[0]
    assert res.stdout == ""  # before anything: no images, no model, no run folder
    assert not (tmp_path / "results").exists()
    assert time.monotonic() - started < 30


def test_an_unknown_runtime_is_one_line(tmp_path: Path) -> None:
    res = _cli(tmp_path, dict(os.environ), "build", "starlette-uvicorn", "--runtime", "podman")
    assert res.returncode == 1
    assert res.stderr.strip() == ("infbench: error: unknown runtime 'podman' "
                                  "(known: native, docker)")


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
    mp = analysis.parse_mprof(d / "mprofile.dat")
    cg = analysis.parse_cgroup_csv(d / "cgroup_memory.csv")
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
    # them (with vfs, the engine's copy of the image). Growth under load is anonymous: both
    # see the same growth.
    anon = s["processes_mb"]["anon"]["start"]
    assert s["memory_mb"]["start"] > 100 and anon > 50
    assert 0.9 * anon <= c["start"] <= 1.5 * s["memory_mb"]["start"] + 100
    assert abs(c["growth"] - s["memory_mb"]["growth"]) <= 20
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
    assert analysis.parse_mprof(run_dir / "starlette-uvicorn" / "mprofile.dat").mem
    assert analysis.parse_cgroup_csv(run_dir / "starlette-uvicorn" / "cgroup_memory.csv")


@pytest.mark.docker
@pytest.mark.integration
@pytest.mark.timeout(1500)
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
