"""A cgroup's memory and CPU, for a server the harness does not start (server = "url",
`cgroup = "/sys/fs/cgroup/..."`): cgroup_memory.csv, in the docker runtime's format.

The folder given is a cgroup's: v2 (`memory.current`, `memory.stat`, `cpu.stat`) or a v1
memory controller's (`memory.usage_in_bytes`, `memory.stat`; CPU where the folder also has
`cpuacct.usage`). Memory is as `docker stats` counts it (usage less inactive file cache,
infbench/launch/docker/cgroup.py), so the summary reads the file as it reads a container's.
A read that fails mid-run is a fault (`cgroup_failed`: one event, then counted).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infbench.launch.docker.cgroup import CgroupMonitor, cgroup_row, parse_memory_stat
from infbench.measure.base import CsvSampler


def usage_file(folder: Path) -> Path | None:
    """The memory usage file of a cgroup folder (v2 first), or None: not a memory cgroup."""
    for name in ("memory.current", "memory.usage_in_bytes"):
        if (folder / name).is_file():
            return folder / name
    return None


def cpu_seconds(folder: Path) -> float | None:
    """The cgroup's CPU time so far (v2 cpu.stat usage_usec, v1 cpuacct.usage), if it has."""
    try:
        if (folder / "cpu.stat").is_file():
            usec = parse_memory_stat((folder / "cpu.stat").read_text()).get("usage_usec")
            return usec / 1e6 if usec is not None else None
        if (folder / "cpuacct.usage").is_file():
            return int((folder / "cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return None
    return None


class CgroupSampler(CsvSampler):
    flush_every_s = 5.0

    def __init__(self, folder: Path, path: Path, interval: float,
                 note: Callable[[str, str], None]) -> None:
        super().__init__(path, list(CgroupMonitor.HEADER), interval, "infbench-cgroup")
        self.folder = folder
        self.note = note
        self.failed = 0
        self.cpu: list[float] = []  # first and last CPU seconds read
        found = usage_file(folder)
        self.usage = found if found is not None else folder / "memory.current"
        self.source = "cgroup-v2" if self.usage.name == "memory.current" else "cgroup-v1"

    def sample(self, out: Any) -> bool:
        t = time.time()
        self.samples += 1
        try:
            usage = int(self.usage.read_text())
            stat = parse_memory_stat((self.folder / "memory.stat").read_text())
        except (OSError, ValueError) as e:
            self.failed += 1
            if self.failed == 1:
                self.note("cgroup_failed", f"cgroup {self.folder} could not be read: {e} "
                          "(every failed read is counted in phases.json cgroup.failed)")
            return False
        out.writerow(cgroup_row(t, usage, stat, self.source))
        cpu = cpu_seconds(self.folder)
        if cpu is not None:
            self.cpu = [self.cpu[0] if self.cpu else cpu, cpu]
        return True
