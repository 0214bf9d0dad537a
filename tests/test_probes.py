"""The server-side memory probes, in this process: what a sample holds, the allocator check,
the trim action, and that they stay off unless asked for."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from servers import probes

MAPS = """\
55d0c0000000-55d0c0021000 r--p 00000000 08:01 131 /usr/bin/python3.11
7f3c00000000-7f3c02a3e000 rw-p 00000000 00:00 0
7f3c02a3e000-7f3c04000000 ---p 00000000 00:00 0
7f3c08000000-7f3c0c000000 rw-p 00000000 00:00 0
7f3c0c010000-7f3c0c020000 rw-p 00000000 00:00 0
7f3c10000000-7f3c20000000 rw-p 00000000 00:00 0
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0 [stack]
"""


def test_count_heaps_counts_64mib_aligned_anonymous_mappings() -> None:
    # Two arena heaps (one partly committed, one full); the 256 MiB mapping and the unaligned
    # one are not heaps; the named and file-backed mappings are skipped.
    assert probes.count_heaps(MAPS) == 2


def test_loaded_allocator_reads_the_maps() -> None:
    assert probes.loaded_allocator(MAPS) == "glibc"
    jemalloc = MAPS + ("7f3c30000000-7f3c30100000 r-xp 0 08:01 9 "
                       "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2\n")
    assert probes.loaded_allocator(jemalloc) == "jemalloc"
    assert probes.loaded_allocator() == "glibc"  # this test process, nothing preloaded


def test_off_unless_a_folder_is_named() -> None:
    assert probes.start_from_env({}) is None
    assert probes.start_from_env({"INFBENCH_PROBE_DIR": "  "}) is None


def test_samples_and_one_trim(tmp_path: Path) -> None:
    probe = probes.start_from_env({"INFBENCH_PROBE_DIR": str(tmp_path),
                                   "INFBENCH_PROBE_INTERVAL": "0.05"})
    assert probe is not None
    try:
        time.sleep(0.3)
        (tmp_path / probes.TRIM_REQUEST).touch()
        time.sleep(0.3)
    finally:
        probe.stop()
    rows = [json.loads(line) for line in probe.path.read_text().splitlines()]
    samples = [r for r in rows if "event" not in r]
    trims = [r for r in rows if r.get("event") == "trim"]
    assert len(samples) >= 6 and len(trims) == 1  # trimmed once, not at every sample
    s = samples[-1]
    assert s["pid"] == probe.pid and s["rss_mb"] > 5 and s["threads"] >= 2
    assert s["py_blocks"] > 1000 and len(s["gc_counts"]) == 3
    assert s["allocator"] == "glibc" and s["malloc"]["in_use"] > 0
    assert s["malloc"]["free"] >= 0 and isinstance(s["glibc_heaps"], int)
    assert "tracemalloc_mb" not in s  # off unless INFBENCH_TRACEMALLOC=1
    t = trims[0]
    assert t["released"] in (True, False)
    assert t["freed_mb"] == pytest.approx(t["rss_before_mb"] - t["rss_after_mb"], abs=0.011)
