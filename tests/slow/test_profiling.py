"""`infbench trace`: the table math on synthetic timing lines, the servers' opt-in settings,
and both scoring builds profiled end to end through the CLI (real Redis, real model APIs with
short sleeps, a few requests), with nothing left running.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import request_profile as profile_figures
from infbench.measure import request_client
from infbench.measure.load import LoadError
from infbench.paths import ROOT
from infbench.report import request_profile as profile_report
from infbench.results import schemas
from infbench.results.files import WriteError
from infbench.results.readers import ReadError
from servers.shared.profiling import ProfileSettings, RequestProfiler, load_profile_settings
from servers.shared.settings import SettingsError
from tests.fixtures.helpers import left_running, the_run
from tests.fixtures.system import require

# ---------------------------------------------------------------------------------------------
# The table math


def line(t: float, a: float, b: float, models: float, status: int = 200) -> dict[str, Any]:
    """A scoring API timing line (servers.scoring.common.ScoreTiming.finish's fields)."""
    total = 1.0 + models + 0.5
    return {"t": t, "status": status, "features_ms": 1.0, "model_a_ms": a, "model_b_ms": b,
            "models_ms": models, "total_ms": total, "framework_ms": 0.5,
            "model_a_server_ms": a - 1, "model_b_server_ms": b - 1}


def client(n: int, warmup: int, ms: float) -> list[dict[str, Any]]:
    return [{"client_ms": ms, "client_json_ms": 0.1, "warmup": i < warmup}
            for i in range(warmup + n)]


def test_overlap_tells_concurrent_from_sequential() -> None:
    assert profile_figures.overlap(40, 50, 51) == pytest.approx(39 / 40)
    assert profile_figures.overlap(40, 50, 92) == pytest.approx(-2 / 40)
    assert profile_figures.overlap(None, 50, 60) is None
    assert profile_figures.concurrency([0.9, 0.95, 1.0]) == "concurrent"
    assert profile_figures.concurrency([-0.05, 0.0, 0.01]) == "sequential"
    assert profile_figures.concurrency([0.3, 0.3]) == "partly overlapping"
    assert profile_figures.concurrency([None]) == "unknown"


def test_rows_skip_warmups_and_errors_in_time_order() -> None:
    # Two workers' files, read in any order; a 404 and the warm-up are not measured requests.
    lines = [line(5.0, 40, 45, 46), line(1.0, 99, 99, 99), line(3.0, 41, 44, 86),
             line(2.0, 10, 10, 10, status=404), line(4.0, 42, 46, 88)]
    rows = profile_figures.request_rows(client(3, 1, 100.0), lines, warmup=1)
    assert [r["model_a_ms"] for r in rows] == [41, 42, 40]
    assert rows[0]["outside_ms"] == pytest.approx(100.0 - (1.0 + 86 + 0.5))
    s = profile_figures.summarise(rows)
    assert s["requests"] == 3
    assert s["model_a_ms"]["median"] == 41 and s["model_a_ms"]["p95"] == 42
    assert s["model_calls"] == "sequential"  # two of three took a + b


def test_the_table_puts_builds_side_by_side_with_the_change() -> None:
    sync = profile_figures.summarise(profile_figures.request_rows(
        client(4, 0, 95.0), [line(i, 40, 45, 86) for i in range(4)], 0))
    async_ = profile_figures.summarise(profile_figures.request_rows(
        client(4, 0, 50.0), [line(i, 40, 45, 45.5) for i in range(4)], 0))
    assert sync["model_calls"] == "sequential" and async_["model_calls"] == "concurrent"
    lines = profile_report.table({"sync": sync, "async": async_})
    assert lines[0].startswith("| ms per request | sync median | sync p95 | async median")
    stage = next(x for x in lines if x.startswith("| model stage"))
    assert stage.endswith(f"| {(45.5 - 86) / 86 * 100:+.0f}% |")
    assert profile_figures.change(None, 3.0) == "-" and profile_figures.change(0.0, 3.0) == "-"


def test_yappi_view_of_overlap() -> None:
    assert profile_figures.overlap_sum(90.0, 50.0) == pytest.approx(40 / 45)  # concurrent
    assert (profile_figures.overlap_sum(90.0, 93.0) or 0) < 0  # sequential
    assert profile_figures.overlap_sum(0.0, 10.0) is None


def test_profiling_is_off_unless_asked(tmp_path: Path) -> None:
    assert load_profile_settings({}) is None
    s = load_profile_settings({"INFBENCH_PROFILER": "yappi",
                               "INFBENCH_PROFILE_DIR": str(tmp_path / "p")})
    assert s == ProfileSettings("yappi", tmp_path / "p", "/score")
    with pytest.raises(SettingsError, match="INFBENCH_PROFILER"):
        load_profile_settings({"INFBENCH_PROFILER": "cprofile",
                               "INFBENCH_PROFILE_DIR": str(tmp_path)})
    with pytest.raises(SettingsError, match="INFBENCH_PROFILE_DIR"):
        load_profile_settings({"INFBENCH_PROFILER": "pyinstrument"})


def test_short_timing_lines_are_counted_and_said() -> None:
    # A worker killed before its flush: 3 measured requests, 2 lines after the warm-up.
    lines = [line(1.0, 9, 9, 9), line(2.0, 40, 45, 86), line(3.0, 41, 44, 86)]
    c = profile_figures.counts(client(3, 1, 100.0), lines, warmup=1)
    assert c == {"requests_measured": 3, "timing_lines_measured": 2}
    assert profile_figures.count_note("v", "off", c) is not None
    assert profile_figures.count_note("v", "off", {**c, "timing_lines_measured": 3}) is None
    stalled = {"requests": 8, "first_ms": 1.0, "later_median_ms": 41.0, "stalled": True}
    doc = {"passes": {"off": {**c, "keepalive": stalled}}}
    found = profile_report.notes("v", doc)
    assert len(found) == 2 and "2 timing line(s) for 3" in found[0]
    assert "keep-alive stall" in found[1]
    assert profile_report.notes("v", {"passes": {"off": {"keepalive": {"stalled": False}}}}) == []


def test_damaged_or_unwritable_profile_files_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "request-01.pstat"
    bad.write_bytes(b"not a profile")
    with pytest.raises(ReadError, match=r"request-01\.pstat"):
        profile_figures.read_pstat(bad)
    good = tmp_path / "good.pstat"
    prof = cProfile.Profile()
    prof.runcall(sum, range(10))
    prof.dump_stats(str(good))
    with pytest.raises(WriteError, match=r"all\.pstat"):
        profile_figures.merge_pstats([good], tmp_path / "missing-folder" / "all")


class OneAnswerServer:
    """A real HTTP/1.1 listener that answers one POST per connection with keep-alive, then
    closes it while idle (as a Gunicorn sync worker does)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(4096)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = int(next(h.split(b":")[1] for h in head.split(b"\r\n")
                                  if h.lower().startswith(b"content-length")))
                while len(rest) < length:
                    rest += conn.recv(4096)
                body = b'{"score": 0.5, "timing": {}}'
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n" % len(body) + body)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() (Linux)
        self.sock.close()
        self.thread.join(timeout=5)


def test_client_retries_once_on_a_closed_connection_then_fails_in_one_line() -> None:
    server = OneAnswerServer()
    c = request_client.Client(f"http://127.0.0.1:{server.port}", timeout=5.0)
    try:
        first = c.score(1)
        second = c.score(2)  # the server closed the first connection: sent again on a new one
        assert first["status"] == second["status"] == 200
        assert "retried" not in first and second["retried"] is True
        assert server.connections == 2
    finally:
        c.close()
        server.close()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = request_client.Client(f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        with pytest.raises(LoadError, match=r"entity 3: ConnectionRefusedError"):
            refused.score(3)
    finally:
        refused.close()


def test_a_failing_profiler_still_lets_the_next_request_be_profiled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # stop() fails: logged, and the profiler is free again.
    p = RequestProfiler(ProfileSettings("pyinstrument", tmp_path))
    token = p.start()
    assert token is not None
    p.write(p.stop(object()))
    token.stop()
    assert "cannot stop pyinstrument" in capsys.readouterr().err
    token = p.start()
    assert token is not None
    p.write(p.stop(token))
    # write() fails (its folder is gone): logged, and the profiler is free again.
    gone = RequestProfiler(ProfileSettings("pyinstrument", tmp_path / "gone"))
    token = gone.start()
    assert token is not None
    gone.write(gone.stop(token))
    assert "cannot write the pyinstrument profile" in capsys.readouterr().err
    again = gone.start()
    assert again is not None
    gone.write(gone.stop(again))


# ---------------------------------------------------------------------------------------------
# Both builds through the CLI

SHORT = """
[variants.prof-sync]
description = "scoring-sync with 15-20 ms model sleeps"
base = "scoring-sync"
[variants.prof-sync.services.model_a]
env = { INFBENCH_MODEL_SLEEP_MS = "15-20" }
[variants.prof-sync.services.model_b]
env = { INFBENCH_MODEL_SLEEP_MS = "15-20" }

[variants.prof-async]
description = "scoring-async with 15-20 ms model sleeps"
base = "scoring-async"
[variants.prof-async.services.model_a]
env = { INFBENCH_MODEL_SLEEP_MS = "15-20" }
[variants.prof-async.services.model_b]
env = { INFBENCH_MODEL_SLEEP_MS = "15-20" }
"""
BUILDS = ("prof-sync", "prof-async")


@pytest.fixture(scope="module")
def profiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    require("redis-server")
    tmp = tmp_path_factory.mktemp("profile")
    exp = tmp / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + SHORT)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp / "r"),
                          "--experiments", str(exp), "trace", *BUILDS, "--requests", "3",
                          "--warmup", "2", "--model", "tiny"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    return the_run(tmp / "r"), res


@pytest.mark.integration
def test_both_builds_profiled_end_to_end(profiled: tuple[Path, Any]) -> None:
    run_dir, res = profiled
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "| ms per request | prof-sync median" in res.stdout
    assert (run_dir / "profile.md").stat().st_size > 0  # the side-by-side table
    for build in BUILDS:
        d = run_dir / build / "profile"
        doc = json.loads((d / "profile.json").read_text())
        assert doc["schema"] == schemas.PROFILE_SCHEMA
        assert set(doc["passes"]) == set(profile_figures.PASSES)
        for kind in profile_figures.PASSES:
            assert len(doc["passes"][kind]["rows"]) == 3
            # every request of the pass (warm-ups too) left its timing line
            assert doc["passes"][kind]["timing_lines"] == 5
        for i in (1, 2, 3):
            html = d / "pyinstrument" / "server" / f"request-{i:02d}.html"
            assert "pyinstrument" in html.read_text()
            stat = d / "yappi" / "server" / f"request-{i:02d}.pstat"
            assert pstats.Stats(str(stat)).total_calls > 0  # type: ignore[attr-defined]
            assert "threads" in (d / "yappi" / "server" / f"request-{i:02d}.txt").read_text()
        assert pstats.Stats(str(d / "yappi" / "server" / "all.pstat")).total_calls > 0  # type: ignore[attr-defined]
        assert pstats.Stats(str(d / "yappi" / "client.pstat")).total_calls > 0  # type: ignore[attr-defined]
        assert (d / "yappi" / "client.txt").stat().st_size > 0
        assert (d / "pyinstrument" / "client.html").stat().st_size > 0
        assert (d / "yappi" / "server" / "warmup-01.pstat").exists()
        assert "Where the time goes" in (d / "profile.md").read_text()


@pytest.mark.integration
def test_async_overlaps_and_sync_does_not(profiled: tuple[Path, Any]) -> None:
    run_dir, res = profiled
    assert res.returncode == 0, res.stderr[-3000:]
    want = {"prof-sync": "sequential", "prof-async": "concurrent"}
    for build, word in want.items():
        doc = json.loads((run_dir / build / "profile" / "profile.json").read_text())
        calls = doc["model_calls"]
        assert calls["timing_lines"] == word, calls
        assert calls["yappi"] == word, calls
        assert calls["pyinstrument"] == word, calls
    text = (run_dir / "prof-async" / "profile" / "yappi" / "server" / "request-01.txt").read_text()
    assert "asyncio tasks" in text and "call_model" in text  # one line per task


@pytest.mark.integration
def test_nothing_left_running(profiled: tuple[Path, Any]) -> None:
    run_dir, _ = profiled
    assert left_running(run_dir) == []
    assert json.loads((run_dir / "run.json").read_text())["status"] == "complete"
