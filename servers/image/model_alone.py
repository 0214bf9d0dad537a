"""The model alone, no HTTP: what serving could reach at best on this machine.

    python -m servers.image.model_alone --model PATH --images DIR --batches 1,10,40 \
        [--call predict] [--seconds 5] [--out model_alone.json]

Run by the harness in a child process (it never imports TensorFlow itself), with the server's
settings: the same model file, the same call style (INFBENCH_CALL's predict | predict_on_batch
| call), the profile's batch sizes and the same sample JPEGs. For each batch, one call after
another on one thread, after a warm-up call:

  model_images_per_s         the model call only, on a batch decoded once
  decode_model_images_per_s  decode + resize + scale each JPEG (Pillow, servers.shared.model)
                             and then the model call: all a server's own work minus HTTP and parsing

A step's serving efficiency is its served images/s over decode_model_images_per_s at its batch.
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
from servers.shared.settings import CALL_STYLES

# Version of model_alone.json. 1: first version.
SCHEMA = 1


def _rate(fn: Any, images: int, seconds: float) -> dict[str, Any]:
    """Calls of fn() one after another for about `seconds`: images/s and the median call."""
    fn()  # warm-up: the first call of a shape traces the model
    times: list[float] = []
    start = time.perf_counter()
    while not times or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    total = sum(times)
    times.sort()
    return {"images_per_s": round(images * len(times) / total, 2), "calls": len(times),
            "median_call_ms": round(1000 * times[len(times) // 2], 3)}


def _threads(onnx: Any) -> str:
    """ONNX Runtime's thread settings as the model set them (0: its default, the cores)."""
    st = onnx.settings
    return (f"ONNX Runtime intra-op {st.intra_op_threads or 'default'}, inter-op "
            f"{st.inter_op_threads or 'default'}, cpu_mem_arena {st.cpu_mem_arena}")


def measure(model_path: str, images_dir: Path, batches: list[int], call: str,
            seconds: float) -> dict[str, Any]:
    loaded = load_model(model_path)
    jpegs = [p.read_bytes() for p in sorted(images_dir.glob("*.jpg"))]
    if not jpegs:
        raise SystemExit(f"model_alone: no sample images in {images_dir}")
    out: list[dict[str, Any]] = []
    for b in batches:
        files = [jpegs[i % len(jpegs)] for i in range(b)]
        decoded = preprocess(files, loaded.input_size, loaded.channels)
        model = _rate(lambda d=decoded: forward(loaded, d, call), b, seconds)
        full = _rate(lambda f=files: forward(
            loaded, preprocess(f, loaded.input_size, loaded.channels), call), b, seconds)
        out.append({"batch": b, "model_images_per_s": model["images_per_s"],
                    "decode_model_images_per_s": full["images_per_s"],
                    "model_median_call_ms": model["median_call_ms"],
                    "decode_model_median_call_ms": full["median_call_ms"],
                    "calls": {"model": model["calls"], "decode_model": full["calls"]}})
    return {"schema": SCHEMA, "model": loaded.name, "input_size": loaded.input_size,
            "call": call, "seconds_per_figure": seconds, "pid": os.getpid(),
            "threads": _threads(loaded.model) if loaded.kind == "onnx" else
            "TensorFlow defaults (intra/inter-op = the machine's cores)",
            "batches": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=Path, required=True)
    ap.add_argument("--batches", required=True, help="comma-separated batch sizes")
    ap.add_argument("--call", choices=CALL_STYLES, default="predict")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    try:
        batches = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    except ValueError:
        ap.error(f"--batches: not a list of integers: {args.batches!r}")
    if not batches or min(batches) < 1 or args.seconds <= 0:
        ap.error("--batches must be positive integers and --seconds > 0")
    doc = measure(args.model, args.images, batches, args.call, args.seconds)
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
