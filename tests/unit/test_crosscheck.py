"""The crosscheck's pure parts: the tools' output parsed (output recorded from wrk 4.1, hey and
h2load 1.52 here, written by the test), the ABBA order, the tolerance, the table, the reader."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from infbench.analysis import crosscheck
from infbench.measure import tools
from infbench.modes.crosscheck import CpuTrace, Settings, document
from infbench.paths import ROOT
from infbench.report import crosscheck as report
from infbench.results import readers, schemas

WRK_OUT = """Running 3s test @ http://127.0.0.1:57589/v1/models/default:predict
  1 threads and 4 connections
  829 requests in 3.00s, 284.97KB read
Requests/sec:    275.91
INFBENCH-WRK {"requests": 829, "duration_us": 3004581, "connect": 0, "read": 2, "write": 0, \
"status": 29, "timeout": 0, "p50_us": 12999.0, "p99_us": 232451.0}
"""

H2LOAD_OUT = """starting benchmark...
Application protocol: h2c

finished in 3.00s, 460.00 req/s, 74.04KB/s
requests: 1380 total, 1384 started, 1380 done, 1370 succeeded, 10 failed, 0 errored, 0 timeout
status codes: 1370 2xx, 0 3xx, 0 4xx, 10 5xx
"""

HEY_CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,\
status-code,offset
0.0021,0.0003,0.0000,0.0000,0.0020,0.0000,200,0.0011
0.0010,0.0000,0.0000,0.0000,0.0010,0.0000,200,0.0032
0.0030,0.0000,0.0000,0.0000,0.0030,0.0000,500,0.0042
0.0040,0.0000,0.0000,0.0000,0.0040,0.0000,200,0.0073
"""


def result(tool: str) -> tools.ToolResult:
    return tools.ToolResult(tool=tool, connections=4, seconds=3)


def test_wrk_summary_line() -> None:
    r = tools.parse_wrk(WRK_OUT, result("wrk"))
    assert r.error is None
    assert r.requests == 829 and r.ok == 800  # answers over 399 are in `requests`, not ok
    assert r.errors == {"read": 2, "status": 29}
    assert r.rps == pytest.approx(800 / 3.004581, abs=0.01)
    assert (r.p50_ms, r.p99_ms) == (12.999, 232.451)


def test_wrk_without_its_hook_is_an_error() -> None:
    r = tools.parse_wrk("Running 3s test\n  0 requests in 3.00s\n", result("wrk"))
    assert r.error and "done()" in r.error


def test_h2load_summary_and_log_file() -> None:
    log = "".join(f"1796230052{i:06d}\t{200 if i % 10 else 500}\t{1000 * (i + 1)}\n"
                  for i in range(100))
    r = tools.parse_h2load(H2LOAD_OUT, log, result("h2load"))
    assert r.error is None
    assert (r.requests, r.ok, r.errors) == (1380, 1370, {"failed": 10})
    assert r.rps == pytest.approx(1370 / 3.0, abs=0.01)
    # 90 answers with 2xx, of 2..100 ms (every tenth is a 500 and not counted)
    ok = sorted(1.0 * (i + 1) for i in range(100) if i % 10)
    assert r.p50_ms == ok[44] and r.p99_ms == ok[89]


def test_h2load_in_milliseconds_and_without_a_summary() -> None:
    r = tools.parse_h2load(H2LOAD_OUT.replace("finished in 3.00s", "finished in 500.00ms"),
                           "", result("h2load"))
    assert r.rps == pytest.approx(1370 / 0.5, abs=0.01) and r.p50_ms is None
    assert tools.parse_h2load("starting benchmark...\n", "", result("h2load")).error


def test_hey_csv() -> None:
    r = tools.parse_hey_csv(HEY_CSV, result("hey"), (200,))
    assert (r.requests, r.ok, r.errors) == (4, 3, {"http_500": 1})
    assert r.rps == 1.0 and (r.p50_ms, r.p99_ms) == (2.1, 4.0)


def test_wrk_script_quotes_every_byte(tmp_path: Path) -> None:
    body = tmp_path / "b\"ody 1.bin"
    body.write_bytes(b"x")
    replay = tools.Replay(protocol="http", method="PUT", url="http://127.0.0.1:1/p",
                          headers={"Content-Type": 'multipart/form-data; boundary="a1"',
                                   "X-Ünï": "v\n2"}, body=body, ok_status=(201,))
    script = tools.wrk_script(replay)
    assert 'wrk.method = "PUT"' in script
    assert '"multipart/form-data; boundary=\\034a1\\034"' in script
    assert "\"v\\0102\"" in script  # a newline, escaped
    assert "\\034ody 1.bin" in script
    assert "\\195\\156n\\195\\175" in script  # UTF-8 bytes, three digits each


def test_grpc_frame() -> None:
    assert tools.grpc_frame(b"abc") == b"\0" + struct.pack(">I", 3) + b"abc"


def test_replay_from_the_dump(tmp_path: Path) -> None:
    (tmp_path / "request.body").write_bytes(b"m")
    (tmp_path / "request.json").write_text(json.dumps({
        "protocol": "grpc", "method": "POST", "path": "/pkg.Svc/M", "target": "127.0.0.1:9",
        "headers": {"te": "trailers"}, "ok_status": [0], "body_file": "request.body"}))
    r = tools.Replay.from_dump(tmp_path, "http://127.0.0.1:8/")
    assert r.url == "http://127.0.0.1:9/pkg.Svc/M" and r.protocol == "grpc"


def test_a_missing_tool_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(tools.ToolError, match="nghttp2-client"):
        tools.require("h2load")
    with pytest.raises(tools.ToolError, match="unknown tool"):
        tools.require("ab")


def test_order_is_abba() -> None:
    assert crosscheck.order(1) == ["tool", "ours"]
    assert crosscheck.order(2) == ["tool", "ours", "ours", "tool"]
    assert crosscheck.order(3)[-2:] == ["tool", "ours"]


def test_judge_the_tolerance() -> None:
    tool = {"rps": 100.0, "p50_ms": 10.0, "p99_ms": 20.0}
    near = {"rps": 96.0, "p50_ms": 10.9, "p99_ms": 23.9}  # 4%, 0.9 ms (floor 1), 19.5%
    assert crosscheck.judge(near, tool)["agree"] is True
    far = {**near, "rps": 94.0}
    j = crosscheck.judge(far, tool)
    assert j["agree"] is False and j["within"]["rps"] is False and j["ratio"]["rps"] == 0.94
    big = {"rps": 1000.0, "p50_ms": 100.0, "p99_ms": 200.0}
    assert crosscheck.judge({**big, "p50_ms": 106.0}, big)["within"]["p50_ms"] is False
    assert crosscheck.judge({**near, "p99_ms": None}, tool)["agree"] is None


def test_medians_leave_out_faulty_rounds() -> None:
    rows = [{"rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0},
            {"rps": 3.0, "p50_ms": 3.0, "p99_ms": 3.0},
            {"rps": 99.0, "p50_ms": 99.0, "p99_ms": 99.0, "error": "crashed"}]
    assert crosscheck.medians(rows) == {"rps": 2.0, "p50_ms": 2.0, "p99_ms": 2.0}


def test_step_figures_from_the_request_log(tmp_path: Path) -> None:
    prefix = tmp_path / "step1-b1"
    lines = ["t_end,latency_ms,ok,lag_ms,name"]
    lines += [f"{100 + i * 0.01:.2f},{i % 10 + 1},{0 if i == 5 else 1},," for i in range(200)]
    lines += ["99.0,500,1,,", "103.5,500,1,,"]  # outside the load's span
    Path(f"{prefix}_requests.csv").write_text("\n".join(lines) + "\n")
    f = crosscheck.step_figures(prefix, {"test_start": 100.0, "test_stopping": 102.0})
    assert (f["requests"], f["ok"], f["failed"]) == (200, 199, 1)
    assert f["rps"] == 99.5 and f["p99_ms"] == 10.0
    assert crosscheck.step_figures(prefix, {})["rps"] is None


def _doc(tmp_path: Path, error: str | None = None, rps: tuple[float, ...] = (100.0,) * 4,
         pinned: dict[str, object] | None = None) -> dict[str, object]:
    body = tmp_path / "request.body"
    body.write_bytes(b"12345")
    replay = tools.Replay(protocol="http", method="POST", url="http://127.0.0.1:1/p",
                          headers={}, body=body, ok_status=(200,), notes=("a note",))
    rows = []
    for k, (side, n) in enumerate((("tool", 1), ("ours", 1), ("ours", 2), ("tool", 2))):
        rows.append({"who": "wrk" if side == "tool" else "infbench", "side": side, "round": n,
                     "rps": rps[k], "p50_ms": 10.0, "p99_ms": 20.0, "ok": 1000, "errors": {},
                     "generator_us_per_request": 50.0, "server_us_per_request": 900.0,
                     "error": error if (side, n) == ("tool", 2) else None})
    return document("v", "wrk", replay, Settings(connections=8, seconds=10), rows,
                    pinned or {"generator": [0], "services": [1]})


def test_document_table_and_reader(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    assert doc["agree"] is True and doc["complete"] is True and doc["body_bytes"] == 5
    text = "\n".join(report.markdown(doc))
    assert "| wrk 1 | 100.0 | 10.00 | 20.00 | 1,000 | 0 | 50 / 900 |  |" in text
    assert "verdict: agree" in text and "note: a note" in text
    (tmp_path / "crosscheck.json").write_text(json.dumps(doc))
    assert readers.crosscheck_json(tmp_path)["tool"] == "wrk"
    (tmp_path / "crosscheck.json").write_text(json.dumps(
        {**doc, "schema": schemas.CROSSCHECK_SCHEMA + 1}))
    with pytest.raises(readers.ReadError, match="newer"):
        readers.crosscheck_json(tmp_path)


def test_spread_and_pinning_are_said(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    text = "\n".join(report.markdown(doc))
    assert doc["spread"] == {"tool": 0.0, "ours": 0.0} and "spread in req/s" not in text
    assert "Cores: generators on core 0, services on core(s) 1." in text
    # The tool's rounds 100 and 130 req/s: 26% of their median (115), over the 5% tolerance.
    doc = _doc(tmp_path, rps=(100.0, 100.0, 101.0, 130.0), pinned={"why_not": "--no-pin"})
    text = "\n".join(report.markdown(doc))
    assert doc["spread"] == {"tool": 0.261, "ours": 0.01}
    assert "spread in req/s by the tool 26% of their median" in text and "ours" not in \
        text.split("spread in req/s by")[1].split("of their median")[0]
    assert "Cores: not pinned (--no-pin)." in text
    assert crosscheck.spread([{"rps": 5.0}]) is None


def test_a_fault_gives_no_verdict(tmp_path: Path) -> None:
    doc = _doc(tmp_path, error="wrk exit code 1: unable to connect")
    assert doc["agree"] is None and doc["complete"] is False
    assert doc["faults"] == ["wrk round 2: wrk exit code 1: unable to connect"]
    text = "\n".join(report.markdown(doc))
    assert "FAULT: wrk round 2" in text and "no verdict" in text


@pytest.mark.parametrize(("args", "env", "line"), [
    ([], {"PATH": "/nonexistent"}, "infbench: error: wrk is not installed (Debian's wrk: "
                                   "sudo make system)"),
    (["--connections", "-1"], {}, "infbench: error: crosscheck --connections: must be > 0"),
    (["--profile", "open-smoke"], {}, "is open loop; the tools run closed loop"),
])
def test_the_command_refuses_before_anything_starts(tmp_path: Path, args: list[str],
                                                    env: dict[str, str], line: str) -> None:
    out = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path),
                          "crosscheck", "tfs-rest-row", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, **env}, check=False)
    assert out.returncode == 1 and line in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and not list(tmp_path.iterdir())


def test_the_cpu_trace_reads_any_span_inside_its_block() -> None:
    """A counter that grows 2 CPU-s a second (two busy cores), sampled on the trace's thread:
    the span in the middle reads its share, edges and spans outside clamp to the samples."""
    import time

    start = time.time()
    with CpuTrace(lambda: 2.0 * (time.time() - start), every=0.02) as trace:
        time.sleep(0.3)
    first, last = trace.samples[0][0], trace.samples[-1][0]
    assert len(trace.samples) >= 5
    assert trace.total() == pytest.approx(2 * (last - first), rel=1e-3)
    mid = trace.between(first + 0.1, first + 0.2)
    assert mid == pytest.approx(0.2, rel=1e-3)  # linear between samples: exact for this counter
    assert trace.between(first - 5, last + 5) == pytest.approx(trace.total())
