"""The Docker runtime: command lines, image tags, cgroup memory and the error without an engine
(no engine needed), and one real-engine smoke run (marked `docker`; make test-docker)."""

from __future__ import annotations

import csv
import dataclasses
import itertools
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from infbench.config import Variant, one_service, with_server
from infbench.launch import loopback, proc
from infbench.launch.argv import mprof_argv, server_argv
from infbench.launch.contract import ReplicaSpec
from infbench.launch.docker import cgroup as dkc
from infbench.launch.docker import container as dk
from infbench.launch.docker import engine as dke
from infbench.launch.docker import image as dki
from infbench.launch.native import native_env
from infbench.paths import ROOT
from infbench.report import build
from infbench.results import samples
from tests.fixtures import synth

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
                   "INFBENCH_MAX_BODY_BYTES": str(64 * 2**20), "INFBENCH_DEVICE": "cpu",
                   # nothing of the host's but which hosts bypass a proxy (loopback's)
                   **loopback.no_proxy_vars()}
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
         "servers/image/app_starlette.py": b"app = 1\n"}


def tag_hash(files: dict[str, bytes] = FILES, base: str = "infbench-base:bookworm",
             base_id: str = "sha256:aa") -> str:
    return dki.image_hash(files, base, base_id)


def test_image_hash_is_12_hex_and_stable() -> None:
    h = tag_hash()
    assert len(h) == 12 and int(h, 16) >= 0
    assert tag_hash() == h


def test_image_hash_changes_with_files_and_base() -> None:
    h = tag_hash()
    assert tag_hash(files={**FILES, "servers/image/app_starlette.py": b"app = 2\n"}) != h
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
    assert "servers/image/app_starlette.py" in others


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
    # Anonymous memory, without the file pages: v1 total_rss, v2 anon; none in neither.
    assert dkc.anon_bytes(v1) == dkc.anon_bytes(v2) == 500 * 2**20
    assert dkc.anon_bytes({"rss": 7}) == 7 and dkc.anon_bytes({"file": 7}) is None
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
    deadline = time.monotonic() + 60  # six samples, however busy the machine
    while (not out.exists() or len(out.read_text().splitlines()) < 7) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    elapsed = time.time() - t0
    (cg / "memory.usage_in_bytes").unlink()  # the container is gone: the monitor ends
    mon._thread.join(10)
    assert not mon._thread.is_alive()
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(dkc.CgroupMonitor.HEADER)
    assert 6 <= len(rows) <= (elapsed + 10) / 0.05 + 1  # at most one a 0.05 s
    assert all(float(r["mem_mb"]) == 590.0 and r["source"] == "cgroup-v1" for r in rows)
    assert all(int(r["anon_bytes"]) == 500 * 2**20 for r in rows)  # total_rss
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
            anon = "" if i == 0 else int((mb - 40) * 2**20)  # less its file pages
            w.writerow([f"{synth.T0 + t:.4f}", f"{mb:.3f}", "", "", anon, "cgroup-v1"])
    built = build.build(run_dir)
    s = built["variants"][0]
    assert s["cgroup_memory_mb"]["start"] == 120.0 and s["cgroup_memory_mb"]["peak"] == 250.0
    assert s["cgroup_memory_mb"]["after_cooldown"] == 210.0
    assert s["cgroup_anon_mb"]["start"] == 80.0 and s["cgroup_anon_mb"]["growth"] == 130.0
    assert "cgroup_anon_mb" in s["definitions"]
    assert s["memory_mb"]["start"] == 100.0  # mprof's figures unchanged
    assert s["samples"]["cgroup"] == 521 and s["sources"]["cgroup_memory"] == "cgroup_memory.csv"
    md = (run_dir / "summary.md").read_text()
    assert "## Memory of the container (cgroup" in md
    assert "| v1 | 120 | 250 | +130 | +130 | 250 | 210 | +50 |" in md
    with (run_dir / "summary.csv").open() as f:
        row = next(csv.DictReader(f))
    assert row["cgroup_peak_mb"] == "250.0" and row["peak_mb"] == "200.0"
    assert samples.parse_cgroup_csv(run_dir / "v1" / "missing.csv") == []
    html = (run_dir / "report.html").read_text()
    assert "Memory of the container" in html and "anonymous growth" in html


def test_native_summaries_have_no_cgroup_section(tmp_path: Path) -> None:
    run_dir = synth.make_run(tmp_path, ("v1",))
    s = build.build(run_dir)["variants"][0]
    assert "cgroup_memory_mb" not in s
    md = (run_dir / "summary.md").read_text()
    # (the word itself may stand in the definitions: the machine's limit caps the usable cores
    # by the cgroup's CPU quota)
    assert "Memory of the container" not in md and "cgroup_memory" not in md
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
        # Without a docker client this is the case above again (the same one line), not a skip.
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
