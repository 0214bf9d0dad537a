"""glibc read from outside (infbench/measure/outside.py): a real process, a real debugger; the
process must come out of it working; where it cannot work, a row that says why."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infbench.measure import outside

# Frees every other 64 KiB buffer of 60 MiB: glibc keeps ~30 MiB free in its heap, in holes
# malloc_trim(0) can give back. Then it echoes lines, so that we can see it still works.
FRAGMENT = """
import sys
kept = [bytearray(65536) for _ in range(960)]
del kept[::2]
print("ready", flush=True)
for line in sys.stdin:
    print(line.strip().upper(), flush=True)
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen([sys.executable, "-c", FRAGMENT], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, start_new_session=True)
    with p:  # closes the pipes
        try:
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            yield p
        finally:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def still_works(p: subprocess.Popen[str]) -> bool:
    assert p.stdin is not None and p.stdout is not None
    p.stdin.write("ping\n")
    p.stdin.flush()
    return p.poll() is None and p.stdout.readline().strip() == "PING"


@pytest.mark.requires("gdb")
def test_reads_glibc_totals_and_trims_without_harm(child: subprocess.Popen[str]) -> None:
    row = outside.read_malloc(child.pid)
    assert "error" not in row, row
    m = row["malloc"]
    assert row["allocator"] == "glibc" and row["python"] is True
    assert m["free"] >= 20 and m["in_use"] >= 20 and m["arena"] >= m["free"] + m["in_use"] - 0.01
    assert row["pause_s"] > 0 and row["alive"]
    assert still_works(child)
    t = outside.trim(child.pid)
    assert "error" not in t, t
    assert t["released"] is True and t["freed_mb"] >= 10  # the holes went back
    assert t["rss_after_mb"] == pytest.approx(t["rss_before_mb"] - t["freed_mb"], abs=0.02)
    assert still_works(child)
    after = outside.read_malloc(child.pid)["malloc"]
    assert after["in_use"] == pytest.approx(m["in_use"], abs=2)  # nothing in use was touched


@pytest.mark.requires("gdb")
def test_not_python_is_said(tmp_path: Path) -> None:
    p = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        # Right after Popen the child may not have exec'd `sleep` and mapped its libc yet (seen
        # on a loaded machine: "allocator: none"): wait until it has, as a server would be.
        deadline = time.monotonic() + 10
        while "libc" not in Path(f"/proc/{p.pid}/maps").read_text() \
                or not os.readlink(f"/proc/{p.pid}/exe").endswith("sleep"):
            assert time.monotonic() < deadline, "sleep never started"
            time.sleep(0.05)
        row = outside.read_malloc(p.pid)
        assert "error" not in row and row["python"] is False and "malloc" in row
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


@pytest.mark.requires("tini")
def test_a_static_binary_is_refused_with_the_reason() -> None:
    p = subprocess.Popen(["/usr/bin/tini-static", "-s", "--", "sleep", "30"],
                         start_new_session=True)
    try:
        row = outside.read_malloc(p.pid)
        assert "no libc.so mapped" in row["error"] and row["allocator"] == "none"
        assert "no libc.so mapped" in outside.trim(p.pid)["error"]
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def test_another_allocator_and_a_gone_process_are_refused() -> None:
    maps = "7f3c30000000-7f3c30100000 r-xp 0 08:01 9 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
    assert outside.allocator(maps) == "glibc"
    assert outside.allocator(maps + maps.replace("libc.so.6", "libjemalloc.so.2")) == "jemalloc"
    assert outside.allocator("55d0c0000000-55d0c0021000 r--p 0 08:01 131 /sbin/x\n") == "none"
    p = subprocess.Popen(["true"])
    p.wait()
    assert "cannot read" in outside.read_malloc(p.pid)["error"]


def test_without_gdb_the_row_says_so(monkeypatch: pytest.MonkeyPatch,
                                     child: subprocess.Popen[str]) -> None:
    monkeypatch.setattr(outside, "GDB", "gdb-that-is-not-installed")
    assert "no gdb" in (outside.unavailable() or "")
    assert "no gdb" in outside.read_malloc(child.pid)["error"]


def test_malloc_info_totals() -> None:
    xml = """<malloc version="1">
<heap nr="0"><sizes></sizes><total type="fast" count="1" size="64"/>
<total type="rest" count="9" size="999"/><system type="current" size="1"/></heap>
<total type="fast" count="2" size="1048576"/>
<total type="rest" count="10" size="3145728"/>
<total type="mmap" count="1" size="2097152"/>
<system type="current" size="10485760"/>
<system type="max" size="10485760"/>
</malloc>"""
    assert outside.parse_malloc_info(xml) == {"arena": 10.0, "free": 4.0, "in_use": 6.0,
                                              "mmap": 2.0}
