"""Allocator hypotheses: the preload in the server's environment, the one-line error when the
library is not installed, and (end to end, on the planted server) that a preload is verified in
the running server and that a preload that did not take fails the variant loudly."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from infbench.config import ALLOCATORS, Variant, one_service, with_server
from infbench.launch import LaunchError
from infbench.launch.base import check_allocators
from infbench.launch.contract import ReplicaSpec
from infbench.launch.native import native_env as server_env
from infbench.paths import ROOT
from tests.fixtures.synth import TINY_MODEL

JEMALLOC = ALLOCATORS["jemalloc"]
PLAIN = one_service("v", server="uvicorn")


def spec(v: Variant, tmp_path: Path) -> ReplicaSpec:
    return ReplicaSpec(variant=v, service=v.entry_service, replica=0, ports={"port": 1},
                       out_dir=tmp_path, model_path=tmp_path / "m.keras", sample_interval=0.1,
                       run_id="r", max_images=8)


def test_preload_and_trim_go_into_the_server_environment(tmp_path: Path) -> None:
    env = server_env(spec(with_server(PLAIN, allocator="jemalloc", trim_each_request=True),
                          tmp_path))
    assert env["LD_PRELOAD"].split()[0] == JEMALLOC and env["INFBENCH_TRIM_EACH"] == "1"
    plain = server_env(spec(PLAIN, tmp_path))
    assert JEMALLOC not in plain.get("LD_PRELOAD", "") and "INFBENCH_TRIM_EACH" not in plain


def test_a_missing_library_is_one_line_before_anything_starts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(ALLOCATORS, "jemalloc", "/nonexistent/libjemalloc.so.2")
    with pytest.raises(LaunchError) as e:
        check_allocators([PLAIN, dataclasses.replace(with_server(PLAIN, allocator="jemalloc"),
                                                     name="j")])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("variant j: allocator jemalloc needs /nonexistent")
    assert "make system" in msg
    check_allocators([PLAIN])  # glibc needs nothing


EXPERIMENTS = """
[study]
variants = ["planted-jemalloc", "planted-preload-dropped"]
profile = "short"
model = "tiny"

""" + TINY_MODEL + """
[profiles.short]
users = 2
spawn_rate = 2
steps = [{ batch = 1, seconds = 2 }]
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 2
wait = [0.0, 0.05]

[variants.planted-jemalloc]
server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
allocator = "jemalloc"
probes = true

[variants.planted-preload-dropped]
base = "planted-jemalloc"
command = ["env", "-u", "LD_PRELOAD", "{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app",
           "--host", "{host}", "--port", "{port}", "--no-access-log"]
"""


@pytest.mark.integration
@pytest.mark.requires("libjemalloc2")
def test_preload_is_verified_in_the_running_server(tmp_path: Path) -> None:
    exp = tmp_path / "experiments.toml"
    exp.write_text(EXPERIMENTS)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                          "--experiments", str(exp), "run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 3, res.stdout[-2000:] + res.stderr[-2000:]  # partial: one failed
    (run_dir,) = [p for p in (tmp_path / "r").iterdir() if p.is_dir() and not p.is_symlink()]
    ok = json.loads((run_dir / "planted-jemalloc" / "summary.json").read_text())
    assert ok["status"] == "complete"
    rows = [json.loads(line) for f in (run_dir / "planted-jemalloc").glob("probes-*.jsonl")
            for line in f.read_text().splitlines()]
    samples = [r for r in rows if "event" not in r]
    assert samples and {r["allocator"] for r in samples} == {"jemalloc"}
    assert all(r["malloc"] is None for r in samples)  # glibc's statistics are not jemalloc's
    bad = json.loads((run_dir / "planted-preload-dropped" / "summary.json").read_text())
    assert bad["status"] == "failed"
    assert "did not take" in bad["error"] and "libjemalloc.so.2" in bad["error"]
    assert "run partial: planted-preload-dropped failed" in res.stdout
