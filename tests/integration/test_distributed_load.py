"""load_processes / load_external_workers: Locust's master and its workers inside a run.

The server is tests/fixtures/planted_app.py on Uvicorn, started outside the harness (as in
test_external_server.py) so that no model process shares the cores. Checked: the counters
and request logs of every worker merged into the step's (the master's stats CSV counts the
same requests), an open-loop rate split across the workers (each sends its share, not the
whole rate), every process's CPU sampled; a worker killed mid-step by its process group is a
fault and the run is not complete; an external worker started by the test from the script
the harness writes joins the master and the run completes; an until_stable step is ended by
the master from the rows its workers send; the workers drain their in-flight requests after the
master quits.
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

import psutil
import pytest

from infbench.paths import HOST, ROOT
from tests.fixtures.helpers import child_env, free_port, running, the_run
from tests.fixtures.synth import TINY_MODEL

pytestmark = pytest.mark.integration

RATE = 20.0


def experiments(url: str, extra: str, steps: str, drain: float = 2) -> str:
    return TINY_MODEL + f"""
[study]
variants = ["outside"]
profile = "dist"
model = "tiny"

[profiles.dist]
users = 4
spawn_rate = 4
steps = {steps}
baseline = 0.5
pause = 0.5
cooldown = 0.5
drain_timeout = {drain:g}
wait = [0.02, 0.05]
arrival = "constant"
{extra}

[variants.outside]
server = "url"
url = "{url}"
"""


def planted_server(factory: pytest.TempPathFactory, **env: str) -> Iterator[str]:
    port = free_port()
    url = f"http://{HOST}:{port}"
    argv = [sys.executable, "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", HOST,
            "--port", str(port), "--no-access-log"]
    log = factory.mktemp("outside") / "outside.log"
    with running(argv, child_env(**env), log, url + "/health", 60):
        yield url


# One server per class, and each test a class of its own: xdist's loadscope spreads them.
@pytest.fixture(scope="class")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from planted_server(tmp_path_factory)


@pytest.fixture(scope="class")
def slow_outside(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The same server, answering each /predict 10 s late."""
    yield from planted_server(tmp_path_factory, PLANTED_DELAY_MS="10000")


def start(tmp_path: Path, url: str, extra: str, steps: str,
          flags: tuple[str, ...] = (), drain: float = 2) -> subprocess.Popen[str]:
    exp = tmp_path / "experiments.toml"
    exp.write_text(experiments(url, extra, steps, drain))
    argv = [sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
            "--experiments", str(exp), "run", "outside", "--profile", "dist", *flags]
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env=child_env())


def wait_for(pattern: str, root: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError(f"no {pattern} under {root} after {timeout:g} s")


def aggregated(stats: Path) -> int:
    with stats.open() as f:
        (row,) = [r for r in csv.DictReader(f) if r["Name"] == "Aggregated"]
    return int(row["Request Count"])


class TestMerged:
    def test_two_workers_are_merged_and_split_the_open_loop(self, tmp_path: Path,
                                                            outside: str) -> None:
        steps = f"[{{ batch = 1, seconds = 3 }}, {{ batch = 2, seconds = 3, rate = {RATE:g} }}]"
        # The flag, not the profile, asks for the workers here.
        p = start(tmp_path, outside, "", steps, ("--load-processes", "2"))
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
        d = the_run(tmp_path / "r") / "outside"
        assert json.loads((d.parent / "run.json").read_text())["status"] == "complete", out[-3000:]
        for name in ("step1-b1", "step2-b2"):
            merged = json.loads((d / f"{name}_counts.json").read_text())
            parts = [json.loads((d / f"{name}_w{k}_counts.json").read_text()) for k in (1, 2)]
            assert merged["parts_missing"] == []
            assert merged["finished"] == sum(x["finished"] for x in parts) > 0
            assert all(x["finished"] > 0 for x in parts), "each worker sent a share"
            with (d / f"{name}_requests.csv").open() as f:
                rows = list(csv.DictReader(f))
            assert len(rows) == merged["finished"] == merged["merged_requests"]
            assert [float(r["t_end"]) for r in rows] == sorted(float(r["t_end"]) for r in rows)
            # The master's stats CSV (Locust's own aggregation of the workers' reports) counts
            # the same requests as the merged log.
            assert aggregated(d / f"{name}_stats.csv") == merged["finished"]
            with (d / f"{name}_loadgen.csv").open() as f:
                pids = {r["pid"] for r in csv.DictReader(f)}
            assert len(pids) >= 3  # the master and both workers
        ol = json.loads((d / "step2-b2_counts.json").read_text())["open_loop"]
        assert ol["rate"] == RATE  # the shares add up to the profile's rate
        for k in (1, 2):
            part = json.loads((d / f"step2-b2_w{k}_counts.json").read_text())
            share = part["open_loop"]
            assert share["rate"] == RATE / 2
            # A schedule can send no more than was due: RATE/2 per second of its own span.
            span = part["test_stopping"] - share["schedule_start"]
            assert 0 < share["scheduled"] <= RATE / 2 * span + 1
        summary = json.loads((d / "summary.json").read_text())
        gen = [s["loadgen"] for s in summary["steps"] if s.get("loadgen")]
        assert gen and all(len(g["per_process"]) >= 3 for g in gen)


class TestKilledWorker:
    def test_a_worker_killed_mid_step_is_a_fault(self, tmp_path: Path, outside: str) -> None:
        p = start(tmp_path, outside, "load_processes = 2", "[{ batch = 1, seconds = 8 }]")
        counts = wait_for("*/outside/step1-b1_w1_counts.json", tmp_path / "r")
        deadline = time.monotonic() + 60
        while json.loads(counts.read_text() or "{}").get("finished", 0) == 0:
            assert time.monotonic() < deadline, "worker 1 never finished a request"
            time.sleep(0.1)
        (worker,) = [c for c in psutil.Process(p.pid).children(recursive=True)
                     if "--worker" in c.cmdline() and str(counts.parent / "step1-b1_w1")
                     in json.dumps(c.environ())]
        os.killpg(worker.pid, signal.SIGKILL)  # its own group: the master and worker 2 live on
        out, _ = p.communicate(timeout=240)
        assert p.returncode != 0, out[-3000:]
        d = the_run(tmp_path / "r")
        assert json.loads((d / "run.json").read_text())["status"] != "complete"
        ph = json.loads((d / "outside" / "phases.json").read_text())
        died = [e for e in ph["events"] if e["kind"] == "load_worker_died"]
        assert len(died) == 1 and died[0]["fault"] and died[0]["worker"] == 1
        assert "killed by signal 9" in died[0]["detail"]
        assert "Locust worker 1 of step 1 killed by signal 9" in out


class TestExternalWorker:
    def test_an_external_worker_joins_the_master(self, tmp_path: Path, outside: str) -> None:
        port = free_port()
        extra = f"load_external_workers = 1\nload_master_port = {port}\nload_worker_wait = 60"
        p = start(tmp_path, outside, extra, "[{ batch = 1, seconds = 3 }]")
        script = wait_for("*/outside/step1-b1_worker2.sh", tmp_path / "r")
        env = {k: v for k, v in child_env().items() if not k.startswith("INFBENCH_")}
        log = (tmp_path / "worker2.log").open("wb")
        worker = subprocess.Popen(["sh", str(script), HOST], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=240)
            worker.wait(timeout=30)
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            log.close()
        assert p.returncode == 0, out[-3000:] + (tmp_path / "worker2.log").read_text()[-2000:]
        d = the_run(tmp_path / "r")
        assert json.loads((d / "run.json").read_text())["status"] == "complete"
        merged = json.loads((d / "outside" / "step1-b1_counts.json").read_text())
        assert merged["workers"][1]["finished"] > 0  # the one the test started
        assert merged["finished"] == aggregated(d / "outside" / "step1-b1_stats.csv")

    def test_a_worker_that_never_comes_fails_the_step(self, tmp_path: Path,
                                                      outside: str) -> None:
        p = start(tmp_path, outside, "load_external_workers = 1\nload_worker_wait = 2",
                  "[{ batch = 1, seconds = 2 }]")
        out, _ = p.communicate(timeout=240)
        assert p.returncode != 0, out[-3000:]
        d = the_run(tmp_path / "r")
        assert json.loads((d / "run.json").read_text())["status"] != "complete"
        ph = json.loads((d / "outside" / "phases.json").read_text())
        failed = [e for e in ph["events"] if e["kind"] == "load_failed"]
        assert failed and "Gave up waiting for workers" in failed[0]["detail"], out[-3000:]


class TestUntilStable:
    def test_the_master_ends_a_stable_step_from_its_workers_rows(self, tmp_path: Path,
                                                                 outside: str) -> None:
        # A loose tolerance: the mechanism is under test here, not the rule (tests/unit).
        extra = ("load_processes = 2\nstable_window_s = 1\nstable_windows = 3\n"
                 "stable_tolerance = 0.5")
        p = start(tmp_path, outside, extra, "[{ batch = 1, seconds = 60, until_stable = true }]")
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
        d = the_run(tmp_path / "r") / "outside"
        merged = json.loads((d / "step1-b1_counts.json").read_text())
        assert merged["stable_at"] is not None, out[-3000:]
        assert len(merged["windows"]) >= 3
        # Ended by the master's rule, long before the step's 60 s.
        assert merged["test_stopping"] - merged["test_start"] < 45
        # The windows the master judged count every worker's requests: their rows add up to
        # about what the merged log has in those windows (none lost on the way).
        with (d / "step1-b1_requests.csv").open() as f:
            ends = [float(r["t_end"]) for r in csv.DictReader(f)]
        last = merged["windows"][-1]
        in_last = sum(1 for t in ends if last["t"] - 1 <= t < last["t"])
        # (the log's t_end has 4 decimals: a row at a window's edge may round across it)
        assert abs(in_last - round(last["rps"] * 1)) <= 2, (in_last, last)
        parts = [json.loads((d / f"step1-b1_w{k}_counts.json").read_text()) for k in (1, 2)]
        assert all(x["finished"] > 0 for x in parts)
        assert all(x.get("stable_at") is None for x in parts), "a worker judged nothing"


class TestWorkersDrain:
    def test_the_workers_finish_their_requests_after_the_master_quits(
            self, tmp_path: Path, slow_outside: str) -> None:
        # Every request is still in flight when the 2 s step ends, and takes 8 s more: the
        # master quits at once, and the workers' drain (up to drain_timeout) must be waited
        # for, not cut off with their processes.
        extra = "load_processes = 2\nrequest_timeout = 20"
        p = start(tmp_path, slow_outside, extra, "[{ batch = 1, seconds = 2 }]", drain=15)
        out, _ = p.communicate(timeout=240)
        assert p.returncode == 0, out[-3000:]
        d = the_run(tmp_path / "r")
        assert json.loads((d / "run.json").read_text())["status"] == "complete", out[-3000:]
        merged = json.loads((d / "outside" / "step1-b1_counts.json").read_text())
        assert merged["parts_missing"] == [] and merged["failed"] == 0
        assert merged["finished"] == merged["started"] >= 4  # each user's one request
        with (d / "outside" / "step1-b1_requests.csv").open() as f:
            latencies = [float(r["latency_ms"]) for r in csv.DictReader(f)]
        assert len(latencies) == merged["finished"] and min(latencies) >= 10000
