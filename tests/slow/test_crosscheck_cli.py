"""`infbench crosscheck` for real: the TF-Serving-compatible server's REST entry beside wrk and
its gRPC entry beside h2load, through the CLI, seconds of load; a tool that fails is a fault
said out loud, not a figure. Agreement is what the command reports, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.measure import tools
from infbench.paths import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.requires("wrk", "hey", "nghttp2-client")]

FIGURES = ("rps", "p50_ms", "p99_ms")


# 4 s rounds: the generator's CPU comes from its 0.5 s samples inside the round (2 s left some
# rounds with fewer than two on a busy machine, and no CPU a request).
def crosscheck(tmp: Path, variant: str, env: dict[str, str] | None = None
               ) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = subprocess.run(
        [sys.executable, "-m", "infbench", "--results", str(tmp), "crosscheck", variant,
         "--seconds", "4", "--rounds", "1", "--connections", "2", "--warmup", "1",
         "--run-id", "x"], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})}, check=False)
    return out, tmp / "x" / variant


def rounds(doc: dict[str, Any], side: str) -> list[dict[str, Any]]:
    return [r for r in doc["rounds"] if r["side"] == side]


@pytest.mark.parametrize(("variant", "tool", "protocol"), [
    ("tfs-rest-row", "wrk", "http"), ("tfs-grpc-tensor", "h2load", "grpc")])
def test_both_opinions_side_by_side(tmp_path: Path, variant: str, tool: str,
                                    protocol: str) -> None:
    out, vdir = crosscheck(tmp_path, variant)
    assert out.returncode in (0, 4), out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads((vdir / "crosscheck.json").read_text())
    assert doc["schema"] == 1 and doc["tool"] == tool and doc["protocol"] == protocol
    assert doc["order"] == ["tool", "ours"] and doc["complete"] and not doc["faults"]
    assert doc["agree"] is (out.returncode == 0)  # the exit code says the verdict
    assert doc["body_bytes"] == (vdir / "crosscheck" / "request.body").stat().st_size > 0
    for side in ("tool", "ours"):
        (r,) = rounds(doc, side)
        assert r["error"] is None and r["ok"] > 0 and r["rps"] > 0
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["generator_us_per_request"] > 0 and r["server_us_per_request"] > 0
        if side == "ours":  # the load span's CPU, inside the whole round's
            assert 0 < r["server_cpu_s"] <= r["server_cpu_round_s"]
        assert all(doc["medians"][side][k] == r[k] for k in FIGURES)
    assert set(doc["ratio"]) == set(doc["within"]) == set(FIGURES)
    assert "req/s within 5%" in doc["tolerance"]["said"]
    table = (vdir / "crosscheck.md").read_text()
    assert f"| {tool} 1 |" in table and "| infbench 1 |" in table and "verdict:" in table
    assert table.splitlines()[0] in out.stdout  # printed as written
    phases = json.loads((vdir / "phases.json").read_text())
    kinds = [p["kind"] for p in phases["phases"]]
    assert kinds.count("tool") == 2 and kinds.count("step") == 1  # the warm-up and round 1
    assert phases["status"] == "complete"
    assert not [e for e in phases["events"] if e.get("fault")]


def test_a_tool_that_fails_is_a_fault(tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "wrk").write_text("#!/bin/sh\necho 'wrk: cannot run here' >&2\nexit 1\n")
    (fake / "wrk").chmod(0o755)
    out, vdir = crosscheck(tmp_path, "tfs-rest-row",
                           {"PATH": f"{fake}:{os.environ['PATH']}"})
    assert out.returncode == 3, out.stdout[-2000:] + out.stderr[-2000:]
    doc = json.loads((vdir / "crosscheck.json").read_text())
    assert doc["agree"] is None and not doc["complete"]
    assert doc["faults"] == ["wrk round 1: wrk exit code 1: wrk: cannot run here"]
    assert rounds(doc, "ours")[0]["rps"] > 0  # what was measured is kept
    assert "FAULT: wrk round 1" in out.stdout
    phases = json.loads((vdir / "phases.json").read_text())
    failed = [e for e in phases["events"] if e["kind"] == "tool_failed"]
    assert len(failed) == 2 and all(e["fault"] for e in failed)  # the warm-up and round 1
    assert phases["status"] == "degraded"


@pytest.mark.parametrize("tool", ["wrk", "hey", "h2load"])
def test_a_closed_port_is_an_error_not_a_figure(tmp_path: Path, tool: str) -> None:
    body = tmp_path / "request.body"
    body.write_bytes(b"{}")
    protocol = "grpc" if tool == "h2load" else "http"
    replay = tools.Replay(protocol=protocol, method="POST", url="http://127.0.0.1:9/p",
                          headers={"content-type": "application/json"}, body=body,
                          ok_status=(200,))
    r = tools.run(tool, replay, 2, 1, tmp_path, "closed")
    assert r.error and r.rps in (None, 0.0) and r.p50_ms is None
    assert tools.preflight(replay)  # the preflight says why too
