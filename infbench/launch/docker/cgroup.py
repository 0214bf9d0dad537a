"""Container memory as `docker stats` shows it, sampled from the cgroup files on the host."""

from __future__ import annotations

import contextlib
import csv
import re
import threading
import time
from pathlib import Path
from typing import IO, Any

from infbench.launch.docker.engine import docker

CGROUP_FILE = "cgroup_memory.csv"


def parse_memory_stat(text: str) -> dict[str, int]:
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def docker_stats_bytes(usage: int, stat: dict[str, int]) -> int:
    """Memory as `docker stats` shows it: usage minus inactive file cache.

    docker/cli calculateMemUsageUnixNoCache: cgroup v1 subtracts total_inactive_file,
    cgroup v2 inactive_file, each only when smaller than the usage.
    """
    v1 = stat.get("total_inactive_file")
    if v1 is not None and v1 < usage:
        return usage - v1
    v2 = stat.get("inactive_file", 0)
    if v2 < usage:
        return usage - v2
    return usage


def anon_bytes(stat: dict[str, int]) -> int | None:
    """The cgroup's anonymous memory (heap, stacks: what a leak grows), from its memory.stat:
    v1 total_rss (the hierarchy's; rss where the kernel gives no totals), v2 anon. Unlike the
    `docker stats` figure it holds no file pages: those count there once active, and are
    charged to whichever cgroup read a library first (a container that did grows under load
    as its pages move to the active list; one whose image was already cached does not)."""
    for key in ("total_rss", "rss", "anon"):
        if key in stat:
            return stat[key]
    return None


def cgroup_row(t: float, usage: int, stat: dict[str, int], source: str) -> list[Any]:
    """One row of cgroup_memory.csv (CgroupMonitor.HEADER) from a read of the usage file and
    memory.stat."""
    anon = anon_bytes(stat)
    return [f"{t:.4f}", f"{docker_stats_bytes(usage, stat) / 2**20:.3f}", usage,
            stat.get("total_inactive_file", stat.get("inactive_file", 0)),
            "" if anon is None else anon, source]


def cgroup_memory_dir(proc_cgroup: str, mountinfo: str) -> tuple[Path, int] | None:
    """The host directory of a process's memory cgroup and the cgroup version (1 or 2), from
    /proc/<pid>/cgroup and /proc/self/mountinfo. The v1 memory controller wins on hybrid hosts
    (that is where its accounting is)."""
    mounts: dict[int, tuple[str, str]] = {}  # version -> (mount root, mount point)
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) < 5 or len(r) < 3:
            continue
        if r[0] == "cgroup" and "memory" in r[2].split(","):
            mounts.setdefault(1, (f[3], f[4]))
        elif r[0] == "cgroup2":
            mounts.setdefault(2, (f[3], f[4]))
    paths: dict[int, str] = {}
    for line in proc_cgroup.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            paths[2] = parts[2]
        elif "memory" in parts[1].split(","):
            paths[1] = parts[2]
    for version in (1, 2):
        if version in mounts and version in paths:
            root, point = mounts[version]
            rel = paths[version]
            if root != "/" and rel.startswith(root):
                rel = rel[len(root):]
            return Path(point) / rel.lstrip("/"), version
    return None


_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int | None:
    """'123.4MiB' (docker stats' MemUsage, before the ' / limit') -> bytes."""
    m = re.match(r"\s*([0-9.]+)\s*([a-zA-Z]+)", text)
    if not m or m.group(2).lower() not in _UNITS:
        return None
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class CgroupMonitor:
    """Samples the container's memory at the mprof interval into cgroup_memory.csv, on the
    clock of phases.json (time.time()). Reads the cgroup files on the host; where it cannot
    find them, it falls back to `docker stats` (about one sample a second)."""

    HEADER = ("time", "mem_mb", "usage_bytes", "inactive_file_bytes", "anon_bytes", "source")

    def __init__(self, container: str, out: Path, interval: float) -> None:
        self.container = container
        self.out = out
        self.interval = interval
        self.source: str | Path = "(not found yet)"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cgroup {container}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _pid(self) -> int | None:
        res = docker("container", "inspect", "--format", "{{.State.Pid}}", self.container,
                     timeout=10)
        text = res.stdout.strip()
        return int(text) if res.returncode == 0 and text.isdigit() and text != "0" else None

    def _run(self) -> None:
        with self.out.open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(self.HEADER)
            f.flush()
            pid = None
            while pid is None and not self._stop.wait(0.1):
                pid = self._pid()
            if pid is None:
                return
            found = None
            with contextlib.suppress(OSError):
                found = cgroup_memory_dir(Path(f"/proc/{pid}/cgroup").read_text(),
                                          Path("/proc/self/mountinfo").read_text())
            if found is not None and self._usage_file(*found).exists():
                self.source = found[0]
                self._sample_files(w, f, *found)
            else:
                self.source = "docker stats"
                self._sample_stats(w, f)

    @staticmethod
    def _usage_file(directory: Path, version: int) -> Path:
        return directory / ("memory.usage_in_bytes" if version == 1 else "memory.current")

    def _sample_files(self, w: Any, f: IO[str], directory: Path, version: int) -> None:
        usage_file, stat_file = self._usage_file(directory, version), directory / "memory.stat"
        source = f"cgroup-v{version}"
        next_t = time.monotonic()
        while not self._stop.is_set():
            try:
                t = time.time()
                usage = int(usage_file.read_text())
                stat = parse_memory_stat(stat_file.read_text())
            except (OSError, ValueError):
                return  # the container (and its cgroup) is gone
            w.writerow(cgroup_row(t, usage, stat, source))
            f.flush()
            next_t += self.interval
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _sample_stats(self, w: Any, f: IO[str]) -> None:
        while not self._stop.is_set():
            res = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", self.container,
                         timeout=15)
            t = time.time()
            size = parse_size(res.stdout.split("/")[0]) if res.returncode == 0 else None
            if size is None:
                if self._pid() is None:
                    return
                self._stop.wait(self.interval)
                continue
            w.writerow([f"{t:.4f}", f"{size / 2**20:.3f}", "", "", "", "docker-stats"])
            f.flush()
            self._stop.wait(self.interval)

