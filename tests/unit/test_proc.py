from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from infbench.launch import proc

# A child that ignores SIGTERM and starts a sleeping grandchild: the worst case for cleanup.
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(child.pid, flush=True)
time.sleep(600)
"""


def _wait_for_line(path: Path, timeout: float = 10) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text.strip().splitlines()[0]
        time.sleep(0.05)
    raise AssertionError(f"no output in {path}")


def test_stop_ends_the_whole_group_including_a_grandchild(tmp_path: Path) -> None:
    log = tmp_path / "out.log"
    g = proc.Group([sys.executable, "-c", STUBBORN], log_path=log)
    grandchild = int(_wait_for_line(log))
    assert psutil.pid_exists(grandchild)
    assert g in proc.live_groups()
    t = time.monotonic()
    g.stop(grace=0.5)
    assert time.monotonic() - t < 10
    assert not g.alive()
    assert not psutil.pid_exists(grandchild) or \
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    assert g not in proc.live_groups()
    g.stop(grace=0.5)  # twice is harmless


def test_stop_all_ends_every_registered_group(tmp_path: Path) -> None:
    groups = [proc.Group([sys.executable, "-c", "import time; time.sleep(600)"],
                         log_path=tmp_path / f"{i}.log") for i in range(2)]
    proc.stop_all(grace=1.0)
    assert all(not g.alive() for g in groups)
    assert proc.live_groups() == []


def test_tail(tmp_path: Path) -> None:
    p = tmp_path / "log"
    p.write_text("\n".join(str(i) for i in range(50)) + "\n")
    assert proc.tail(p, 3) == "47\n48\n49"
    assert proc.tail(tmp_path / "missing") == "(no log)"


def test_descendants_are_psutils_children_without_reading_every_process() -> None:
    # A tree of three levels, one child in a thread of its own parent's (the kernel lists a
    # child under the thread that forked it), one left behind by a subshell (reparented: no
    # longer ours, in neither answer).
    code = ("import subprocess, threading, time\n"
            "kids = [subprocess.Popen(['sleep', '30'])]\n"
            "t = threading.Thread(target=lambda: kids.append(subprocess.Popen(['sleep', '30'])))\n"
            "t.start(); t.join()\n"
            "kids.append(subprocess.Popen(['bash', '-c', 'sleep 30 & (sleep 30 &); wait']))\n"
            "print('ready', flush=True); time.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while True:  # until bash has forked its sleep and the subshell has gone
            want = sorted(c.pid for c in psutil.Process(p.pid).children(recursive=True))
            got = sorted(c.pid for c in proc.descendants(p.pid))
            if (len(want) == 4 and got == want) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(want) == 4 and got == want
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
    with pytest.raises(psutil.NoSuchProcess):
        proc.descendants(p.pid)
