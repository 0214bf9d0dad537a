"""Per-process memory sampler: where the server's memory is, process by process.

mprof's MEM is the RSS of the server plus its children, summed. That answers "how much", but
it double-counts pages that processes share (Gunicorn's workers share the TensorFlow libraries
with each other and with the master) and it cannot tell heap from mapped files. This sampler
reads, for the server and each worker, `/proc/<pid>/status` at every sample (microseconds)
and `/proc/<pid>/smaps_rollup` every ROLLUP_EVERY_S (the kernel walks every mapping for it:
about 10 ms for a process with TensorFlow loaded, under the lock the process's own mmap calls
need, so not at mprof's 10 Hz), on its own thread, and writes one row per process per sample
to `processes.csv`:

    time        unix time, the clock of mprof and phases.json
    pid, ppid, name
    rss_mb      resident set (what mprof sums)
    pss_mb      proportional set: shared pages divided among the processes that map them;
                summed over processes it counts every page once (smaps_rollup; empty on
                the samples between two rollup reads)
    uss_mb      unique set: private pages, what ending the process would give back (idem)
    anon_mb     anonymous memory (heap, arenas, thread stacks, tensors): where growth lives
    file_mb     file-backed pages (shared libraries, the model file if mapped)
    shmem_mb    shared memory
    swap_mb     swapped out
    threads     thread count
    cpu_s       CPU seconds (user + system) the process has used so far (/proc/<pid>/stat)
    service, replica   which service replica the process belongs to (a topology has several)
    run_wait_s  seconds its threads have spent runnable but waiting for a core, so far: the
                second field of /proc/<pid>/task/<tid>/schedstat summed over the threads.
                /proc/<pid>/schedstat is the main thread's alone (checked on Linux 6.18: a
                spinning second thread's wait is not in it), and a thread that exits takes its
                figures with it, so the sampler keeps each thread's last reading: the sum stays
                monotone, missing only what an exiting thread waited after its last sample.
                Read every SCHED_EVERY_S (0.5 s: a read is one file per thread), empty on the
                samples between, and where schedstat is not readable (a kernel without it).
    main_cpu_s  seconds the process's main thread (tid = pid) has been on a CPU, so far: the
                first field of its schedstat, read with run_wait_s. In an asyncio server
                (Uvicorn, and each of its workers) that thread is the event loop: HTTP parsing,
                the app's coroutines, writing the answers; the rest of cpu_s is the other
                threads (a thread pool's decoding, the model's own pools)

MiB throughout, as mprof reports.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from infbench.measure.base import CsvSampler
from infbench.results.samples import PROCESS_COLUMNS

COLUMNS = PROCESS_COLUMNS
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
FLUSH_EVERY_S = 1.0
LIST_EVERY_S = 1.0
ROLLUP_EVERY_S = 2.0
ROLLUP_KEYS = ("pss_mb", "uss_mb")
# Every thread's schedstat costs ~0.3 ms a read for a process of 60 threads
# (benchmarks/sampler_schedstat.py): twice a second, not at mprof's 10 Hz.
SCHED_EVERY_S = 0.5


def _kib_fields(text: str) -> dict[str, int]:
    """`Key:   123 kB` lines of smaps_rollup/status as {key: KiB}; other lines are ignored."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        key, parts = key.strip(), rest.split()
        sized = len(parts) == 2 and parts[1] == "kB"
        counted = len(parts) == 1 and key in ("Threads", "PPid")
        if (sized or counted) and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def parse_proc(status: str, rollup: str | None = None) -> dict[str, float | None]:
    """One process's figures (MiB, threads) from the text of status and, if read, of
    smaps_rollup (PSS and USS are None without it)."""
    s = _kib_fields(status)
    r = _kib_fields(rollup) if rollup else {}
    mib = 1024.0
    return {
        "rss_mb": s.get("VmRSS", 0) / mib,
        "pss_mb": r["Pss"] / mib if "Pss" in r else None,
        "uss_mb": (r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)) / mib
        if "Pss" in r else None,
        "anon_mb": s.get("RssAnon", 0) / mib,
        "file_mb": s.get("RssFile", 0) / mib,
        "shmem_mb": s.get("RssShmem", 0) / mib,
        "swap_mb": s.get("VmSwap", 0) / mib,
        "threads": float(s.get("Threads", 0)),
        "ppid": float(s.get("PPid", 0)),
    }


def cpu_seconds(stat: str) -> float:
    """utime + stime of /proc/<pid>/stat (fields 14 and 15, after the command in brackets)."""
    fields = stat.rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def read_proc(pid: int, rollup: bool = True) -> dict[str, float | None] | None:
    """The figures of a live process, or None if it is gone (or not ours to read)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat") as f:
            cpu = cpu_seconds(f.read())
        text = None
        if rollup:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                text = f.read()
    except (OSError, ValueError, IndexError):
        return None
    return {**parse_proc(status, text), "cpu_s": cpu}


def schedstat_fields(text: str) -> tuple[int, int, int]:
    """(ns on a CPU, ns runnable waiting for a CPU, timeslices) of one schedstat line."""
    on_cpu, waited, slices = text.split()[:3]
    return int(on_cpu), int(waited), int(slices)


def task_schedstats(pid: int) -> dict[int, tuple[int, int, int]] | None:
    """schedstat_fields of each live thread of `pid`, by tid; None when the process is gone or
    its threads' schedstat cannot be read (a thread exiting while listed is left out)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    out: dict[int, tuple[int, int, int]] = {}
    for tid in tids:
        # os.open/os.read: a third of open()'s cost, and a TensorFlow process has ~60 threads.
        try:
            fd = os.open(f"/proc/{pid}/task/{tid}/schedstat", os.O_RDONLY)
        except FileNotFoundError:
            continue  # it exited between the listing and the read
        except OSError:
            return None
        try:
            out[int(tid)] = schedstat_fields(os.read(fd, 128).decode())
        except ProcessLookupError:
            continue
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)
    return out or None


class RunWait:
    """A process's cumulative run-queue wait (s) over every thread it has had: each thread's
    last reading is kept, so a thread that exits does not take its past wait out of the sum."""

    def __init__(self) -> None:
        self._last: dict[int, dict[int, int]] = {}
        self.main_cpu: dict[int, float] = {}  # the main thread's on-CPU s at the last read()

    def read(self, pid: int) -> float | None:
        stats = task_schedstats(pid)
        if stats is None:
            return None
        seen = self._last.setdefault(pid, {})
        for tid, (_, waited, _) in stats.items():
            seen[tid] = max(waited, seen.get(tid, 0))
        if pid in stats:
            self.main_cpu[pid] = stats[pid][0] / 1e9
        return sum(seen.values()) / 1e9

    def forget(self, pid: int) -> None:
        self._last.pop(pid, None)
        self.main_cpu.pop(pid, None)


class ProcessSampler(CsvSampler):
    """Samples `processes()` every `interval` seconds on a daemon thread until stop()."""

    flush_every_s = FLUSH_EVERY_S

    def __init__(self, processes: Callable[[], Any], path: Path,
                 interval: float, rollup_every: float = ROLLUP_EVERY_S,
                 sched_every: float = SCHED_EVERY_S) -> None:
        super().__init__(path, COLUMNS, interval, "infbench-sampler")
        self.processes = processes
        self.rollup_every = rollup_every
        self.sched_every = sched_every
        self._scheduled = float("-inf")
        self._names: dict[int, str] = {}
        self._owners: dict[int, tuple[str, int]] = {}
        self._pids: list[int] = []
        self._waits = RunWait()
        self._listed = self._rolled = float("-inf")

    def sample(self, out: Any) -> bool:
        tick = time.monotonic()
        now = time.time()
        if tick - self._listed >= LIST_EVERY_S:
            # Finding the processes scans /proc (psutil's children()); reading a known pid is
            # cheap. So the list is refreshed once a second, or when one goes.
            with contextlib.suppress(psutil.Error):
                procs = [x if isinstance(x, tuple) else (x, "server", 0)
                         for x in self.processes()]
                self._pids = [p.pid for p, _, _ in procs]
                for p, service, replica in procs:
                    self._owners[p.pid] = (service, replica)
                    # Read again at every listing: a process may rename itself after it
                    # starts (Ray's workers become ray::ProxyActor, ray::ServeReplica:...).
                    with contextlib.suppress(psutil.Error):
                        self._names[p.pid] = p.name()
            self._listed = tick
        rollup = tick - self._rolled >= self.rollup_every
        if rollup:
            self._rolled = tick
        sched = tick - self._scheduled >= self.sched_every
        if sched:
            self._scheduled = tick
        for pid in self._pids:
            fig = read_proc(pid, rollup)
            if fig is None:
                self._listed = float("-inf")
                self._waits.forget(pid)
                continue
            fig["run_wait_s"] = self._waits.read(pid) if sched else None
            fig["main_cpu_s"] = self._waits.main_cpu.get(pid) \
                if sched and fig["run_wait_s"] is not None else None
            out.writerow(_row(now, pid, self._names.get(pid, "?"), fig,
                              self._owners.get(pid, ("server", 0))))
        self.samples += 1
        return True


def _row(now: float, pid: int, name: str, fig: dict[str, float | None],
         owner: tuple[str, int]) -> list[Any]:
    mem = ["" if fig[k] is None else f"{fig[k]:.2f}" for k in COLUMNS[4:11]]
    return [f"{now:.3f}", pid, int(fig["ppid"] or 0), name, *mem, int(fig["threads"] or 0),
            f"{fig.get('cpu_s') or 0:.2f}", owner[0], owner[1],
            "" if fig.get("run_wait_s") is None else f"{fig['run_wait_s']:.4f}",
            "" if fig.get("main_cpu_s") is None else f"{fig['main_cpu_s']:.4f}"]


