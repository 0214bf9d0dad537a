"""scripts/gpu-check.sh's CPU half, run here unchanged on the tiny model: the pack made by
`infbench gpu-pack` (the models converted where TensorFlow is), then the comparison with
--cpu-only, TensorFlow made unimportable in what it runs, in a few seconds of load. The GPU
half needs a GPU: without one the script says so in one line and measures nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from infbench.config.model import has_gpu
from infbench.paths import ROOT
from tests.fixtures.helpers import quiet_env

pytestmark = pytest.mark.integration

SCRIPT = ROOT / "scripts" / "gpu-check.sh"


@pytest.fixture(scope="module")
def pack(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gpu") / "pack"
    res = subprocess.run([str(SCRIPT), "pack", str(out), "--models", "tiny"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env=quiet_env(PYTHON=sys.executable))
    assert res.returncode == 0, res.stdout[-1500:] + res.stderr[-1500:]
    return out


def no_tensorflow_env(tmp: Path, **extra: str) -> dict[str, str]:
    """PYTHONPATH with a tensorflow and a keras package that refuse to import, first."""
    block = tmp / "no-tf"
    for name in ("tensorflow", "keras"):
        (block / name).mkdir(parents=True, exist_ok=True)
        (block / name / "__init__.py").write_text(
            f"raise ImportError('{name} is not on the GPU machine')\n")
    return quiet_env(PYTHON=sys.executable, PYTHONPATH=f"{block}{os.pathsep}{ROOT}", **extra)


def test_the_pack_holds_both_formats_and_the_images(pack: Path) -> None:
    manifest = json.loads((pack / "manifest.json").read_text())
    entry = manifest["models"]["tiny"]
    assert (entry["onnx"], entry["torch"], entry["input_size"]) == ("tiny.onnx", "tiny.pt", 32)
    assert entry["channels"] == 3  # read from the ONNX file's input
    assert not list(pack.rglob(".*.tmp"))
    assert (pack / entry["onnx"]).is_file() and (pack / entry["torch"]).is_file()
    assert len(list((pack / "images").glob("*.jpg"))) == 24
    # Small enough to travel with the working tree to a lent machine (64 MiB in all).
    assert sum(p.stat().st_size for p in pack.rglob("*") if p.is_file()) < 32 * 2**20


def test_the_cpu_half_runs_here_without_tensorflow(pack: Path, tmp_path: Path) -> None:
    out = tmp_path / "figures"
    res = subprocess.run([str(SCRIPT), "run", "--pack", str(pack), "--out", str(out),
                          "--cpu-only", "--model", "tiny", "--replicas", "1,2", "--batches",
                          "1,4", "--seconds", "0.3"], cwd=ROOT, capture_output=True,
                         text=True, timeout=240, env=no_tensorflow_env(tmp_path))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["schema"] == 1 and doc["cpu_only"] and doc["model"] == "tiny"
    assert doc["complete"] is True
    assert doc["skipped"] == [] and doc["ratios"] == []
    cells = {(r["runtime"], r["device"], r["replicas"], r["batch"]) for r in doc["rows"]}
    assert cells == {(rt, "cpu", n, b) for rt in ("torch", "onnx") for n in (1, 2)
                     for b in (1, 4)}
    for r in doc["rows"]:
        assert "error" not in r, r
        assert r["images_per_s"] > 0 and r["call_ms_p50"] > 0
        assert r["threads_per_replica"] == max(1, doc["machine"]["cpus"] // r["replicas"])
    assert doc["machine"]["torch"] and doc["machine"]["onnxruntime"]
    md = (out / "gpu_check.md").read_text()
    assert md.count("| torch | cpu |") == 4 and md.count("| onnx | cpu |") == 4


@pytest.mark.skipif(has_gpu(), reason="a GPU is here: the GPU half would run")
def test_without_a_gpu_the_gpu_half_is_one_line_and_writes_nothing(pack: Path,
                                                                    tmp_path: Path) -> None:
    out = tmp_path / "figures"
    res = subprocess.run([str(SCRIPT), "run", "--pack", str(pack), "--out", str(out),
                          "--model", "tiny"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env=no_tensorflow_env(tmp_path))
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "no GPU here" in lines[0] and "--cpu-only" in lines[0], lines
    assert not out.exists()


def test_a_missing_pack_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([str(SCRIPT), "run", "--pack", str(tmp_path / "none"), "--cpu-only"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env=quiet_env(PYTHON=sys.executable))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"gpu-check: error: no pack at {tmp_path / 'none'} (make one where TensorFlow is: "
        "scripts/gpu-check.sh pack)"]
