"""`infbench gpu-pack`: what scripts/gpu-check.sh carries to a machine with a GPU.

That machine has torch and onnxruntime but no TensorFlow and no network, so the models are
converted here (the `<model>-onnx` and `<model>-torch` models of experiments.toml, built and
checked against their Keras file as any run builds them) and copied with the sample images
into one folder: `<model>.onnx`, `<model>.pt`, images/*.jpg and manifest.json, which
servers/image/gpu_check.py reads.
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

from infbench import config
from infbench.cli.args import Subparsers
from infbench.measure import assets
from infbench.paths import ROOT
from infbench.results.files import write_json

NAME = "gpu-pack"
DEFAULT_OUT = assets.BUILD / "gpu-check"
SUFFIX = {"onnx": ".onnx", "torch": ".pt"}


def add_parser(sub: Subparsers) -> None:
    p = sub.add_parser(NAME, help="convert the models and copy them with the sample images "
                       "for scripts/gpu-check.sh")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"the pack's folder (default {DEFAULT_OUT.relative_to(ROOT)})")
    p.add_argument("--models", default="tiny,small",
                   help="models with -onnx and -torch twins in experiments.toml (default "
                        "tiny,small)")


def _copy(src: Path, dst: Path) -> None:
    """A file into the pack under a temporary name, then renamed: an interrupted re-pack never
    leaves the manifest naming half a file."""
    tmp = dst.with_name(f".{dst.name}.tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _onnx_channels(path: Path) -> int:
    """The channels of the ONNX model's (N, H, W, C) input."""
    import onnxruntime as ort

    shape = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]
                                 ).get_inputs()[0].shape
    return int(shape[-1])


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        raise config.ConfigError("--models: name one model or more")
    wanted = {(n, fmt): exp.model(f"{n}-{fmt}") for n in names for fmt in SUFFIX}
    for (n, fmt), m in wanted.items():
        if m.format != fmt:
            raise config.ConfigError(f"models.{n}-{fmt}: format is {m.format!r}, not {fmt!r}")
    if not config.torch_installed():  # the .pt files are converted here, before anything
        raise config.ConfigError(f"gpu-pack converts the models to PyTorch too: "
                                 f"{config.TORCH_NOT_INSTALLED}")
    out: Path = args.out
    (out / "images").mkdir(parents=True, exist_ok=True)
    for p in assets.ensure_images():
        _copy(p, out / "images" / p.name)
    models: dict[str, dict[str, object]] = {}
    for (n, fmt), m in wanted.items():
        built = assets.ensure_model(m)
        _copy(built, out / f"{n}{SUFFIX[fmt]}")
        entry = models.setdefault(n, {"input_size": m.input_size, "arch": m.arch})
        entry[fmt] = f"{n}{SUFFIX[fmt]}"
        entry[f"{fmt}_built_from"] = built.name
        if fmt == "onnx":  # what the images are decoded to there: RGB, or grayscale
            entry["channels"] = _onnx_channels(built)
    write_json(out / "manifest.json", {"schema": 1, "models": models,
                                       "made": time.strftime("%Y-%m-%dT%H:%M:%S")})
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"gpu pack: {', '.join(names)} as .onnx and .pt, {len(list(out.glob('images/*')))} "
          f"images, {size / 2**20:.1f} MiB -> {out}")
    return 0
