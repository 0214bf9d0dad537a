"""Processes we start: each in its own process group, ended by group on every exit path.

Every child is registered on start; `stop_all()` is the one place that ends whatever is still
alive (TERM, a grace period, KILL, wait), and the CLI calls it on normal exit, on exceptions,
on Ctrl-C, SIGTERM and SIGHUP. Only groups we started are ever signalled.

If the harness itself dies (SIGKILL, an OOM kill) none of that runs, so every group (and every
container) is also registered with a watchdog process (infbench/launch/watchdog.py) that
outlives the harness and ends them when the harness's pipe to it closes.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

from infbench.launch import loopback

_LIVE: dict[int, Group] = {}


class Watchdog:
    """The harness's end of the pipe to infbench/launch/watchdog.py, started on first use."""

    def __init__(self) -> None:
        self.popen: subprocess.Popen[bytes] | None = None
        self.broken = False

    def tell(self, line: str) -> None:
        if self.broken:
            return
        if self.popen is None or self.popen.poll() is not None:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "infbench.launch.watchdog", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                cwd=Path(__file__).resolve().parent.parent, start_new_session=True,
                close_fds=True)
        try:
            assert self.popen.stdin is not None
            self.popen.stdin.write((line + "\n").encode())
            self.popen.stdin.flush()
        except (BrokenPipeError, OSError):
            self.broken = True

    def close(self, clean: bool = False) -> None:
        """At exit: whatever is still registered is ended by it, and a run still `running`
        marked interrupted (`clean` says there is nothing of the kind to do)."""
        if self.popen is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if clean:
                self.tell("done")
            assert self.popen.stdin is not None
            self.popen.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=15)
        self.popen = None


WATCHDOG = Watchdog()
atexit.register(WATCHDOG.close)


class Group:
    """A child process that leads its own process group (session), with its output in a file."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=loopback.child_env(env),  # its loopback traffic off any proxy
                cwd=cwd,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        self.pid = self.popen.pid
        self.pgid = self.pid  # start_new_session makes the child its group's leader
        _LIVE[self.pid] = self
        WATCHDOG.tell(f"group {self.pgid}")

    def poll(self) -> int | None:
        return self.popen.poll()

    def alive(self) -> bool:
        return self.popen.poll() is None

    def members(self) -> list[psutil.Process]:
        """Every live process of our group, the leader's descendants included."""
        found: dict[int, psutil.Process] = {}
        try:
            leader = psutil.Process(self.pid)
            for p in [leader, *leader.children(recursive=True)]:
                found[p.pid] = p
        except psutil.NoSuchProcess:
            pass
        for p in psutil.process_iter(["pid"]):
            with contextlib.suppress(psutil.Error, OSError):
                if os.getpgid(p.pid) == self.pgid:
                    found[p.pid] = p
        return list(found.values())

    def signal_group(self, sig: int) -> bool:
        try:
            os.killpg(self.pgid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, grace: float = 5.0) -> int | None:
        """TERM the group, wait `grace`, KILL what is left, reap. Safe to call twice."""
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace)
        # The leader may be gone while members of its group live on (a worker, a grandchild).
        deadline = time.monotonic() + max(grace, 1.0)
        while self.members() and time.monotonic() < deadline:
            self.signal_group(signal.SIGTERM)
            time.sleep(0.1)
        if self.members() or self.popen.poll() is None:
            self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        end = time.monotonic() + 5
        while self.members() and time.monotonic() < end:
            time.sleep(0.05)
        self._log.close()
        _LIVE.pop(self.pid, None)
        WATCHDOG.tell(f"ungroup {self.pgid}")
        return self.popen.returncode


def stop_all(grace: float = 5.0) -> None:
    """End every group we started that is still registered (the one cleanup path)."""
    for group in list(_LIVE.values()):
        group.stop(grace)


def watch_container(name: str, on: bool = True) -> None:
    """Register a container of ours with the watchdog (or take it off once removed)."""
    WATCHDOG.tell(f"{'container' if on else 'uncontainer'} {name}")


def watch_run(run_json: Path) -> None:
    """The run the watchdog marks `interrupted` if the harness dies mid-way."""
    WATCHDOG.tell(f"run {run_json.resolve()}")


def live_groups() -> list[Group]:
    return list(_LIVE.values())


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])


def descendants(pid: int) -> list[psutil.Process]:
    """Every descendant of `pid`, from the kernel's per-thread `children` lists (each thread
    of each process, breadth first): a few small reads per process of the tree. psutil's
    `children(recursive=True)` reads every process on the machine to build a parent map,
    which the harness did about 200 times a run (6 ms a call beside a test suite's hundreds
    of processes). Where the kernel has no such lists (CONFIG_PROC_CHILDREN off), psutil's
    way. A process that ends while it is read is left out, as psutil leaves it."""
    if not os.path.exists(f"/proc/{pid}/task/{pid}/children"):
        return psutil.Process(pid).children(recursive=True)
    found: list[psutil.Process] = []
    todo = [pid]
    while todo:
        here = todo.pop(0)
        try:
            tasks = os.listdir(f"/proc/{here}/task")
        except OSError:
            continue
        kids: set[int] = set()
        for tid in tasks:
            with contextlib.suppress(OSError), open(f"/proc/{here}/task/{tid}/children") as f:
                kids.update(int(k) for k in f.read().split())
        for kid in sorted(kids):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(kid))
                todo.append(kid)
    return found
