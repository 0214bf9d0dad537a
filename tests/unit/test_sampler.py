"""The per-process sampler: parsing /proc text, the CSV it writes, the totals analysis uses."""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from infbench.measure import sampler
from infbench.results import samples

ROLLUP = """55d11e198000-7fff9095e000 ---p 00000000 00:00 0                          [rollup]
Rss:              204800 kB
Pss:              102400 kB
Pss_Anon:          51200 kB
Shared_Clean:     143360 kB
Private_Clean:     10240 kB
Private_Dirty:     51200 kB
Anonymous:         61440 kB
Swap:               2048 kB
"""
STATUS = """Name:\tpython
PPid:\t4242
Threads:\t41
VmRSS:\t  204800 kB
RssAnon:\t   61440 kB
RssFile:\t  141312 kB
RssShmem:\t    2048 kB
VmSwap:\t    2048 kB
"""


def test_parse_proc_reads_both_files_in_mib() -> None:
    fig = sampler.parse_proc(STATUS, ROLLUP)
    assert fig["rss_mb"] == 200.0
    assert fig["pss_mb"] == 100.0
    assert fig["uss_mb"] == 60.0  # private clean + private dirty
    assert fig["anon_mb"] == 60.0
    assert fig["file_mb"] == 138.0
    assert fig["shmem_mb"] == 2.0
    assert fig["swap_mb"] == 2.0
    assert fig["threads"] == 41 and fig["ppid"] == 4242


def test_parse_proc_without_rollup_has_no_pss() -> None:
    # Between two rollup reads (or on a kernel without smaps_rollup) only status is read.
    fig = sampler.parse_proc(STATUS)
    assert fig["rss_mb"] == 200.0 and fig["anon_mb"] == 60.0
    assert fig["pss_mb"] is None and fig["uss_mb"] is None


def test_sampler_on_a_live_process_and_totals(tmp_path: Path) -> None:
    me = psutil.Process(os.getpid())
    path = tmp_path / "processes.csv"
    # 64 MiB touched (anonymous, private) before the sampler starts: a sample reads RSS and
    # smaps_rollup one after the other, so memory that grows between them can put PSS above
    # RSS (CI: 172.9 > 140.4 MB while the ballast was being touched).
    ballast = bytearray(64 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    s = sampler.ProcessSampler(lambda: [me, me], path, interval=0.05, rollup_every=0.2).start()
    started = time.monotonic()
    deadline = started + 60  # ten samples over at least 1 s, however busy the machine
    while (s.samples < 10 or time.monotonic() - started < 1.0) and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    rows = samples.process_rows(path)
    assert s.samples >= 4 and len(rows) == 2 * s.samples
    assert {r["pid"] for r in rows} == {os.getpid()}
    rolled = [r for r in rows if r["pss_mb"] is not None]
    assert len(rolled) >= 4
    # smaps_rollup only on a sample 0.2 s or more after the last one that read it (whether a
    # sample in between exists depends on how busy the machine is: judged, not assumed).
    last = None
    for t in sorted({r["time"] for r in rows}):
        got = {r["pss_mb"] is not None for r in rows if r["time"] == t}
        assert len(got) == 1  # both rows of one sample alike
        if last is None or t - last >= 0.2 + 0.02:
            assert got == {True}, (t, last)
        elif t - last < 0.2 - 0.02:
            assert got == {False}, (t, last)
        if got == {True}:
            last = t
    for r in rolled:
        assert 0 < r["uss_mb"] <= r["pss_mb"] <= r["rss_mb"] + 0.01
    for r in rows:
        assert r["anon_mb"] <= r["rss_mb"] and r["threads"] >= 2  # the sampler thread too
    assert rows[-1]["anon_mb"] >= 64 * 0.9
    assert abs(rows[-1]["rss_mb"] - me.memory_info().rss / 2**20) < 32
    tot = samples.totals(rows)
    assert len(tot) == s.samples and all(t["processes"] == 2 for t in tot)
    assert tot[-1]["rss_mb"] == pytest.approx(2 * rows[-1]["rss_mb"], abs=0.02)
    # A total has PSS only where every process had it at that time.
    assert {t["pss_mb"] is None for t in tot} == {True, False}
    assert [t["time"] for t in tot] == sorted(t["time"] for t in tot)
    del ballast


def test_read_samples_skips_torn_lines(tmp_path: Path) -> None:
    path = tmp_path / "processes.csv"
    head = ",".join(samples.PROCESS_COLUMNS)
    path.write_text(f"{head}\n1.5,10,1,python,100,50,40,30,60,0,0,3\n"
                    f"1.6,10,1,python,101,,,31,60,0,0,3\n2.5,10,1,pyth")
    rows = samples.process_rows(path)
    assert len(rows) == 2 and rows[0]["pss_mb"] == 50.0 and rows[0]["threads"] == 3
    assert rows[1]["pss_mb"] is None and rows[1]["rss_mb"] == 101.0
    assert samples.process_rows(tmp_path / "missing.csv") == []


def test_sampler_survives_processes_that_vanish(tmp_path: Path) -> None:
    # A pid above pid_max: no such process, the /proc read fails and the row is skipped.
    gone = SimpleNamespace(pid=2**22 + 12345, name=lambda: "gone")
    s = sampler.ProcessSampler(lambda: [gone], tmp_path / "p.csv",  # type: ignore[list-item]
                               interval=0.05).start()
    deadline = time.monotonic() + 60
    while s.samples < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    s.stop()
    assert s.samples >= 2 and samples.process_rows(tmp_path / "p.csv") == []
