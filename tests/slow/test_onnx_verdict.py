"""A short cycled run on MODEL=tiny-onnx reaches its verdict through the CLI: the ONNX Runtime
servers under the whole harness (the conversion and the server on its own are
tests/integration/test_onnx.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from infbench.paths import ROOT

pytestmark = pytest.mark.integration


# A cycled profile short enough for a test: three cycles are the fewest a verdict compares.
CYCLED = """
[profiles.onnx-cycles]
users = 2
spawn_rate = 2
steps = [{ batch = 2, seconds = 2 }]
baseline = 1
pause = 0.5
rest = 1
cycles = 3
cooldown = 1
drain_timeout = 2
wait = [0.0, 0.05]
"""


def test_a_short_cycled_run_on_tiny_onnx_reaches_a_verdict(tmp_path: Path) -> None:
    exp = tmp_path / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + CYCLED)
    results = tmp_path / "r"
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(results),
                          "--experiments", str(exp), "run", "starlette-uvicorn", "--profile",
                          "onnx-cycles", "--model", "tiny-onnx"],
                         cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (run_dir,) = [p for p in results.iterdir() if p.is_dir() and not p.is_symlink()]
    summary = json.loads((run_dir / "starlette-uvicorn" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["faults"] == 0
    assert summary["verdict"]["cycles"] == 3
    assert summary["verdict"]["verdict"] != "no verdict", summary["verdict"]
    assert summary["totals"]["requests"] > 0 and summary["totals"]["failures"] == 0
    manifest = (run_dir / "starlette-uvicorn" / "manifest.json").read_text()
    assert ".onnx" in manifest
