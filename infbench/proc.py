"""Processes we start: each in its own process group, ended by group on every exit path.

Every child is registered on start; `stop_all()` is the one place that ends whatever is still
alive (TERM, a grace period, KILL, wait), and the CLI calls it on normal exit, on exceptions,
on Ctrl-C and on SIGTERM. Only groups we started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

import psutil

_LIVE: dict[int, Group] = {}


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
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise
        self.pid = self.popen.pid
        self.pgid = self.pid  # start_new_session makes the child its group's leader
        _LIVE[self.pid] = self

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
        return self.popen.returncode


def stop_all(grace: float = 5.0) -> None:
    """End every group we started that is still registered (the one cleanup path)."""
    for group in list(_LIVE.values()):
        group.stop(grace)


def live_groups() -> list[Group]:
    return list(_LIVE.values())


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.rstrip().splitlines()[-lines:])
