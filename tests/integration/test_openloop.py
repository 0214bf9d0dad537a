"""Open loop against closed loop, and the load generator caught short, on real processes.

A server with a known service time (tests/fixtures/sleep_app.py: one request at a time, a fixed
sleep each) is driven through the whole harness by a profile with an open-loop step and a
closed-loop step. Slowed on purpose below the offered rate, the open-loop step keeps sending on
schedule and its latency, measured from the intended send time, climbs as the queue builds; the
closed-loop users simply send less and their latency stays flat, hiding the queue an open
system would have built. The test asserts the difference, not any timing.

Then Locust itself is starved of CPU (niced and pinned to a core with a CPU hog) during a step:
the step is flagged as limited by the load generator; the same step without the squeeze is not.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import loadgen, trust
from infbench.analysis.stability import RequestRow, read_requests
from infbench.config import Profile, Step
from infbench.launch import proc
from infbench.measure import assets, load
from infbench.measure import loadgen as measure_loadgen
from infbench.paths import ROOT
from tests.fixtures.synth import TINY_MODEL

# Send rates, queue growth and the load generator's own saturation: figures another test's load
# would be in, so `make test` runs these alone (serial).
pytestmark = [pytest.mark.integration, pytest.mark.serial]

SLEEP_SERVER = """server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.sleep_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
"""

EXPERIMENTS = f"""
[study]
variants = ["sleep-fast", "sleep-slow"]
profile = "open-closed"
model = "tiny"
{TINY_MODEL}
[profiles.open-closed]
description = "20 req/s open loop, then 2 closed-loop users without waiting"
arrival = "constant"
steps = [{{ batch = 1, seconds = 5, rate = 20 }},
         {{ batch = 1, seconds = 5, users = 2, spawn_rate = 2 }}]
wait = [0.0, 0.0]
baseline = 0.5
pause = 0.5
cooldown = 0.5
drain_timeout = 10
request_timeout = 30
stable_window_s = 1

[variants.sleep-fast]
description = "10 ms a request, one at a time: capacity 100 req/s"
{SLEEP_SERVER}env = {{ INFBENCH_SLEEP_MS = "10" }}

[variants.sleep-slow]
description = "100 ms a request, one at a time: capacity 10 req/s, half the offered rate"
{SLEEP_SERVER}env = {{ INFBENCH_SLEEP_MS = "100" }}
"""


def by_intent(rows: list[RequestRow]) -> list[RequestRow]:
    """Requests in the order they were meant to be sent (finish time - latency)."""
    return sorted(rows, key=lambda r: r.t_end - r.latency_ms / 1000)


def thirds(rows: list[RequestRow]) -> tuple[float, float]:
    """Median latency of the first and of the last third of the requests, by intended time."""
    rows = by_intent(rows)
    k = len(rows) // 3
    return (statistics.median(r.latency_ms for r in rows[:k]),
            statistics.median(r.latency_ms for r in rows[-k:]))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("openloop")
    exp = tmp / "experiments.toml"
    exp.write_text(EXPERIMENTS)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp / "results"),
                          "--experiments", str(exp), "run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    runs = [p for p in (tmp / "results").iterdir() if p.is_dir() and not p.is_symlink()]
    assert len(runs) == 1
    return runs[0]


def summary(run_dir: Path, variant: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / variant / "summary.json").read_text())
    return data


def test_open_loop_sends_on_schedule_whatever_the_server_does(run_dir: Path) -> None:
    for variant in ("sleep-fast", "sleep-slow"):
        ol = summary(run_dir, variant)["steps"][0]["open_loop"]
        assert ol is not None and ol["rate"] == 20 and ol["arrival"] == "constant"
        # The slow server finishes 10 a second; the schedule still sent 20 a second.
        assert ol["send_rate"] == pytest.approx(20, rel=0.1), (variant, ol)
    slow = summary(run_dir, "sleep-slow")["steps"]
    assert slow[1]["open_loop"] is None and slow[1]["users"] == 2
    # Closed-loop users wait for each answer: against 10 req/s they cannot send 20.
    assert slow[1]["rps"] < 15 < slow[0]["open_loop"]["send_rate"]


def test_open_loop_latency_shows_the_queue_a_closed_loop_hides(run_dir: Path) -> None:
    slow = run_dir / "sleep-slow"
    fast = run_dir / "sleep-fast"
    open_slow = read_requests(slow / "step1-b1_requests.csv")
    closed_slow = read_requests(slow / "step2-b1_requests.csv")
    open_fast = read_requests(fast / "step1-b1_requests.csv")
    assert open_slow and closed_slow and open_fast
    assert all(r.lag_ms is not None for r in open_slow)  # open-loop rows carry the send lag
    assert all(r.lag_ms is None for r in closed_slow)
    # Open loop, server slowed below the rate: the later a request was meant to go, the
    # longer it waited; the same load on the fast server does not climb like that.
    early, late = thirds(open_slow)
    assert late > 2 * early, (early, late)
    assert late > 10 * thirds(open_fast)[1]
    # Closed loop on the same slow server: flat latency, the queue is invisible.
    c_early, c_late = thirds(closed_slow)
    assert c_late < 1.5 * c_early, (c_early, c_late)
    assert max(r.latency_ms for r in closed_slow) < statistics.median(
        r.latency_ms for r in open_slow)


def test_a_queue_that_keeps_growing_is_not_stable_and_is_said_out_loud(run_dir: Path) -> None:
    step = summary(run_dir, "sleep-slow")["steps"][0]
    assert step["stable"] is False and "p50" in step["stability"]["reason"]
    assert step["open_loop"]["cap_hits"] == 0  # the default cap (512) was never reached
    md = (run_dir / "summary.md").read_text()
    assert "| 20/s constant |" in md and "| 2 users |" in md
    assert "## Read with care" in md and "sleep-slow** step 1 (b1): not stable: p50" in md


# -- the load generator starved -------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def sleep_server(ms: int) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "INFBENCH_SLEEP_MS": str(ms)}
    p = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.fixtures.sleep_app:app", "--host",
                          "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level",
                          "warning"], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port),
                                                                       timeout=0.5):
                break
            time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=10)
        proc.stop_all()


def wait_for(step: load.StepLoad, key: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not step.counts().get(key):
        assert step.group.alive() and time.monotonic() < deadline, f"no {key}"
        time.sleep(0.1)


def run_step(host: str, out: Path, squeeze: bool) -> dict[str, Any]:
    """A light closed-loop step (4 users, 50-100 ms apart); with `squeeze`, Locust is niced to
    19 and pinned to one core beside two CPU hogs for as long as its load runs."""
    out.mkdir()
    profile = Profile(name="light", steps=(Step(1, 8.0),), users=4, spawn_rate=4.0,
                      wait=(0.05, 0.1), drain_timeout=5, request_timeout=10)
    step = load.start_step(profile, profile.steps[0], 1, host, out, assets.images_dir())
    hog = None
    try:
        wait_for(step, "test_start")
        if squeeze:
            core = min(os.sched_getaffinity(0))
            # Two hogs, one process group: with one, a niced Locust's demand (CPU + run-queue
            # wait) came out at 89%, under the 90% mark, in a fresh container.
            hog = subprocess.Popen([sys.executable, "-c", "import os\nos.fork()\nwhile True: pass"],
                                   start_new_session=True)
            time.sleep(0.2)
            for pid in measure_loadgen.group_pids(hog.pid):
                os.sched_setaffinity(pid, {core})
            for pid in measure_loadgen.group_pids(step.group.pid):
                os.sched_setaffinity(pid, {core})
                os.setpriority(os.PRIO_PROCESS, pid, 19)
            # Locust leads its own session, so with autogroups nice alone weighs it only
            # against its own session: its group is niced too, where the kernel has them.
            with contextlib.suppress(OSError):
                Path(f"/proc/{step.group.pid}/autogroup").write_text("19")
            wait_for(step, "test_stopping", timeout=120)
            os.killpg(hog.pid, signal.SIGKILL)  # let it write its files at normal speed
            hog.wait()
            hog = None
        step.group.popen.wait(timeout=120)
    finally:
        if hog is not None:
            os.killpg(hog.pid, signal.SIGKILL)
            hog.wait()
        step.group.stop(grace=2.0)
    c = step.counts()
    assert c.get("finished", 0) > 0
    g = loadgen.figures(out / "step1-b1_loadgen.csv", c["test_start"], c["test_stopping"])
    assert g is not None
    return g


def test_a_starved_load_generator_is_flagged_and_a_free_one_is_not(tmp_path: Path) -> None:
    with sleep_server(0) as host:
        free = run_step(host, tmp_path / "free", squeeze=False)
        squeezed = run_step(host, tmp_path / "squeezed", squeeze=True)
    assert free["limited"] is False, free
    assert squeezed["limited"] is True and squeezed["note"], squeezed
    assert squeezed["how"] == "starved" and squeezed["wait_pct"] > free["wait_pct"]


def test_the_in_flight_cap_is_counted_never_silent(tmp_path: Path) -> None:
    profile = Profile(name="capped", steps=(Step(1, 3.0, rate=20.0),), arrival="constant",
                      max_in_flight=3, drain_timeout=10, request_timeout=10)
    with sleep_server(100) as host:
        step = load.start_step(profile, profile.steps[0], 1, host, tmp_path,
                               assets.images_dir())
        try:
            step.group.popen.wait(timeout=120)
        finally:
            step.group.stop(grace=2.0)
    c = step.counts()
    ol = c["open_loop"]
    # 20/s offered to a server that finishes 10/s, 3 at most in flight.
    assert ol["in_flight_max"] == 3 and ol["cap_hits"] > 0 and ol["cap_wait_s"] > 0
    assert c["started"] == c["finished"] == ol["sent"]
    figures = trust.open_loop_figures(c, c["test_stopping"])
    assert figures is not None
    notes = trust.open_loop_notes(figures)
    assert any("in-flight cap (3) hit" in n for n in notes), notes
    if ol["not_sent"]:
        assert any("never sent" in n for n in notes)
    # The wait for a slot is in the latency: the latency grows though only 3 are in flight.
    rows = read_requests(tmp_path / "step1-b1_requests.csv")
    assert rows is not None and len(rows) == c["finished"]
    early, late = thirds(rows)
    assert late > 2 * early, (early, late)
