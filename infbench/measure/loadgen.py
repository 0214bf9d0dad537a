"""Was the load generator itself the limit? Locust's CPU, sampled on the run's clock.

Locust runs one gevent loop per process: past one core's worth of work it cannot send faster,
and a closed-loop user then simply sends less, which reads as the server's throughput. On a
2-core machine shared with the server it can also be starved without being busy: it has work
but waits for a core. So each sample reads, for every process of the step's Locust group,

    cpu_s     CPU time used so far (utime + stime, /proc/<pid>/stat)
    wait_s    time spent runnable but waiting for a CPU (/proc/<pid>/schedstat, 2nd field)

and `demand` = (cpu + wait) / wall time is the share of time the process had work to do. A
step is "limited by the load generator" when any Locust process's demand reached LIMIT (90%
of a core) over a window of WINDOW_S: it was busy, or starved, nearly all the time, so the
load it offered is not the load the profile asked for.

One row per process per sample in `step<i>-b<batch>_loadgen.csv`: time, pid, cpu_s, wait_s.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from infbench.launch import proc
from infbench.measure.base import CsvSampler
from infbench.measure.sampler import cpu_seconds
from infbench.results.samples import LOADGEN_COLUMNS

COLUMNS = LOADGEN_COLUMNS
INTERVAL_S = 0.5


def run_delay_s(pid: int) -> float | None:
    """Seconds this process has spent waiting on a run queue (None: not readable here)."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def read_cpu(pid: int) -> tuple[float, float | None] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            cpu = cpu_seconds(f.read())
    except (OSError, ValueError, IndexError):
        return None
    return cpu, run_delay_s(pid)


class LoadgenSampler(CsvSampler):
    """Samples the processes `pids()` returns every `interval` s on a daemon thread, until
    stop() or until `alive()` says the group is gone (one last sample first)."""

    final_sample = True
    quiet_open_errors = True  # the step's other files say what went wrong with the folder

    def __init__(self, pids: Callable[[], list[int]], path: Path,
                 alive: Callable[[], bool], interval: float = INTERVAL_S) -> None:
        super().__init__(path, COLUMNS, interval, "infbench-loadgen")
        self.pids = pids
        self.alive = alive

    def done(self) -> bool:
        return not self.alive()

    def sample(self, out: Any) -> bool:
        now = time.time()
        for pid in self.pids():
            got = read_cpu(pid)
            if got is not None:
                cpu, wait = got
                out.writerow([f"{now:.3f}", pid, f"{cpu:.3f}",
                              "" if wait is None else f"{wait:.3f}"])
                self.samples += 1
        return True


def group_pids(leader: int) -> list[int]:
    """The Locust process and its children (`--processes N` forks workers)."""
    try:
        p = psutil.Process(leader)
        return [p.pid, *(c.pid for c in proc.descendants(p.pid))]
    except psutil.Error:
        return []


