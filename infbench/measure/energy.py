"""The machine's energy counters, where it has them: Linux powercap (RAPL on Intel and AMD).

Each zone under /sys/class/powercap (`intel-rapl:0`, ...) has `energy_uj`, a counter of
microjoules that wraps at `max_energy_range_uj`. Only top-level zones are read: a subzone
(`intel-rapl:0:0`, the cores of package 0) is a part of its parent, and summing both would
count it twice. The figures are the whole machine's (every process, the load generator
included), so energy per request is the machine's energy over a step divided by its requests.

Where no zone is readable (no powercap, a virtual machine, or `energy_uj` readable by root only,
as since Linux 5.10) nothing is sampled and the report says "not available": energy is never
estimated from CPU time. A counter readable at the start that stops answering mid-run is a
fault (`energy_failed`), not a silent gap.

One row per zone per sample in `energy.csv`: time, zone, energy_uj, max_energy_range_uj.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.measure.base import CsvSampler
from infbench.results.samples import ENERGY_COLUMNS

POWERCAP = Path("/sys/class/powercap")
INTERVAL_S = 1.0
TOP_ZONE = re.compile(r"^[a-z0-9_-]+:\d+$")  # intel-rapl:0, not intel-rapl:0:0


@dataclass(frozen=True)
class Zone:
    name: str  # the folder's name: intel-rapl:0
    path: Path
    max_range_uj: int


def zones(root: Path = POWERCAP) -> tuple[list[Zone], str | None]:
    """The readable top-level zones under `root`, and why there are none (None when some)."""
    if not root.is_dir():
        return [], f"no {root} on this machine"
    found: list[Zone] = []
    unreadable = 0
    for path in sorted(root.iterdir()):
        if not TOP_ZONE.match(path.name) or not (path / "energy_uj").exists():
            continue
        try:
            int((path / "energy_uj").read_text())
            max_range = int((path / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            unreadable += 1
            continue
        found.append(Zone(path.name, path, max_range))
    if found:
        return found, None
    if unreadable:
        return [], f"{root}: energy_uj not readable by this user ({unreadable} zone(s))"
    return [], f"no energy counter under {root}"


def read_uj(zone: Zone) -> int | None:
    try:
        return int((zone.path / "energy_uj").read_text())
    except (OSError, ValueError):
        return None


def delta_uj(first: int, last: int, max_range_uj: int) -> int:
    """Microjoules between two readings of one counter, across one wrap at max_range_uj."""
    return last - first if last >= first else last + max_range_uj - first


class EnergySampler(CsvSampler):
    """Reads every zone every `interval` s; `failed` counts samples where a zone did not
    answer."""

    flush_every_s = 5.0
    final_sample = True

    def __init__(self, found: list[Zone], path: Path, interval: float = INTERVAL_S) -> None:
        super().__init__(path, ENERGY_COLUMNS, interval, "infbench-energy")
        self.zones = found
        self.failed = 0

    def sample(self, out: Any) -> bool:
        now = time.time()
        ok = True
        for zone in self.zones:
            uj = read_uj(zone)
            if uj is None:
                ok = False
                continue
            out.writerow([f"{now:.3f}", zone.name, uj, zone.max_range_uj])
        self.samples += 1
        if not ok:
            self.failed += 1
        return ok
