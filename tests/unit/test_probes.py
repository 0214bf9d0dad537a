"""The server-side memory probes, in this process: what a sample holds, the allocator check,
the trim action, and that they stay off unless asked for."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infbench.paths import ROOT
from servers.shared import probes

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
    def lines() -> list[str]:
        return probe.path.read_text().splitlines() if probe.path.exists() else []

    def until(test: Any) -> None:  # a busy machine may run the probe's thread late
        deadline = time.monotonic() + 60
        while not test() and time.monotonic() < deadline:
            time.sleep(0.02)

    try:
        until(lambda: len(lines()) >= 3)
        (tmp_path / probes.TRIM_REQUEST).touch()
        until(lambda: '"trim"' in "".join(lines()) and len(lines()) >= 8)
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


@pytest.mark.parametrize(("value", "mode"), [
    ("", ("off", 0)), ("0", ("off", 0)), ("yes", ("off", 0)), ("1", ("start-up", 1)),
    (" 5 ", ("start-up", 5)), ("after-warm-up", ("after-warm-up", 1)),
    ("after-warm-up:3", ("after-warm-up", 3)), ("after-warm-up:x", ("after-warm-up", 1)),
])
def test_tracemalloc_mode(value: str, mode: tuple[str, int]) -> None:
    assert probes.tracemalloc_mode(value) == mode


def in_a_child(code: str) -> list[float]:
    """The census in a fresh interpreter of its own: in the test process, other threads (a test
    runner's, xdist's) make and free objects between two censuses."""
    res = subprocess.run([sys.executable, "-c",
                          "import gc, sys\nfrom servers.shared import probes\n" + code],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return [float(x) for x in res.stdout.split()]


def test_heap_census_sees_untracked_objects_once_each() -> None:
    size0, n0, size1, n1, expected = in_a_child("""
gc.collect()  # garbage the collection below would free is not counted against the test
size0, n0 = probes.heap_census()
# The same object three times, and a tuple of strings the collector does not track: the
# strings are reached through it.
kept = [b"x" * (1 << 20)] * 3 + [tuple(f"s{i:05}" for i in range(1000))]
gc.collect()  # untracks the tuple of strings
assert not gc.is_tracked(kept[3])
size1, n1 = probes.heap_census()
strings = sum(sys.getsizeof(s) for s in kept[3])
expected = sys.getsizeof(kept[0]) + strings + sys.getsizeof(kept[3]) + sys.getsizeof(kept)
print(size0, n0, size1, n1, expected)
""")
    assert size1 - size0 == pytest.approx(expected, rel=0.05)
    assert n1 - n0 == pytest.approx(1000 + 3, abs=20)


def test_heap_census_shares_an_object_among_its_holders() -> None:
    size0, size1, expected = in_a_child("""
gc.collect()
size0, _ = probes.heap_census()
shared = b"z" * (4 << 20)
holders = [[shared] for _ in range(7)]  # seven lists, each holding it once, in any chunk
del shared
gc.collect()
size1, _ = probes.heap_census()
print(size0, size1, (4 << 20) + sum(map(sys.getsizeof, holders)))
""")
    assert size1 - size0 == pytest.approx(expected, rel=0.05)


def test_heap_census_by_type_adds_up_and_names_the_class() -> None:
    out = in_a_child("""
class Session:
    def __init__(self, i):
        self.token = bytes([i % 256]) * 4096  # one each (a constant would be shared)
gc.collect()
before = {}
probes.heap_census(by_type=before)
kept = [Session(i) for i in range(2000)]
gc.collect()
after = {}
size, _ = probes.heap_census(by_type=after)
rows = {name: (b, n) for name, b, n in probes.top_types(after)}
grew = rows["bytes"][0] - dict((k, (b, n)) for k, b, n in probes.top_types(before)).get(
    "bytes", (0, 0))[0]
print(sum(b for b, _ in after.values()), size, rows["__main__.Session"][1], grew)
""")
    summed, size, sessions, grew = out
    assert summed == pytest.approx(size, rel=0.001)  # the types add up to the census
    assert sessions == 2000
    assert grew == pytest.approx(2000 * sys.getsizeof(bytes(4096)), rel=0.05)


def test_the_culprit_window_folds_library_frames_to_the_servers_own_line() -> None:
    # A helper of "the server" (this child's own file) allocates through json: the line named
    # is the helper's, `at` the decoder's, and a list made by the server itself is its own.
    out = subprocess.run([sys.executable, "-c", """
import json, tracemalloc
from servers.shared import probes
tracemalloc.start(probes.WINDOW_FRAMES)
def helper():
    return json.loads(json.dumps([str(i) * 50 for i in range(3000)]))
kept = helper()
mine = [bytearray(1000) for _ in range(500)]
top = probes.culprit_sites(tracemalloc.take_snapshot())
print(json.dumps(top))
"""], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    top = json.loads(out.stdout)
    where: dict[str, Any] = {}
    for row in top:  # the largest of each line (json's encoder allocates a crumb there too)
        where.setdefault(row["where"], row)
    assert where["<string>:6"]["at"].startswith("json/decoder.py:"), top
    assert where["<string>:6"]["blocks"] >= 3000
    assert where["<string>:6"]["stack"] == ["<string>:6", "<string>:7"]
    assert where["<string>:8"]["at"] == "<string>:8" and where["<string>:8"]["blocks"] >= 500
    assert probes.short_path(json.__file__) == "json/__init__.py"
