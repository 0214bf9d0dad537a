"""A descendant that leaves the server's process group (BentoML's worker, Ray's actors) is still
the service's: the harness ends it when the run stops, even when the server itself did not."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from infbench.paths import ROOT
from tests.fixtures.helpers import the_run

pytestmark = pytest.mark.integration

EXTRA = """
[variants.stray]
server = "command"
command = ["{python}", "-m", "tests.fixtures.stray_server", "{port}", "{out}"]

[profiles.stray-smoke]
users = 1
spawn_rate = 1
wait = [0.0, 0.1]
steps = [{ batch = 1, seconds = 1 }]
baseline = 0
pause = 0
cooldown = 0
drain_timeout = 2
request_timeout = 5
"""


def test_a_descendant_in_a_group_of_its_own_is_ended_with_the_service(tmp_path: Path) -> None:
    exp = tmp_path / "experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + EXTRA)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                          "--experiments", str(exp), "run", "stray", "--profile",
                          "stray-smoke", "--model", "tiny"], cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    pid = int((the_run(tmp_path / "r") / "stray" / "stray.pid").read_text())
    deadline = time.monotonic() + 5
    while psutil.pid_exists(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if psutil.pid_exists(pid):
        p = psutil.Process(pid)
        alive = p.status() != psutil.STATUS_ZOMBIE and p.name() == "sleep"
        if alive:
            p.kill()
        assert not alive, "the sleeper outlived the run"
