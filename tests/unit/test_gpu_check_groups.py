"""servers/image/gpu_check.py's replica groups when a replica ends badly, with stand-in
replicas (no runtime, no model): one killed before it sends anything fails its group at once
(the parent's watchdog breaks the barrier, nobody waits out BARRIER_TIMEOUT_S); one that sent
its figures and then ended with an error keeps the figures, with a note. And NVML calls that
fail cost their figure, not the run, and are counted."""

from __future__ import annotations

import os
import signal
import time
import types
from typing import Any

import pytest

from servers.image import gpu_check

pytestmark = pytest.mark.unit


def killed_at_once(*args: Any) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def sends_then_fails(runtime: str, path: str, device: str, threads: int, images: list[bytes],
                     size: int, batches: list[int], seconds: float, barrier: Any,
                     results: Any, index: int, channels: int = 3) -> None:
    out: dict[str, Any] = {"index": index, "pid": os.getpid(), "batches": {}, "gpu_mb": None}
    for b in batches:
        barrier.wait(30)
        out["batches"][b] = [0.01, 0.02, 0.03]
        barrier.wait(30)
    results.put(out)
    results.close()
    results.join_thread()  # the message is out before the process ends badly
    os._exit(3)


def test_a_replica_killed_before_it_sends_fails_its_group_at_once() -> None:
    started = time.monotonic()
    rows = gpu_check.measure_group("onnx", "none.onnx", "cpu", 2, [b""], 8, [1, 4], 0.1,
                                   None, target=killed_at_once)
    assert time.monotonic() - started < 60  # not BARRIER_TIMEOUT_S (300 s) per wait
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert "images_per_s" not in r
        assert "2 of 2 replica(s) sent nothing" in r["error"] and "-9" in r["error"], r


def test_figures_sent_before_a_bad_exit_are_kept_with_a_note() -> None:
    rows = gpu_check.measure_group("onnx", "none.onnx", "cpu", 1, [b""], 8, [1, 4], 0.1,
                                   None, target=sends_then_fails)
    assert [r["batch"] for r in rows] == [1, 4]
    for r in rows:
        assert "error" not in r, r
        assert r["calls"] == 3 and r["call_ms_p50"] == 20.0
        assert r["note"] == "replica exit codes [3] after sending their figures"
    doc = {"model": "m", "input_size": 8, "seconds": 0.1, "rows": rows, "skipped": [],
           "ratios": [], "complete": True,
           "machine": {"python": "3", "cpus": 2, "torch": None, "onnxruntime": None}}
    assert "- onnx on cpu, 1 replica(s): replica exit codes [3]" in gpu_check.markdown(doc)


def test_nvml_calls_that_fail_cost_their_figure_and_are_counted() -> None:
    nvml = gpu_check.Nvml.__new__(gpu_check.Nvml)
    nvml.handle, nvml.why, nvml.failures = object(), "", 0

    def unsupported(*_: Any) -> Any:
        raise RuntimeError("Not Supported")

    nvml.nvml = types.SimpleNamespace(
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=2**30, total=2**31),
        nvmlDeviceGetUtilizationRates=unsupported,
        nvmlDeviceGetName=lambda h: b"H200", nvmlSystemGetDriverVersion=unsupported)
    assert nvml.read() == (1024.0, None)
    described = nvml.describe()
    assert described["name"] == "H200" and described["memory_total_mb"] == 2048
    assert described["driver"] is None and described["read_failures"] == 1
    assert "utilisation: Not Supported" in described["why"]
    assert any("driver" in e for e in described["errors"])
