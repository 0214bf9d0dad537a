"""Restarts are faults: a process of a service that exits or appears after it turned healthy.

Gunicorn respawns a killed worker and carries on, so the run would otherwise say nothing (four
pids in processes.csv, one more than it started with). This watch compares each replica's
process set with the one it had when it turned healthy, at every tick of the run loop, and
records what changed as an event on the run's clock. A new process running another program
than any of the service's (ctypes' `find_library` runs `/sbin/ldconfig -p`) is a helper the
server ran: a `helper_process` note, not a restart.
"""

from __future__ import annotations

import contextlib
from typing import Any

import psutil

from infbench.launch.base import Replica
from infbench.measure.phases import PhaseLog


def _exe(pid: int) -> str | None:
    """The process's executable, or None where it cannot be read (gone, not ours)."""
    with contextlib.suppress(psutil.Error, OSError):
        return psutil.Process(pid).exe() or None
    return None


class ProcessWatch:
    def __init__(self, topology: Any, log: PhaseLog) -> None:
        self.topology = topology
        self.log = log
        self.active = True
        self.known: dict[str, set[int]] = {}
        self.dead: set[str] = set()
        self.expected: set[int] = set()
        self.programs: dict[str, set[str]] = {}  # each replica's executables when healthy
        for r in topology.replicas:
            self.known[r.spec.label] = self._pids(r)
            self.programs[r.spec.label] = {e for e in map(_exe, self.known[r.spec.label]) if e}

    @staticmethod
    def _pids(r: Replica) -> set[int]:
        with contextlib.suppress(psutil.Error):
            return {p.pid for p in r.processes()}
        return set()

    def poll(self) -> None:
        if not self.active:
            return
        for r in self.topology.replicas:
            label = r.spec.label
            if label in self.dead or not r.alive():
                continue
            now = self._pids(r)
            before = self.known.get(label, set())
            if not now:
                continue  # between two reads of a dying replica: its death is reported
            for pid in sorted(before - now):
                if pid in self.expected:
                    continue
                self.log.event("process_exited", f"{label}: process {pid} exited while the "
                               "service kept running", replica=label, pid=pid)
            for pid in sorted(now - before):
                name = "?"
                with contextlib.suppress(psutil.Error):
                    name = " ".join(psutil.Process(pid).cmdline())[:60]
                if r.spec.service.server == "redis":
                    # Redis forks children only to write a snapshot or rewrite its log
                    # (often gone before it can be named): not a restart. The Redis sampler
                    # notes the snapshot; the child's exit is expected too.
                    self.expected.add(pid)
                    continue
                exe = _exe(pid)
                programs = self.programs.get(label, set())
                if exe and programs and exe not in programs:
                    # Another program than any of the service's processes (ctypes'
                    # find_library runs `ldconfig -p`, a server may shell out): a helper the
                    # server ran, said as a note, not a restarted worker. Its exit is expected.
                    self.expected.add(pid)
                    self.log.event("helper_process", f"{label}: process {pid} ({name}) ran: "
                                   f"{exe} is none of the service's programs, so not a "
                                   "restarted worker", replica=label, pid=pid)
                    continue
                self.log.event("process_started", f"{label}: a new process {pid} ({name}) "
                               "appeared: a restarted worker", replica=label, pid=pid)
            self.known[label] = now

    def note_death(self, r: Replica, code: int | None) -> bool:
        """A replica of a service that has others left: recorded once, the run goes on."""
        label = r.spec.label
        if label in self.dead or not self.active:
            return False
        self.dead.add(label)
        self.log.event("replica_died", f"{label} exited (exit code {code}) while other "
                       f"replicas of {r.spec.service.name} carried on", replica=label,
                       exit_code=code)
        return True
