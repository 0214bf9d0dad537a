"""The model alone before the load, serving efficiency and the machine's limit per step, on the
real path: a real model server (tiny model) under an open-loop profile, with `--model-alone`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench import config
from infbench.measure import model_alone
from infbench.paths import ROOT


def test_the_call_style_is_the_servers_own_or_said_to_be_a_bound() -> None:
    ours = config.one_service("v", server="uvicorn", call="predict_on_batch")
    assert model_alone.call_style(ours) == ("predict_on_batch", "service 'server' "
                                                                 "(INFBENCH_CALL)")
    theirs = config.one_service("w", server="command", command=("x",))
    call, why = model_alone.call_style(theirs)
    assert call == "predict_on_batch" and "as a bound" in why


def test_the_child_gets_the_profiles_batches(tmp_path: Path) -> None:
    argv = model_alone.argv(tmp_path / "m.keras", tmp_path, [1, 10], "call", tmp_path / "o.json")
    assert argv[1:3] == ["-m", "servers.image.model_alone"]
    assert argv[argv.index("--batches") + 1] == "1,10" and argv[argv.index("--call") + 1] == "call"


@pytest.mark.integration
def test_a_run_with_the_model_alone_reports_serving_efficiency(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path), "run",
                          "starlette-uvicorn", "--profile", "open-smoke", "--model", "tiny",
                          "--model-alone"], cwd=ROOT, capture_output=True, text=True,
                         timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "model alone: tiny" in res.stdout
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir() and not p.is_symlink())
    d = run_dir / "starlette-uvicorn"
    alone = json.loads((d / "model_alone.json").read_text())
    assert alone["call"] == "predict" and [b["batch"] for b in alone["batches"]] == [1]
    b1 = alone["batches"][0]
    # Both rates measured. Which is higher is a timing relation (decoding is extra work, but two
    # short runs on a shared machine can order either way): that belongs in a benchmark.
    assert b1["decode_model_images_per_s"] > 0 and b1["model_images_per_s"] > 0
    # The CPU per image beside each rate, and the cores the limit divides.
    assert b1["decode_cpu_ms_per_image"] > 0 and b1["model_cpu_ms_per_image"] > 0
    cores = alone["cores"]
    assert 0 < cores["usable"] <= cores["affinity"] and alone["schema"] == 2
    s: dict[str, Any] = json.loads((d / "summary.json").read_text())
    assert s["model_alone"]["batches"] == alone["batches"]
    m = s["machine_limit"]
    cpu = b1["decode_cpu_ms_per_image"] + b1["model_cpu_ms_per_image"]
    assert m["best_batch"] == 1 and m["images_per_s"] == pytest.approx(
        cores["usable"] * 1000 / cpu, rel=0.002)
    for st in s["steps"]:
        assert st["open_loop"]["arrival"] == "poisson" and st["requests"] > 0
        e = st["efficiency"]
        assert e["decode_model_images_per_s"] == b1["decode_model_images_per_s"]
        assert e["efficiency"] == pytest.approx(st["images_per_s"] / e[
            "decode_model_images_per_s"], abs=0.002)
        lim = st["limit"]
        assert lim["fraction"] == pytest.approx(st["images_per_s"] / m["images_per_s"],
                                                abs=0.002)
        assert lim["loadgen_cores"] > 0 and lim["images_per_s_net"] > 0  # Locust's CPU seen
        assert lim["server_cpu_ms_per_image"] > 0
        assert 0 < lim["main_thread_cpu_ms_per_image"] <= lim["server_cpu_ms_per_image"] + 0.5
    assert [st["open_loop"]["rate"] for st in s["steps"]] == [5, 10]
    md = (run_dir / "summary.md").read_text()
    assert "| 5/s poisson |" in md and "| efficiency |" in md
    assert "## The machine's limit (model alone, CPU per image)" in md
    assert "## Served against the sequential reference and the machine's limit" in md
