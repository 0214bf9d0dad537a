"""The optional GPU monitor (infbench/measure/gpu.py): nothing imported without a GPU, and
with one (a stand-in pynvml here: this machine has none) one row per GPU and per process."""

from __future__ import annotations

import csv
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest

from infbench.measure import gpu

pytestmark = pytest.mark.unit


def test_without_a_gpu_nvml_is_not_even_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "has_gpu", lambda: False)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    nvml, handles, why = gpu.open_nvml()
    assert (nvml, handles) == (None, [])
    assert why is not None and "no GPU on this machine" in why
    assert "pynvml" not in sys.modules


def test_a_gpu_without_nvidia_ml_py_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu, "has_gpu", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails, as when not installed
    assert gpu.open_nvml()[2] == "nvidia-ml-py (pynvml) is not installed"


def fake_nvml(fail_after: int = 10**9) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    calls = {"n": 0}

    def memory(h: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > fail_after:
            raise RuntimeError("GPU is lost")
        return types.SimpleNamespace(used=3 * 2**30, total=140 * 2**30)

    m.nvmlInit = lambda: None  # type: ignore[attr-defined]
    m.nvmlShutdown = lambda: None  # type: ignore[attr-defined]
    m.nvmlDeviceGetCount = lambda: 1  # type: ignore[attr-defined]
    m.nvmlDeviceGetHandleByIndex = lambda i: f"gpu{i}"  # type: ignore[attr-defined]
    m.nvmlDeviceGetMemoryInfo = memory  # type: ignore[attr-defined]
    m.nvmlDeviceGetUtilizationRates = (  # type: ignore[attr-defined]
        lambda h: types.SimpleNamespace(gpu=87, memory=41))
    m.nvmlDeviceGetComputeRunningProcesses = lambda h: [  # type: ignore[attr-defined]
        types.SimpleNamespace(pid=4242, usedGpuMemory=512 * 2**20),
        types.SimpleNamespace(pid=4343, usedGpuMemory=None)]
    return m


def test_with_a_gpu_each_sample_is_the_device_and_its_processes(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(gpu, "has_gpu", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml())
    nvml, handles, why = gpu.open_nvml()
    assert why is None and handles == ["gpu0"]
    out = tmp_path / "gpu.csv"
    s = gpu.GpuSampler(nvml, handles, out, interval=0.01).start()
    time.sleep(0.1)
    s.stop()
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert s.samples >= 2 and s.failed == 0 and len(rows) == 3 * s.samples
    device, first, second = rows[:3]
    assert (device["pid"], device["memory_mb"], device["memory_total_mb"],
            device["util_gpu_pct"], device["util_memory_pct"]) == ("", "3072.0", "143360.0",
                                                                   "87", "41")
    assert (first["pid"], first["memory_mb"], first["util_gpu_pct"]) == ("4242", "512.0", "")
    assert (second["pid"], second["memory_mb"]) == ("4343", "")


def test_a_gpu_that_stops_answering_is_counted(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.setattr(gpu, "has_gpu", lambda: True)
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(fail_after=1))
    nvml, handles, _ = gpu.open_nvml()
    s = gpu.GpuSampler(nvml, handles, tmp_path / "gpu.csv", interval=0.01).start()
    time.sleep(0.1)
    s.stop()
    assert s.samples >= 2 and s.failed == s.samples - 1
