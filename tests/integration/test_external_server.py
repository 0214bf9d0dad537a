"""server = "url": a server started outside the harness, measured as any service.

The server here is tests/fixtures/planted_app.py on Uvicorn, started by the test in its own
process group on a free loopback port; infbench is pointed at it by url (and pid), runs the
load, and must neither start nor end it. Killed mid-run, it is a fault: the run is not
complete.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infbench.launch.docker.cgroup import cgroup_memory_dir
from infbench.measure.cgroup import usage_file
from infbench.paths import HOST, ROOT
from tests.fixtures.helpers import child_env, free_port, running, the_run
from tests.fixtures.synth import TINY_MODEL

pytestmark = pytest.mark.integration


def experiments(url: str, pid: int, seconds: int, metrics: str = "", cgroup: str = "") -> str:
    return TINY_MODEL + f"""
[study]
variants = ["outside"]
profile = "short"
model = "tiny"

[profiles.short]
users = 2
spawn_rate = 2
steps = [{{ batch = 1, seconds = {seconds} }}]
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 2
wait = [0.05, 0.1]

[variants.outside]
server = "url"
url = "{url}"
""" + (f"pid = {pid}\n" if pid else "") + (f'metrics = "{metrics}"\n' if metrics else "") \
        + (f'cgroup = "{cgroup}"\n' if cgroup else "")


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", HOST,
            "--port", str(port), "--no-access-log"]
    with running(argv, child_env(), tmp_path / "outside.log", url + "/health", 60) as proc:
        yield proc, url


def run(tmp_path: Path, url: str, pid: int, seconds: int, metrics: str = "",
        cgroup: str = "") -> subprocess.Popen[str]:
    exp = tmp_path / "experiments.toml"
    exp.write_text(experiments(url, pid, seconds, metrics, cgroup))
    argv = [sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
            "--experiments", str(exp), "run", "outside", "--profile", "short"]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def test_a_server_started_outside_is_measured_and_left_running(
        tmp_path: Path, outside: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = outside
    p = run(tmp_path, url, proc.pid, 3, metrics=url + "/metrics")
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
    d = the_run(tmp_path / "r")
    assert json.loads((d / "run.json").read_text())["status"] == "complete", out[-3000:]
    counts = json.loads((d / "outside" / "step1-b1_counts.json").read_text())
    assert counts["finished"] > 0
    with (d / "outside" / "processes.csv").open() as f:
        pids = {int(row["pid"]) for row in csv.DictReader(f)}
    assert proc.pid in pids
    with (d / "outside" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    rss = [float(r["value"]) for r in rows if r["name"] == "process_resident_memory_bytes"]
    assert rss and min(rss) > 0
    assert {r["labels"] for r in rows if r["name"] == "planted_served_total"} == {
        'path="/predict",note="a, b"'}
    ph = json.loads((d / "outside" / "phases.json").read_text())
    seen = ph["metrics"]["server"]
    assert seen["failed"] == 0 and seen["samples"] >= 2 and seen["rss_mb_last"] > 0
    assert seen["file"] == "metrics.csv"
    assert proc.poll() is None  # not ours to end


def test_a_metrics_url_that_does_not_answer_is_a_fault(
        tmp_path: Path, outside: tuple[subprocess.Popen[bytes], str]) -> None:
    _, url = outside
    p = run(tmp_path, url, 0, 2, metrics=url + "/no-metrics-here")
    out, _ = p.communicate(timeout=240)
    assert p.returncode != 0, out[-3000:]
    d = the_run(tmp_path / "r")
    assert json.loads((d / "run.json").read_text())["status"] != "complete"
    ph = json.loads((d / "outside" / "phases.json").read_text())
    failed = [e for e in ph["events"] if e["kind"] == "metrics_failed"]
    assert len(failed) == 1 and failed[0]["fault"] and "HTTP 404" in failed[0]["detail"]
    assert ph["metrics"]["server"]["failed"] == ph["metrics"]["server"]["samples"] >= 2


def test_an_outside_server_killed_mid_run_is_a_fault(
        tmp_path: Path, outside: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = outside
    # No pid: the only sign of its death is that it stops answering.
    p = run(tmp_path, url, 0, 60)
    counts = tmp_path / "r"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(counts.glob("*/outside/step1-b1_counts.json"))
        if found and json.loads(found[0].read_text() or "{}").get("finished", 0) > 0:
            break
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=120)
    assert p.returncode != 0, out[-3000:]
    d = the_run(tmp_path / "r")
    assert json.loads((d / "run.json").read_text())["status"] != "complete"
    assert "stopped answering" in out, out[-3000:]


def test_an_outside_servers_cgroup_is_its_memory(
        tmp_path: Path, outside: tuple[subprocess.Popen[bytes], str]) -> None:
    proc, url = outside
    found = cgroup_memory_dir(Path(f"/proc/{proc.pid}/cgroup").read_text(),
                              Path("/proc/self/mountinfo").read_text())
    if found is None or usage_file(found[0]) is None:
        pytest.skip("no readable memory cgroup on this machine")
    p = run(tmp_path, url, 0, 2, cgroup=str(found[0]))
    out, _ = p.communicate(timeout=240)
    assert p.returncode == 0, out[-3000:]
    d = the_run(tmp_path / "r")
    with (d / "outside" / "cgroup_memory.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["mem_mb"]) > 0 for r in rows)
    ph = json.loads((d / "outside" / "phases.json").read_text())
    assert ph["cgroup"]["server"]["failed"] == 0
    summary = json.loads((d / "outside" / "summary.json").read_text())
    assert summary["cgroup_memory_mb"]["peak"] > 0


def test_a_cgroup_that_is_not_one_is_refused_before_the_load(
        tmp_path: Path, outside: tuple[subprocess.Popen[bytes], str]) -> None:
    _, url = outside
    p = run(tmp_path, url, 0, 2, cgroup=str(tmp_path))
    out, _ = p.communicate(timeout=240)
    assert p.returncode != 0
    assert "not a memory cgroup" in out, out[-3000:]
    ph = json.loads((the_run(tmp_path / "r") / "outside" / "phases.json").read_text())
    assert not any(x["kind"] == "step" for x in ph["phases"])
