"""A topology for real: API + real Redis + model worker replicas, through the CLI.

The artifacts per service are checked against their raw files; a worker killed mid-step is a
counted fault while the run goes on; Redis killed mid-step is one clear error with nothing left
running; Ctrl-C leaves no process. Tiny model, seconds of load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import summary
from infbench.measure import redis as redis_mon
from infbench.paths import ROOT
from infbench.results import samples
from tests.fixtures.helpers import left_running, the_run

pytestmark = pytest.mark.requires("redis-server")


EXTRA = """
[profiles.queue-long]
users = 3
spawn_rate = 3
predict_weight = 10
feedback_weight = 1
on_start = "/"
wait = [0.05, 0.2]
steps = [{ batch = 1, seconds = 60 }]
baseline = 1
pause = 1
cooldown = 1
drain_timeout = 8
request_timeout = 20

[variants.queue-test]
description = "queue-replicas-2 with short job timeouts, for the fault tests"
base = "queue-replicas-2"
[variants.queue-test.services.api]
env = { INFBENCH_JOB_TIMEOUT = "3", INFBENCH_FEEDBACK_TTL = "60" }
"""


def experiments(tmp_path: Path) -> Path:
    exp = tmp_path / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    return exp


def argv(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
            "--experiments", str(experiments(tmp_path)), *args]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("queue")
    res = subprocess.run(argv(tmp, "run", "queue-replicas-2", "--profile", "queue-smoke",
                              "--model", "tiny-onnx"), cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    return the_run(tmp / "r"), res


def test_the_topology_runs_and_ends_clean(smoke: tuple[Path, Any]) -> None:
    run_dir, res = smoke
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
    assert left_running(run_dir) == []
    d = run_dir / "queue-replicas-2"
    ph = json.loads((d / "phases.json").read_text())
    assert set(ph["services"]) == {"redis-0", "model-0", "model-1", "api-0"}
    order = sorted(ph["services"], key=lambda k: ph["services"][k]["start"])
    assert order[0] == "redis-0" and order[-1] == "api-0"  # dependency order
    stops = sorted(ph["services"], key=lambda k: ph["services"][k]["stop"])
    assert stops[0] == "api-0" and stops[-1] == "redis-0"  # reverse order
    for label in ph["services"]:
        assert (d / label / "mprofile.dat").stat().st_size > 0
        assert ph["services"][label]["healthy"] >= ph["services"][label]["start"]
    assert ph["events"] == [] or all(not e["fault"] for e in ph["events"])


def test_per_service_figures_come_from_the_raw_files(smoke: tuple[Path, Any]) -> None:
    run_dir, _ = smoke
    d = run_dir / "queue-replicas-2"
    s = json.loads((d / "summary.json").read_text())
    services = s["services"]
    assert services["model"]["replicas"] == 2 and services["redis"]["replicas"] == 1
    # The model service's memory is its two replicas' MEM summed.
    ph = json.loads((d / "phases.json").read_text())
    m0 = samples.parse_mprof(d / "model-0" / "mprofile.dat")
    m1 = samples.parse_mprof(d / "model-1" / "mprofile.dat")
    summed = summary.sum_series([m0.mem, m1.mem])
    assert services["model"]["memory_mb"] == summary.memory_figures(summed, ph["phases"])
    assert services["model"]["memory_mb"]["start"] > services["api"]["memory_mb"]["start"]
    # The sampler saw every replica's processes, labelled.
    rows = samples.process_rows(d / "processes.csv")
    assert {(r["service"], r["replica"]) for r in rows} >= {
        ("redis", 0), ("model", 0), ("model", 1), ("api", 0)}
    # Redis was sampled over its own protocol; the queue was read.
    stats = redis_mon.read_samples(d / "redis-0" / "redis_stats.csv")
    assert len(stats) >= 3 and all("queue_length" in x for x in stats)
    # The time split per step came from the API's timing lines.
    (split,) = s["split"]
    timings = summary.read_timings(d)
    assert timings and split["split"]["requests"] <= len(timings)
    assert split["split"]["model_ms"] is not None and split["split"]["queue_wait_ms"] is not None
    # Locust ran the task mix: predictions, feedback and the start page.
    names = (d / "step1-b1_stats.csv").read_text()
    assert "/feedback" in names and "GET /" in names


def test_the_report_shows_services_split_and_redis(smoke: tuple[Path, Any]) -> None:
    run_dir, _ = smoke
    text = (run_dir / "summary.md").read_text()
    assert "## Per service" in text and "| queue-replicas-2 | model | 2 |" in text
    assert "## Where the time goes" in text


def start(tmp_path: Path, variant: str, profile: str) -> subprocess.Popen[str]:
    return subprocess.Popen(argv(tmp_path, "run", variant, "--profile", profile, "--model",
                                 "tiny-onnx"), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_load(tmp_path: Path, variant: str, timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for c in (tmp_path / "r").glob(f"*/{variant}/step1-b1_counts.json"):
            try:
                if json.loads(c.read_text()).get("finished", 0) > 5:
                    return c.parent
            except ValueError:
                pass
        time.sleep(0.3)
    raise AssertionError("the load never got going")


def pids_of(d: Path, label: str) -> list[int]:
    ph = json.loads((d / "phases.json").read_text())
    pids: list[int] = ph["services"][label]["pids"]
    return pids


def test_a_killed_worker_is_a_fault_and_the_run_goes_on(tmp_path: Path) -> None:
    p = start(tmp_path, "queue-test", "queue-long")
    d = wait_load(tmp_path, "queue-test")
    for pid in pids_of(d, "model-1"):
        os.kill(pid, signal.SIGKILL)
    time.sleep(6)  # jobs the dead worker held time out (3 s) and are counted
    os.kill(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    ph = json.loads((d / "phases.json").read_text())
    died = [e for e in ph["events"] if e["kind"] == "replica_died"]
    assert died and died[0]["replica"] == "model-1" and died[0]["fault"], (ph["events"], out)
    assert "model-1 died" in out
    assert left_running(d.parent) == []


def test_redis_killed_mid_step_is_one_clear_error(tmp_path: Path) -> None:
    p = start(tmp_path, "queue-test", "queue-long")
    d = wait_load(tmp_path, "queue-test")
    for pid in pids_of(d, "redis-0"):
        os.kill(pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 1, out[-3000:]
    assert "FAILED queue-test: redis-0 exited during step" in out
    assert left_running(d.parent) == []
    assert json.loads((d.parent / "run.json").read_text())["status"] == "failed"


def test_ctrl_c_leaves_nothing(tmp_path: Path) -> None:
    p = start(tmp_path, "queue-test", "queue-long")
    d = wait_load(tmp_path, "queue-test")
    os.kill(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=120)
    assert p.returncode == 130, out[-3000:]
    assert left_running(d.parent) == []
    assert json.loads((d.parent / "run.json").read_text())["status"] == "interrupted"
