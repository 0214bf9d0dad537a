"""`diagnose`: the same untouched server under glibc and with jemalloc preloaded, through the
real CLI. A native leak's growth stays under jemalloc: a leak. Thread churn is not one: its
retention is reached during warm-up, so it is a plateau whose level glibc holds above
jemalloc's (or, where it still grows, growth that vanishes under jemalloc)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infbench.paths import ROOT
from tests.fixtures.synth import TINY_MODEL
from tests.slow.test_verdict_untouched import UVICORN

pytestmark = [pytest.mark.timeout(600), pytest.mark.requires("libjemalloc2")]

EXPERIMENTS = f"""
[study]
variants = ["churn", "native"]
profile = "cycled"
model = "tiny"
{TINY_MODEL}
[profiles.cycled]
users = 4
spawn_rate = 4
steps = [{{ batch = 1, seconds = 3 }}]
cycles = 3
rest = 3
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 3
wait = [0.0, 0.02]

[variants.churn]
server = "command"
command = {UVICORN}
env = {{ UNTOUCHED_CHURN = "320" }}

[variants.native]
server = "command"
command = {UVICORN}
env = {{ UNTOUCHED_NATIVE_KB = "96" }}
"""


def test_diagnose_tells_retention_from_a_leak(tmp_path: Path) -> None:
    exp = tmp_path / "experiments.toml"
    exp.write_text(EXPERIMENTS)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                          "--experiments", str(exp), "diagnose"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    lines = res.stdout.splitlines()
    said = {ln.split(":")[0].strip(): ln for ln in lines[lines.index(
        "under glibc, then with jemalloc preloaded:") + 1:] if ln.startswith("  ")}
    assert said["churn"].startswith(("  churn: allocator retention — ", "  churn: plateau — ")), \
        res.stdout[-2000:]
    assert "glibc held +" in said["churn"] or "vanishes" in said["churn"]
    assert said["native"].startswith("  native: leak — "), res.stdout[-2000:]
    run_dir = next(p for p in (tmp_path / "r").iterdir() if p.is_dir() and not p.is_symlink())
    assert {p.name for p in run_dir.iterdir() if p.is_dir()} == {
        "churn", "churn-jemalloc", "native", "native-jemalloc"}
