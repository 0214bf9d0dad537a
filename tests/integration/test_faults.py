"""Every fault is seen and said: the adversarial cases of the harness itself, for real.

A SIGKILLed harness leaves nothing behind, SIGHUP goes the clean way, someone else's process on
our port is refused, a restarted Gunicorn worker and a killed Locust keep a run from
`complete`, the server's own exit code and a health endpoint's 500 are named, a file-size limit
is a damaged artifact (not a crash), a background run's inherited SIGINT-ignore is undone.
The servers here are tests/fixtures/planted_app.py (no model: they start in a second).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from infbench.modes.sweep import body_limit, run_status
from infbench.paths import ROOT
from tests.fixtures.helpers import left_running, the_run
from tests.fixtures.synth import TINY_MODEL

pytestmark = pytest.mark.integration

PLANTED = ["{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]

EXPERIMENTS = TINY_MODEL + f"""
[study]
variants = ["planted"]
profile = "short"
model = "tiny"

[profiles.short]
users = 2
spawn_rate = 2
steps = [{{ batch = 1, seconds = 3 }}]
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 2
wait = [0.05, 0.1]

[profiles.long]
users = 2
spawn_rate = 2
steps = [{{ batch = 1, seconds = 60 }}]
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 2
wait = [0.05, 0.1]

[variants.planted]
server = "command"
command = {json.dumps(PLANTED)}

[variants.planted-gunicorn]
server = "command"
command = ["{{python}}", "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "2",
           "-b", "{{host}}:{{port}}", "tests.fixtures.planted_app:app"]

[variants.exits-3]
server = "command"
command = ["{{python}}", "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]

[variants.health-500]
server = "command"
command = ["{{python}}", "-m", "tests.fixtures.status_server", "{{port}}", "500"]
startup_timeout = 4

[variants.squatted]
server = "command"
# The real server never binds; a process outside our tree (double fork, own session) takes
# the port and answers 200: someone else's server on "our" port.
command = ["sh", "-c",
           "(setsid {{python}} -m tests.fixtures.status_server {{port}} 200 &) ; exec sleep 60"]
health_path = "/"
# Time for the squatter to start and bind on a busy machine (seen: over 20 s in CI with four
# test workers); the refusal comes as soon as it answers.
startup_timeout = 90
"""


def write_experiments(tmp_path: Path) -> Path:
    exp = tmp_path / "experiments.toml"
    exp.write_text(EXPERIMENTS)
    return exp


def argv(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
            "--experiments", str(write_experiments(tmp_path)), *args]


def cli(tmp_path: Path, *args: str, timeout: float = 180,
        preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(tmp_path, *args), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=preexec)


def run_dir(tmp_path: Path) -> Path:
    return the_run(tmp_path / "r")


def wait_for(path: Path, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared in {path}")


def start_background(tmp_path: Path, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(argv(tmp_path, *args), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def phases_of(tmp_path: Path, variant: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir(tmp_path) / variant / "phases.json").read_text())
    return data


def wait_step(tmp_path: Path, variant: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = list((tmp_path / "r").glob(f"*/{variant}/step1-b1_counts.json"))
        if counts:
            try:
                c = json.loads(counts[0].read_text())
            except ValueError:
                c = {}
            if c.get("test_start") and c.get("finished", 0) > 0:
                return
        time.sleep(0.2)
    raise AssertionError("the step never started")


def test_sigkill_of_the_harness_leaves_nothing_and_marks_the_run(tmp_path: Path) -> None:
    p = start_background(tmp_path, "run", "planted", "--profile", "long")
    wait_step(tmp_path, "planted")
    d = run_dir(tmp_path)
    assert left_running(d)  # mprof, the server, Locust are running now
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=10)
    deadline = time.monotonic() + 20
    watchdog = f"infbench.launch.watchdog {p.pid}"
    while (left_running(d) or any(watchdog in " ".join(x.info["cmdline"] or [])
                               for x in psutil.process_iter(["cmdline"]))) \
            and time.monotonic() < deadline:
        time.sleep(0.2)
    assert left_running(d) == []
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "interrupted" and "died" in info["error"]
    # The report reads what was measured, and says where it stopped.
    res = cli(tmp_path, "report", str(d))
    assert res.returncode == 0, res.stderr
    assert "run status: interrupted" in res.stdout


def test_sighup_goes_the_clean_way(tmp_path: Path) -> None:
    p = start_background(tmp_path, "run", "planted", "--profile", "long")
    wait_step(tmp_path, "planted")
    os.kill(p.pid, signal.SIGHUP)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 129, out[-2000:]
    d = run_dir(tmp_path)
    assert json.loads((d / "run.json").read_text())["status"] == "interrupted"
    assert left_running(d) == []


def test_an_inherited_ignored_sigint_is_undone(tmp_path: Path) -> None:
    p = start_background(tmp_path, "run", "planted", "--profile", "long",
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    wait_step(tmp_path, "planted")
    os.kill(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 130, out[-2000:]
    assert left_running(run_dir(tmp_path)) == []


def test_someone_elses_server_on_our_port_is_refused(tmp_path: Path) -> None:
    try:
        res = cli(tmp_path, "run", "squatted", "--profile", "short", timeout=120)
        assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
        assert "is taken by another process, not ours" in res.stdout
        assert "tests.fixtures.status_server" in res.stdout  # it names the squatter
        d = run_dir(tmp_path)
        ph = phases_of(tmp_path, "squatted")
        assert ph["status"] == "failed" and not any(p["kind"] == "step" for p in ph["phases"])
        assert not list((d / "squatted").glob("step*"))  # no load was sent
    finally:
        # The squatter left our process tree on purpose; end it by its port (this run's).
        port = str(phases_of(tmp_path, "squatted")["services"]["server"]["ports"]["port"])
        for p in psutil.process_iter(["cmdline"]):
            cmd = p.info["cmdline"] or []
            if "tests.fixtures.status_server" in cmd and port in cmd:
                with contextlib.suppress(psutil.Error):
                    p.kill()


def test_the_servers_own_exit_code_is_named(tmp_path: Path) -> None:
    res = cli(tmp_path, "run", "exits-3", "--profile", "short")
    assert res.returncode == 1
    assert "exited before it was healthy (exit code 3)" in res.stdout
    assert "mprof exit code" not in res.stdout


def test_a_health_answer_other_than_200_is_named(tmp_path: Path) -> None:
    res = cli(tmp_path, "run", "health-500", "--profile", "short")
    assert res.returncode == 1
    assert "not healthy after 4 s" in res.stdout and "last: HTTP 500" in res.stdout


def test_a_restarted_gunicorn_worker_is_a_fault(tmp_path: Path) -> None:
    p = start_background(tmp_path, "run", "planted-gunicorn", "--profile", "long")
    wait_step(tmp_path, "planted-gunicorn")
    ph = phases_of(tmp_path, "planted-gunicorn")
    pids = ph["services"]["server"]["pids"]

    def is_worker(pid: int) -> bool:
        # The pids are a snapshot: one may have ended since (CI saw NoSuchProcess).
        try:
            proc = psutil.Process(pid)
            return "gunicorn" in " ".join(proc.cmdline()) and proc.ppid() in pids
        except psutil.Error:
            return False

    workers = [pid for pid in pids if is_worker(pid)]
    assert workers
    os.kill(workers[0], signal.SIGKILL)
    time.sleep(4)
    os.kill(p.pid, signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    events = phases_of(tmp_path, "planted-gunicorn")["events"]
    kinds = {e["kind"] for e in events}
    assert {"process_exited", "process_started"} <= kinds, (events, out[-2000:])
    assert all(e["fault"] for e in events if e["kind"].startswith("process_"))
    step = next(x for x in phases_of(tmp_path, "planted-gunicorn")["phases"]
                if x["kind"] == "step")
    assert step.get("degraded") is True


def test_a_killed_load_generator_keeps_the_run_from_complete(tmp_path: Path) -> None:
    p = start_background(tmp_path, "run", "planted", "--profile", "long")
    wait_step(tmp_path, "planted")
    d = run_dir(tmp_path)
    locust = [x for x in psutil.process_iter(["cmdline"])
              if "locust" in " ".join(x.info["cmdline"] or []) and str(d) in
              " ".join(x.info["cmdline"] or [])]
    assert locust
    locust[0].kill()
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 3, out[-3000:]
    assert "load_failed" in out and "killed by signal 9" in out
    info = json.loads((d / "run.json").read_text())
    assert info["status"] == "partial" and info["results"] == {"planted": "degraded"}
    summary = json.loads((d / "planted" / "summary.json").read_text())
    assert summary["faults"] >= 1 and summary["steps"][0]["status"] == "failed"
    assert "## Faults" in (d / "summary.md").read_text()


def test_a_file_size_limit_is_a_damaged_artifact_not_a_crash(tmp_path: Path) -> None:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (120_000, 120_000))

    res = cli(tmp_path, "run", "planted", "--profile", "short", preexec=limit)
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert "artifact_damaged" in res.stdout and ".html is truncated" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr


def test_an_unwritable_results_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(blocker / "r"),
                          "--experiments", str(write_experiments(tmp_path)), "run", "planted",
                          "--profile", "short"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("infbench: error: cannot write in"), lines


def test_an_empty_model_file_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    empty = tmp_path / "empty.keras"
    empty.write_bytes(b"")
    garbage = tmp_path / "garbage.keras"
    garbage.write_bytes(b"not a model at all")
    exp = write_experiments(tmp_path)
    exp.write_text(exp.read_text() + f"""
[models.empty]
path = "{empty}"
[models.garbage]
path = "{garbage}"
""")
    for name, says in (("empty", "the file is empty"), ("garbage", "cannot be loaded")):
        res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                              "--experiments", str(exp), "run", "planted", "--model", name,
                              "--profile", "short"], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 1
        assert says in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_the_body_limit_follows_the_largest_batch(tmp_path: Path) -> None:
    images = tmp_path / "img"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"x" * 1_000_000)
    assert body_limit(images, 10) == 64 * 2**20
    assert body_limit(images, 100) > 2 * 100 * 1_000_000
    from infbench.launch import LaunchError
    with pytest.raises(LaunchError):
        body_limit(images, 2000)


def test_run_status_is_earned() -> None:
    assert run_status({"a": "complete", "b": "complete"}) == "complete"
    assert run_status({"a": "complete", "b": "degraded"}) == "partial"
    assert run_status({"a": "complete", "b": "failed"}) == "partial"
    assert run_status({"a": "failed", "b": "failed"}) == "failed"
    assert run_status({}) == "failed"
