"""GPU against CPU, the model alone in 1 and 4 replicas: what scripts/gpu-check.sh measures.

    python -m servers.image.gpu_check --pack DIR --out DIR [--cpu-only] [--model small]
        [--runtimes torch,onnx] [--replicas 1,4] [--batches 1,10] [--seconds 5]

It runs where a GPU is lent for a few minutes: Python 3.12 with torch and onnxruntime, no
network, no TensorFlow. So it carries everything in the pack (`infbench gpu-pack`, made where
TensorFlow is: the model converted to an .onnx file and a .pt file of ours, and the sample
JPEGs) and imports only numpy, Pillow, the runtime it measures and, if it is there,
nvidia-ml-py (pynvml).

For each runtime (torch, ONNX Runtime), device (cpu, cuda) and replica count, that many
processes each load the model on the device (CPU replicas get the cores shared out: intra-op
threads = cores // replicas), decode the sample images once, and then, for each batch size,
all start together (a barrier) and call the model one call after another for `seconds`:

  images_per_s     the replicas' images per second, summed
  call_ms p50/p90  of every call of every replica (a call: the batch in, the outputs back in
                   host memory: on cuda that includes both copies and the wait)
  gpu_mb           per replica, torch's own peak reserved memory (torch.cuda.max_memory_
                   reserved); and, sampled every 0.2 s by the parent with pynvml, the GPU's
                   memory in use and utilisation during the batch's window

A combination that cannot run here (cuda without a GPU; ONNX Runtime without its
CUDAExecutionProvider, which the plain `onnxruntime` wheel lacks) is listed as skipped with the
reason, never measured on something else. A replica that fails is an error in the results and
the exit status is 1. Writes gpu_check.json (SCHEMA) and gpu_check.md (a table, and the
cuda/cpu ratios) into --out.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from servers.shared.errors import reason
from servers.shared.model import forward, preprocess

# Version of gpu_check.json. 1: first version.
SCHEMA = 1
RUNTIMES = ("torch", "onnx")
SUFFIX = {"torch": "pt", "onnx": "onnx"}
DEVICES = ("cpu", "cuda")
BARRIER_TIMEOUT_S = 300.0
WARMUP_CALLS = 3
SAMPLE_EVERY_S = 0.2


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _predictor(runtime: str, path: str, device: str, threads: int) -> Any:
    from servers.shared.runtimes import OnnxPredictor, OnnxSettings, TorchPredictor, TorchSettings

    if runtime == "torch":
        return TorchPredictor(path, TorchSettings(intra_op_threads=threads), device)
    return OnnxPredictor(path, OnnxSettings(intra_op_threads=threads), device)


def _torch_peak_mb(runtime: str, device: str) -> float | None:
    if runtime != "torch" or device != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_reserved() / 2**20, 1)


def replica(runtime: str, path: str, device: str, threads: int, images: list[bytes],
            size: int, batches: list[int], seconds: float, barrier: Any, results: Any,
            index: int, channels: int = 3) -> None:
    """One replica's process: load, warm, then each batch's window between two barriers."""
    try:
        model = _predictor(runtime, path, device, threads)
        decoded = {b: preprocess([images[i % len(images)] for i in range(b)], size, channels)
                   for b in batches}
        for b in batches:
            for _ in range(WARMUP_CALLS):
                forward(model, decoded[b], "call")
        out: dict[str, Any] = {"index": index, "pid": os.getpid(), "batches": {}}
        for b in batches:
            barrier.wait(BARRIER_TIMEOUT_S)
            times: list[float] = []
            start = time.perf_counter()
            while not times or time.perf_counter() - start < seconds:
                t = time.perf_counter()
                forward(model, decoded[b], "call")
                times.append(time.perf_counter() - t)
            out["batches"][b] = times
            barrier.wait(BARRIER_TIMEOUT_S)
        out["gpu_mb"] = _torch_peak_mb(runtime, device)
        results.put(out)
    except Exception as exc:
        barrier.abort()  # the others and the parent stop waiting
        results.put({"index": index, "pid": os.getpid(), "error": reason(exc)})


class Nvml:
    """The GPU's memory in use and utilisation, through pynvml, where it and a GPU are."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.why = ""
        self.failures = 0
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception as exc:  # no module, no driver, no device
            self.why = f"pynvml: {reason(exc)}"

    def read(self) -> tuple[float | None, float | None] | None:
        """(memory used MB, GPU utilisation %) now, each None where NVML could not say; what
        failed is counted in `failures`, the first reason kept in `why`."""
        if self.handle is None:
            return None
        used = util = None
        try:
            used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used / 2**20
        except Exception as exc:
            self._failed("memory", exc)
        try:
            util = float(self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu)
        except Exception as exc:
            self._failed("utilisation", exc)
        return used, util

    def _failed(self, what: str, exc: Exception) -> None:
        self.failures += 1
        if not self.why:
            self.why = f"pynvml {what}: {reason(exc)}"

    def describe(self) -> dict[str, Any]:
        if self.handle is None:
            return {"available": False, "why": self.why}
        out: dict[str, Any] = {"available": True}
        for key, read in (("name", lambda: self.nvml.nvmlDeviceGetName(self.handle)),
                          ("driver", self.nvml.nvmlSystemGetDriverVersion),
                          ("memory_total_mb", lambda: round(
                              self.nvml.nvmlDeviceGetMemoryInfo(self.handle).total / 2**20))):
            try:
                value = read()
                out[key] = value.decode() if isinstance(value, bytes) else value
            except Exception as exc:  # one unsupported call costs its field, not the run
                out[key] = None
                out.setdefault("errors", []).append(f"{key}: {reason(exc)}")
        if self.failures:
            out["read_failures"] = self.failures
            out["why"] = self.why
        return out


def _window(barrier: Any, nvml: Nvml | None, seconds: float) -> dict[str, Any]:
    """The parent's part of one batch's window: start it, sample the GPU, wait for its end."""
    barrier.wait(BARRIER_TIMEOUT_S)
    samples = []
    end = time.monotonic() + seconds
    while nvml is not None and time.monotonic() < end:
        got = nvml.read()
        if got is not None:
            samples.append(got)
        time.sleep(SAMPLE_EVERY_S)
    barrier.wait(BARRIER_TIMEOUT_S)
    out: dict[str, Any] = {}
    used = [u for u, _ in samples if u is not None]
    util = [g for _, g in samples if g is not None]
    if used:
        out["gpu_used_mb_max"] = round(max(used))
    if util:
        out["gpu_util_pct_mean"] = round(sum(util) / len(util), 1)
    if samples:
        out["gpu_samples"] = len(samples)
    return out


def skip_reason(runtime: str, device: str) -> str | None:
    """Why `runtime` on `device` cannot run here, or None."""
    try:
        if runtime == "torch":
            import torch

            if device == "cuda" and not torch.cuda.is_available():
                return f"torch {torch.__version__} sees no CUDA device"
        else:
            import onnxruntime as ort

            if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
                return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (the "
                        "plain wheel; onnxruntime-gpu has it)")
    except ImportError as exc:
        return f"{runtime} is not installed ({reason(exc)})"
    return None


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def _watch(procs: list[Any], barrier: Any, done: threading.Event) -> None:
    """The parent's watchdog: a replica that ended with an error before the group was done
    (a segfault, an out-of-memory kill: no chance to abort the barrier itself) aborts the
    barrier, so that no one waits out BARRIER_TIMEOUT_S for it."""
    while not done.wait(0.2):
        if any(p.exitcode not in (None, 0) for p in procs):
            barrier.abort()
            return


def _collect(procs: list[Any], results: Any) -> list[dict[str, Any]]:
    """Each replica's message, waiting no longer than the replicas live (a replica that died
    sends nothing)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + BARRIER_TIMEOUT_S
    while len(got) < len(procs) and time.monotonic() < deadline:
        try:
            got.append(results.get(timeout=0.5))
        except queue.Empty:
            if all(not p.is_alive() for p in procs):
                try:  # what a replica put just before it ended
                    got.append(results.get(timeout=1.0))
                except queue.Empty:
                    break
    return got


def measure_group(runtime: str, path: str, device: str, replicas: int, images: list[bytes],
                  size: int, batches: list[int], seconds: float,
                  nvml: Nvml | None, channels: int = 3,
                  target: Callable[..., None] | None = None) -> list[dict[str, Any]]:
    """`replicas` processes of one runtime on one device, every batch size: one row each.
    `target` stands in for `replica` (tests: a replica that dies)."""
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(replicas + 1)
    results = ctx.Queue()
    threads = max(1, _cpus() // replicas)
    args = (runtime, path, device, threads, images, size, batches, seconds, barrier, results)
    procs = [ctx.Process(target=target or replica, args=(*args, i, channels), daemon=True)
             for i in range(replicas)]
    for p in procs:
        p.start()
    done = threading.Event()
    watcher = threading.Thread(target=_watch, args=(procs, barrier, done), daemon=True)
    watcher.start()
    windows: dict[int, dict[str, Any]] = {}
    broken = ""
    try:
        for b in batches:
            windows[b] = _window(barrier, nvml if device == "cuda" else None, seconds)
    except Exception as exc:  # BrokenBarrierError: a replica failed (it says why below)
        broken = reason(exc) or type(exc).__name__
    got = _collect(procs, results)
    done.set()
    for p in procs:
        p.join(timeout=30)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    base = {"runtime": runtime, "device": device, "replicas": replicas,
            "threads_per_replica": threads}
    errors = [g["error"] for g in got if "error" in g]
    codes = [p.exitcode for p in procs]
    if errors or len(got) < replicas:
        why = errors[0] if errors else (
            f"{replicas - len(got)} of {replicas} replica(s) sent nothing (exit codes "
            f"{codes}{'; ' + broken if broken else ''})")
        return [{**base, "batch": b, "error": why} for b in batches]
    # Every replica sent its figures: one that then ended badly (CUDA's teardown at exit,
    # say) is said beside them, not a reason to lose them.
    ended_badly = [c for c in codes if c not in (0, None)]
    if ended_badly:
        base["note"] = f"replica exit codes {codes} after sending their figures"
    rows = []
    for b in batches:
        per = [g["batches"][b] for g in got]
        every = [t for times in per for t in times]
        rows.append({**base, "batch": b,
                     "images_per_s": round(sum(b * len(t) / sum(t) for t in per), 2),
                     "calls": len(every),
                     "call_ms_p50": round(1000 * _percentile(every, 50), 3),
                     "call_ms_p90": round(1000 * _percentile(every, 90), 3),
                     "gpu_mb_per_replica": [g.get("gpu_mb") for g in got]
                     if device == "cuda" else None,
                     **windows.get(b, {})})
    return rows


def machine(nvml: Nvml | None) -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "cpus": _cpus()}
    for name in ("torch", "onnxruntime", "numpy"):
        try:
            module = __import__(name)
            info[name] = str(module.__version__)
        except ImportError:
            info[name] = None
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
    except ImportError:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except Exception as exc:  # not installed, or CUDA there but not answering
        info["cuda_device_error"] = reason(exc)
    info["nvml"] = nvml.describe() if nvml is not None else {"available": False,
                                                           "why": "--cpu-only"}
    return info


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """cuda against cpu for each runtime, replica count and batch that ran on both."""
    key = {(r["runtime"], r["device"], r["replicas"], r["batch"]): r for r in rows
           if "images_per_s" in r}
    out = []
    for (runtime, device, replicas, batch), gpu in key.items():
        cpu = key.get((runtime, "cpu", replicas, batch))
        if device != "cuda" or cpu is None:
            continue
        out.append({"runtime": runtime, "replicas": replicas, "batch": batch,
                    "images_per_s_cuda_over_cpu": round(gpu["images_per_s"] /
                                                        cpu["images_per_s"], 2),
                    "p90_cuda_over_cpu": round(gpu["call_ms_p90"] / cpu["call_ms_p90"], 3)})
    return out


def markdown(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    lines = [f"# GPU check: model {doc['model']} ({doc['input_size']}x{doc['input_size']}), "
             f"{doc['seconds']} s a figure",
             "",
             f"Python {m['python']}, {m['cpus']} CPUs, torch {m.get('torch')}, onnxruntime "
             f"{m.get('onnxruntime')}; GPU: {m.get('cuda_device') or 'none'}",
             "",
             "| runtime | device | replicas | batch | images/s | call p50 ms | call p90 ms | "
             "GPU MB per replica (torch peak) | GPU util % | GPU MB in use |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in doc["rows"]:
        if "error" in r:
            lines.append(f"| {r['runtime']} | {r['device']} | {r['replicas']} | {r['batch']} | "
                         f"error: {r['error']} | | | | | |")
            continue
        gpu = r.get("gpu_mb_per_replica")
        lines.append(
            f"| {r['runtime']} | {r['device']} | {r['replicas']} | {r['batch']} | "
            f"{r['images_per_s']:g} | {r['call_ms_p50']:g} | {r['call_ms_p90']:g} | "
            f"{', '.join(str(g) for g in gpu) if gpu else ''} | "
            f"{r.get('gpu_util_pct_mean', '')} | {r.get('gpu_used_mb_max', '')} |")
    notes = sorted({f"{r['runtime']} on {r['device']}, {r['replicas']} replica(s): {r['note']}"
                    for r in doc["rows"] if r.get("note")})
    if notes:
        lines += ["", "Notes:"] + [f"- {n}" for n in notes]
    if not doc.get("complete", True):
        lines += ["", "Incomplete: the script stopped before every combination ran."]
    if doc["skipped"]:
        lines += ["", "Not run here:"]
        lines += [f"- {s['runtime']} on {s['device']}: {s['why']}" for s in doc["skipped"]]
    if doc["ratios"]:
        lines += ["", "| runtime | replicas | batch | images/s cuda / cpu | p90 cuda / cpu |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {q['runtime']} | {q['replicas']} | {q['batch']} | "
                  f"{q['images_per_s_cuda_over_cpu']:g} | {q['p90_cuda_over_cpu']:g} |"
                  for q in doc["ratios"]]
    return "\n".join(lines) + "\n"


def _ints(text: str, what: str) -> list[int]:
    try:
        values = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"gpu_check: error: --{what}: not a list of integers: {text!r}") \
            from None
    if not values or min(values) < 1:
        raise SystemExit(f"gpu_check: error: --{what}: positive integers, got {text!r}")
    return values


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m servers.image.gpu_check",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--pack", type=Path, required=True,
                    help="the folder `infbench gpu-pack` made")
    ap.add_argument("--out", type=Path, required=True, help="where the figures go")
    ap.add_argument("--model", default="small", help="a model of the pack (default small)")
    ap.add_argument("--cpu-only", action="store_true", help="the CPU half alone (no GPU here)")
    ap.add_argument("--runtimes", default=",".join(RUNTIMES))
    ap.add_argument("--replicas", default="1,4")
    ap.add_argument("--batches", default="1,10")
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args(argv)
    replicas, batches = _ints(args.replicas, "replicas"), _ints(args.batches, "batches")
    runtimes = [r.strip() for r in args.runtimes.split(",") if r.strip()]
    if not runtimes or set(runtimes) - set(RUNTIMES) or not args.seconds > 0:
        ap.error(f"--runtimes must be among {', '.join(RUNTIMES)} and --seconds > 0")
    try:
        manifest = json.loads((args.pack / "manifest.json").read_text())
        entry = manifest["models"][args.model]
    except (OSError, ValueError, KeyError) as exc:
        print(f"gpu_check: error: {args.pack}: no pack with model {args.model!r} ({reason(exc)});"
              " make one with `infbench gpu-pack` where TensorFlow is", file=sys.stderr)
        return 1
    images = [p.read_bytes() for p in sorted((args.pack / "images").glob("*.jpg"))]
    if not images:
        print(f"gpu_check: error: no sample images in {args.pack / 'images'}", file=sys.stderr)
        return 1
    devices = ["cpu"] if args.cpu_only else list(DEVICES)
    no_gpu = {r: skip_reason(r, "cuda") for r in runtimes}
    if not args.cpu_only and all(no_gpu.values()):  # the runtimes asked for, none on a GPU
        print(f"gpu_check: error: no GPU here for {', '.join(runtimes)} "
              f"({'; '.join(str(w) for w in no_gpu.values())}); run the CPU half with "
              "--cpu-only", file=sys.stderr)
        return 1
    nvml = None if args.cpu_only else Nvml()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    doc = {"schema": SCHEMA, "model": args.model, "input_size": entry["input_size"],
           "seconds": args.seconds, "cpu_only": args.cpu_only, "machine": machine(nvml),
           "rows": rows, "skipped": skipped, "ratios": [], "complete": False,
           "made": time.strftime("%Y-%m-%dT%H:%M:%S")}

    def save() -> None:  # after every group: a later failure keeps what was measured
        doc["ratios"] = ratios(rows)
        _write(args.out / "gpu_check.json", json.dumps(doc, indent=2) + "\n")
        _write(args.out / "gpu_check.md", markdown(doc))

    for runtime in runtimes:
        path = str(args.pack / entry[runtime])
        for device in devices:
            why = skip_reason(runtime, device)
            if why:
                skipped.append({"runtime": runtime, "device": device, "why": why})
                continue
            for n in replicas:
                print(f"gpu_check: {runtime} on {device}, {n} replica(s), batches "
                      f"{', '.join(map(str, batches))} (~{len(batches) * args.seconds:.0f} s "
                      "and the start)", flush=True)
                rows += measure_group(runtime, path, device, n, images, entry["input_size"],
                                      batches, args.seconds, nvml,
                                      int(entry.get("channels", 3)))
                save()
    doc["complete"] = True
    if nvml is not None:  # NVML's read failures, if any, counted over the whole run
        doc["machine"]["nvml"] = nvml.describe()
    save()
    failed = [r for r in rows if "error" in r]
    print(f"gpu_check: {len(rows) - len(failed)} figures, {len(failed)} failed, "
          f"{len(skipped)} combination(s) skipped -> {args.out}/gpu_check.md", flush=True)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
