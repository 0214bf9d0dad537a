"""The wire view for real: tcpdump on lo during each step of a run through the CLI, with the
keep-alive probe of the health path off, so the capture alone must find Uvicorn --workers 2's
delayed-ACK stall (and not find one once TCP_NODELAY is set); and tcpdump's size cap, reached
on purpose, recorded as a truncated capture."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from infbench.config import Profile, Step
from infbench.measure import capture
from infbench.paths import ROOT
from infbench.results import pcap
from tests.fixtures.helpers import left_running, the_run

pytestmark = [pytest.mark.integration, pytest.mark.requires("tcpdump")]

EXTRA = """
[variants.wire-w2]
description = "FastAPI on Uvicorn --workers 2 (Nagle left on by its supervisor's listener)"
server = "uvicorn"
app = "fastapi"
endpoint = "sync"
workers = 2

[variants.wire-w2-nodelay]
description = "The same with TCP_NODELAY set on every connection"
base = "wire-w2"
env = { INFBENCH_TCP_NODELAY = "1" }

[profiles.wire-smoke]
users = 2
spawn_rate = 2
wait = [0.0, 0.0]
steps = [{ batch = 1, seconds = 3 }]
baseline = 1
pause = 1
cooldown = 1
drain_timeout = 5
request_timeout = 10
sample_interval = 0.2
capture = true
"""


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("wire")
    exp = tmp / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    env = {**os.environ, "INFBENCH_KEEPALIVE_CHECK": "0"}  # the capture alone must find it
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp / "r"),
                          "--experiments", str(exp), "run", "wire-w2", "wire-w2-nodelay",
                          "--profile", "wire-smoke", "--model", "tiny-onnx"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=400)
    return the_run(tmp / "r"), res


@pytest.mark.serial  # a 40 ms stall told from a busy machine's delays: run alone
def test_the_stall_is_found_from_the_capture_and_not_with_nodelay(
        captured: tuple[Path, Any]) -> None:
    run_dir, res = captured
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    found = {}
    for v in ("wire-w2", "wire-w2-nodelay"):
        d = run_dir / v
        ph = json.loads((d / "phases.json").read_text())
        assert not any(e["kind"] == "keepalive_stall" for e in ph["events"])  # probe was off
        (rec,) = ph["wire"]["steps"]
        assert rec["exit_code"] == 0 and rec["stats"]["dropped"] == 0 and not rec["truncated"]
        assert pcap.read(d / "wire" / "step-1.pcap").segments  # kept, readable
        s = json.loads((d / "summary.json").read_text())
        assert s["status"] == "complete"
        (step,) = s["wire"]["steps"]
        f = step["services"]["server"]
        # Every request Locust counted is on the wire (and at most those it cut off besides),
        # on connections kept alive.
        st = s["steps"][0]
        assert 3 < st["requests"] <= f["requests"] <= st["requests"] + (st["cut_off"] or 0)
        assert f["connections"] <= 4 and f["keepalive_asked"] == 1.0
        assert f["retransmissions"] >= 0 and f["resets"] == 0
        found[v] = {x["kind"] for x in s["wire"]["findings"]}
        assert any(e["kind"].startswith("wire_") for e in ph["events"]) == bool(found[v])
    assert found["wire-w2"] == {"delayed_ack_stall"}
    assert found["wire-w2-nodelay"] == set()
    text = (run_dir / "summary.md").read_text()
    assert "## Wire (packet capture per step)" in text
    assert "waited a median" in text and "delayed ACK" in text
    assert "the wire (packet captures) says:" in res.stdout
    assert "Wire (packet capture per step)" in (run_dir / "report.html").read_text()
    assert left_running(run_dir) == []


def test_the_size_cap_stops_the_capture_and_says_so(tmp_path: Path) -> None:
    """1 MB cap, 64 KB writes through a local socket until it is reached: tcpdump stopped at the
    cap, the spill-over file gone, the capture recorded as truncated, what was kept readable."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def sink() -> None:
        conn, _ = listener.accept()
        with conn:
            while conn.recv(65536):
                pass

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    profile = Profile(name="p", steps=(Step(batch=1, seconds=1),), capture_snaplen=65535,
                      capture_max_mb=1)
    cap = capture.StepCapture(1, tmp_path, [port], profile)
    try:
        assert cap.wait_ready()
        # Paced, not one burst: on a busy machine a burst of 64 KB segments overflows the
        # kernel's capture buffer before tcpdump runs, and what it drops never reaches the cap.
        deadline = time.monotonic() + 20
        with socket.create_connection(("127.0.0.1", port)) as c:
            while cap.record["truncated"] is None and time.monotonic() < deadline:
                c.sendall(b"z" * 65536)
                time.sleep(0.005)
    finally:
        rec = cap.stop()
        listener.close()
    assert rec["truncated"] is not None and rec["exit_code"] == 0, rec
    assert [p.name for p in tmp_path.glob("step-1.pcap*")] == ["step-1.pcap"]
    size = (tmp_path / "step-1.pcap").stat().st_size
    assert 0.9e6 < size < 1.2e6
    assert pcap.read(tmp_path / "step-1.pcap").segments
