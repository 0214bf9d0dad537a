"""The model alone on Keras, ONNX Runtime and PyTorch, the same weights, alternated.

    flock /tmp/infbench-heavy.lock python -m benchmarks.runtimes_alone [--model small]
        [--batches 1,40] [--seconds 5] [--rounds 1] [--call predict_on_batch]

Builds (or finds) `<model>`, `<model>-onnx` and `<model>-torch`, then runs the model-alone
child (servers/image/model_alone.py, each run a fresh process, so no runtime shares a process
with another) in the order K O T T O K, `--rounds` times: each runtime is measured early and
late, so a machine that gets busier or quieter during the run moves all three alike. Printed
per run and as each runtime's median over its runs: the model call's images/s and decode +
model's, at each batch. Results: results/bench/runtimes-alone-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from infbench import config
from infbench.measure import assets, model_alone
from infbench.paths import ROOT

ORDER = ("keras", "onnx", "torch", "torch", "onnx", "keras")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="small")
    ap.add_argument("--batches", default="1,40")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--call", default="predict_on_batch")
    args = ap.parse_args(argv)
    if not config.torch_installed():
        print(f"runtimes_alone: error: the torch column needs PyTorch: "
              f"{config.TORCH_NOT_INSTALLED}", file=sys.stderr)
        return 1
    batches = [int(b) for b in args.batches.split(",")]
    exp = config.load(ROOT / "experiments.toml")
    names = {"keras": args.model, "onnx": f"{args.model}-onnx", "torch": f"{args.model}-torch"}
    files = {kind: assets.ensure_model(exp.model(name)) for kind, name in names.items()}
    images = assets.images_dir()
    assets.ensure_images()
    out_dir = ROOT / "results" / "bench"
    out_dir.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for r in range(args.rounds):
        for kind in ORDER:
            out = out_dir / f".runtimes-alone-{kind}.json"
            cmd = model_alone.argv(files[kind], images, batches, args.call, out, args.seconds)
            res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                                 env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            if res.returncode != 0:
                print(f"{kind}: failed: {res.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
                return 1
            doc = json.loads(out.read_text())
            out.unlink()
            runs.append({"round": r, "runtime": kind, "threads": doc["threads"],
                         "batches": doc["batches"]})
            print(f"round {r} {kind:5s} " + "  ".join(
                f"b{b['batch']}: model {b['model_images_per_s']:g}, decode+model "
                f"{b['decode_model_images_per_s']:g}" for b in doc["batches"]), flush=True)
    medians: dict[str, dict[int, dict[str, float]]] = {}
    for kind in names:
        medians[kind] = {}
        for b in batches:
            rows = [x for run in runs if run["runtime"] == kind for x in run["batches"]
                    if x["batch"] == b]
            medians[kind][b] = {k: statistics.median(x[k] for x in rows) for k in
                                ("model_images_per_s", "decode_model_images_per_s")}
    print("\nmedian images/s (model / decode + model):")
    for kind, per in medians.items():
        print(f"  {kind:5s} " + "  ".join(
            f"b{b}: {m['model_images_per_s']:g} / {m['decode_model_images_per_s']:g}"
            for b, m in per.items()))
    path = out_dir / f"runtimes-alone-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"model": args.model, "call": args.call, "seconds": args.seconds,
                                "order": ORDER, "runs": runs, "medians": medians}, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
