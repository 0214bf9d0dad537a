"""The model alone, no HTTP: what serving could reach at best on this machine.

    python -m servers.image.model_alone --model PATH --images DIR --batches 1,10,40 \
        [--call predict] [--seconds 5] [--device cpu] [--out model_alone.json]

Run by the harness in a child process (it never imports TensorFlow itself), with the server's
settings: the same model file (Keras, ONNX or PyTorch), the same call style (INFBENCH_CALL's
predict | predict_on_batch | call), the same device (INFBENCH_DEVICE), the profile's batch sizes
and the same sample JPEGs. For each batch, one call after another on one thread, after a warm-up
call:

  model_images_per_s         the model call only, on a batch decoded once
  decode_images_per_s        decode + resize + scale each JPEG alone (Pillow, servers.shared.model)
  decode_model_images_per_s  decode and then the model call: all a server's own work minus HTTP
                             and parsing

and beside each, its CPU: `*_cpu_ms_per_image` is the process's CPU time (user + system, every
thread: TensorFlow's, ONNX Runtime's and PyTorch's own thread pools included,
time.process_time) over the calls, per image; `*_cores` is that CPU over the wall time (how
many cores the call kept busy).
`cores` says how many cores this process may use: the CPUs it may be scheduled on
(os.sched_getaffinity) capped by its cgroup's CPU quota (cpu.max, or cpu.cfs_quota_us under
cgroup v1), the smaller of the two.

A step's serving efficiency is its served images/s over decode_model_images_per_s at its batch;
the machine's limit is cores / (decode + model CPU per image at the best batch)
(infbench/analysis/limit.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from servers.shared.model import forward, load_model, preprocess
from servers.shared.settings import CALL_STYLES, DEVICES

# Version of model_alone.json (the history is in infbench/results/schemas.py, which must say
# the same number). 1: first version. 2: CPU per image and cores used of each figure, decode
# alone, and `cores` (the usable cores: affinity and cgroup quota). ("threads" says the runtime:
# TensorFlow, ONNX Runtime or PyTorch, and its settings; "kind" and "device" were added to 2
# without a new version: readers take them as optional.)
SCHEMA = 2
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _rate(fn: Any, images: int, seconds: float) -> dict[str, Any]:
    """Calls of fn() one after another for about `seconds`: images/s, the median call, and the
    process's CPU per image and cores kept busy over those calls."""
    fn()  # warm-up: the first call of a shape traces the model
    times: list[float] = []
    cpu0 = time.process_time()
    start = time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    cpu = time.process_time() - cpu0
    wall = time.perf_counter() - start
    total = sum(times)
    times.sort()
    return {"images_per_s": round(images * len(times) / total, 2), "calls": len(times),
            "median_call_ms": round(1000 * times[len(times) // 2], 3),
            "cpu_ms_per_image": round(1000 * cpu / (images * len(times)), 4),
            "cores": round(cpu / wall, 3) if wall > 0 else None}


def _cgroup_quota(root: Path = CGROUP_ROOT, self_cgroup: Path = Path("/proc/self/cgroup")
                  ) -> tuple[float | None, str | None]:
    """(cores the CPU quota allows, where it was read) of this process's cgroup and every
    ancestor's, the tightest; (None, None) without a quota. cgroup v2's `cpu.max` ("max 100000"
    or "150000 100000") or v1's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none). When the
    process's own cgroup cannot be read: (None, "unreadable: <why>"), never taken for "none"."""
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError as e:
        return None, f"unreadable: {self_cgroup}: {e.strerror or e}"
    found: list[tuple[float, str]] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        v2 = controllers == ""
        if not v2 and "cpu" not in controllers.split(","):
            continue
        bases = [root, root / "unified"] if v2 else \
            [root / c for c in ("cpu", "cpu,cpuacct", "cpuacct,cpu")]
        for base in bases:
            here = base / rel.lstrip("/")
            while True:
                quota = _read_quota(here, v2)
                if quota is not None:
                    found.append((quota, str(here)))
                if here == base or base not in here.parents:
                    break
                here = here.parent
    if not found:
        return None, None
    return min(found)


def _read_quota(folder: Path, v2: bool) -> float | None:
    try:
        if v2:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        q = int((folder / "cpu.cfs_quota_us").read_text())
        return None if q <= 0 else q / int((folder / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError, ZeroDivisionError):
        return None


def usable_cores() -> dict[str, Any]:
    """How many cores this process (and the servers the harness starts beside it, which
    inherit its affinity and cgroup) may use: its CPU affinity, capped by a cgroup quota."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count() or 1
    quota, where = _cgroup_quota()
    usable = float(affinity) if quota is None else min(float(affinity), quota)
    source = "affinity" if quota is None or affinity <= quota else f"cgroup quota ({where})"
    if quota is None and where:  # the quota could not be read: the affinity, said so
        source = f"affinity (cgroup quota {where})"
    return {"usable": round(usable, 3), "affinity": affinity, "cpu_count": os.cpu_count(),
            "cgroup_quota": None if quota is None else round(quota, 3),
            "cgroup_quota_from": where, "source": source}


def measure(model_path: str, images_dir: Path, batches: list[int], call: str,
            seconds: float, device: str = "cpu") -> dict[str, Any]:
    loaded = load_model(model_path, device=device)
    jpegs = [p.read_bytes() for p in sorted(images_dir.glob("*.jpg"))]
    if not jpegs:
        raise SystemExit(f"model_alone: no sample images in {images_dir}")
    out: list[dict[str, Any]] = []
    for b in batches:
        files = [jpegs[i % len(jpegs)] for i in range(b)]
        decoded = preprocess(files, loaded.input_size, loaded.channels)
        model = _rate(lambda d=decoded: forward(loaded, d, call), b, seconds)
        decode = _rate(lambda f=files: preprocess(f, loaded.input_size, loaded.channels), b,
                       seconds)
        full = _rate(lambda f=files: forward(
            loaded, preprocess(f, loaded.input_size, loaded.channels), call), b, seconds)
        out.append({"batch": b, "model_images_per_s": model["images_per_s"],
                    "decode_images_per_s": decode["images_per_s"],
                    "decode_model_images_per_s": full["images_per_s"],
                    "model_median_call_ms": model["median_call_ms"],
                    "decode_median_call_ms": decode["median_call_ms"],
                    "decode_model_median_call_ms": full["median_call_ms"],
                    "model_cpu_ms_per_image": model["cpu_ms_per_image"],
                    "decode_cpu_ms_per_image": decode["cpu_ms_per_image"],
                    "decode_model_cpu_ms_per_image": full["cpu_ms_per_image"],
                    "model_cores": model["cores"], "decode_cores": decode["cores"],
                    "decode_model_cores": full["cores"],
                    "calls": {"model": model["calls"], "decode": decode["calls"],
                              "decode_model": full["calls"]}})
    return {"schema": SCHEMA, "model": loaded.name, "input_size": loaded.input_size,
            "call": call, "seconds_per_figure": seconds, "pid": os.getpid(),
            "cores": usable_cores(),
            "kind": loaded.kind, "device": device, "threads": loaded.runtime(),
            "batches": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--batches", required=True, help="comma-separated batch sizes")
    ap.add_argument("--call", choices=CALL_STYLES, default="predict")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--device", choices=DEVICES, default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        ap.error(f"--batches: not a list of integers: {args.batches!r}")
    if not batches or min(batches) < 1 or args.seconds <= 0:
        ap.error("--batches must be positive integers and --seconds > 0")
    doc = measure(args.model, args.images, batches, args.call, args.seconds, args.device)
    text = json.dumps(doc, indent=2)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(args.out)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
