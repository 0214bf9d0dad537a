"""The scoring study through the CLI, on tiny settings: each build up with a real Redis and its
setup task, the time split that says whether the model calls overlapped, a killed model API as
one clear error with nothing left running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from infbench.paths import ROOT
from tests.fixtures.helpers import left_running, the_run

pytestmark = pytest.mark.integration

EXTRA = """
[profiles.scoring-long]
users = 3
spawn_rate = 3
wait = [0.0, 0.05]
steps = [{ batch = 1, seconds = 60 }]
baseline = 1
pause = 1
cooldown = 1
drain_timeout = 5
request_timeout = 10
"""


def cli(tmp: Path, *args: str) -> list[str]:
    exp = tmp / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    return [sys.executable, "-m", "infbench", "--results", str(tmp / "r"), "--experiments",
            str(exp), *args]


needs_redis = pytest.mark.requires("redis-server")


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    tmp = tmp_path_factory.mktemp("scoring")
    res = subprocess.run(cli(tmp, "run", "scoring-sync", "scoring-async", "--profile",
                             "scoring-smoke", "--model", "tiny-onnx"), cwd=ROOT,
                         capture_output=True, text=True, timeout=400)
    return the_run(tmp / "r"), res


@needs_redis
def test_both_builds_run_with_their_setup_task(scoring: tuple[Path, Any]) -> None:
    run_dir, res = scoring
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for v in ("scoring-sync", "scoring-async"):
        ph = json.loads((run_dir / v / "phases.json").read_text())
        (setup,) = [p for p in ph["phases"] if p["kind"] == "setup"]
        assert setup["replica"] == "seed-0" and setup["end"] >= setup["start"]
        assert ph["services"]["seed-0"]["exit_code"] == 0
        assert "seeded 1000 entities" in (run_dir / v / "seed-0" / "server.log").read_text()
        s = json.loads((run_dir / v / "summary.json").read_text())
        assert s["status"] == "complete" and s["totals"]["failures"] == 0
        assert set(s["services"]) == {"features", "seed", "model_a", "model_b", "scoring"}
    assert left_running(run_dir) == []


@needs_redis
def test_the_split_says_whether_the_model_calls_overlapped(scoring: tuple[Path, Any]) -> None:
    run_dir, _ = scoring
    splits = {}
    for v in ("scoring-sync", "scoring-async"):
        (step,) = json.loads((run_dir / v / "summary.json").read_text())["split"]
        splits[v] = step["split"]
    sync, asy = splits["scoring-sync"], splits["scoring-async"]
    assert sync["models_ms"] >= 0.95 * (sync["model_a_ms"] + sync["model_b_ms"])
    assert asy["models_ms"] < 0.8 * (asy["model_a_ms"] + asy["model_b_ms"])
    text = (run_dir / "summary.md").read_text()
    assert "the two model calls ran one after the other" in text
    assert "the two model calls ran concurrently" in text
    assert "## Against scoring-sync" in text


@needs_redis
def test_a_killed_model_api_is_one_clear_error(tmp_path: Path) -> None:
    p = subprocess.Popen(cli(tmp_path, "run", "scoring-async", "--profile", "scoring-long",
                             "--model", "tiny-onnx"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    counts = None
    while time.monotonic() < deadline:
        found = list((tmp_path / "r").glob("*/scoring-async/step1-b1_counts.json"))
        if found and json.loads(found[0].read_text() or "{}").get("finished", 0) > 5:
            counts = found[0]
            break
        time.sleep(0.3)
    assert counts is not None, "the load never got going"
    d = counts.parent
    ph = json.loads((d / "phases.json").read_text())
    for pid in ph["services"]["model_b-0"]["pids"]:
        os.kill(pid, signal.SIGKILL)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 1, out[-3000:]
    assert "FAILED scoring-async: model_b-0 exited during step" in out
    assert left_running(d.parent) == []
