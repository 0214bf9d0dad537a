"""The GPUs' memory and utilisation on the run's clock, through nvidia-ml-py, where a GPU is.

Optional in every sense: on a machine without a GPU (no nvidia-smi, no /dev/nvidia0) nothing
is imported and phases.json says why there are no figures; where there is one but NVML does not
start (or nvidia-ml-py, `pynvml`, which requirements.lock installs, is missing), the same, with
that reason. Where it runs,
`gpu.csv` (infbench/results/samples.py GPU_COLUMNS) gets every `interval` s one row per GPU
(memory in use and total, utilisation of its cores and of its memory bus) and one row per
process with a context on it (its pid and memory), so a service's replicas can be told apart
by the pids in processes.csv. A GPU that stops answering mid-run is a fault (`gpu_failed`).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from infbench.config.model import has_gpu
from infbench.measure.base import CsvSampler
from infbench.results.samples import GPU_COLUMNS

INTERVAL_S = 1.0
MB = 2**20


def open_nvml() -> tuple[Any, list[Any], str | None]:
    """(the pynvml module, a handle per GPU, None), or (None, [], why not)."""
    if not has_gpu():
        return None, [], "no GPU on this machine (no nvidia-smi, no /dev/nvidia0)"
    try:
        import pynvml
    except ImportError:
        return None, [], "nvidia-ml-py (pynvml) is not installed"
    try:
        pynvml.nvmlInit()
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i)
                   for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception as exc:  # pynvml.NVMLError and its many subclasses
        return None, [], f"NVML did not start: {exc}"
    if not handles:
        return None, [], "NVML sees no GPU"
    return pynvml, handles, None


class GpuSampler(CsvSampler):
    """Reads every GPU every `interval` s; `failed` counts samples where one did not answer."""

    flush_every_s = 5.0
    final_sample = True

    def __init__(self, nvml: Any, handles: list[Any], path: Any,
                 interval: float = INTERVAL_S) -> None:
        super().__init__(path, GPU_COLUMNS, interval, "infbench-gpu")
        self.nvml = nvml
        self.handles = handles
        self.failed = 0
        self.first_error = ""  # why the first failed sample failed, for the gpu_failed event

    def sample(self, out: Any) -> bool:
        now = f"{time.time():.3f}"
        ok = True
        for i, h in enumerate(self.handles):
            try:
                mem = self.nvml.nvmlDeviceGetMemoryInfo(h)
                util = self.nvml.nvmlDeviceGetUtilizationRates(h)
                procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(h)
            except Exception as exc:  # NVML's errors: counted, the first one's reason kept
                ok = False
                if not self.first_error:
                    self.first_error = f"GPU {i}: {type(exc).__name__}: {exc}"[:200]
                continue
            total = round(mem.total / MB, 1)
            out.writerow([now, i, "", round(mem.used / MB, 1), total, util.gpu, util.memory])
            for p in procs:
                used = getattr(p, "usedGpuMemory", None)
                out.writerow([now, i, p.pid, "" if used is None else round(used / MB, 1),
                              total, "", ""])
        self.samples += 1
        if not ok:
            self.failed += 1
        return ok

    def finish(self) -> None:
        with contextlib.suppress(Exception):  # a driver gone already: nothing to release
            self.nvml.nvmlShutdown()
