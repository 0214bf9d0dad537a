"""Things a run needs before any server starts: the model file and the sample images.

Both are made locally and cached under build/: the model from a fixed seed by
`python -m servers.shared.model build` (TensorFlow is imported in that child, never in the harness),
converted to ONNX or to a PyTorch state dict by the same module's `onnx` and `torch` commands
when its format says, the images from matplotlib's bundled photograph. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from infbench.config import Model, as_dict, fingerprint
from infbench.config.model import TORCH_NOT_INSTALLED, torch_installed
from infbench.paths import ROOT
from infbench.results.files import write_text

BUILD = ROOT / "build"
IMAGE_COUNT = 24
IMAGE_SEED = 1906  # Grace Hopper's birth year; any fixed value keeps the set reproducible
# servers.shared.model.BUILDER_VERSION, copied (the harness never imports the servers; a unit
# test holds the two equal): part of a built model's file name, so a builder that makes
# something else for the same spec does not reuse the files of the old one.
MODEL_BUILD = 2
SUFFIXES = {"keras": ".keras", "onnx": ".onnx", "torch": ".pt"}
# What each converted format is called in the build's progress lines.
CONVERTED = {"onnx": "ONNX", "torch": "PyTorch"}


class AssetError(Exception):
    pass


def model_path(model: Model, build_dir: Path = BUILD) -> Path:
    if model.is_file:
        return Path(model.path)
    suffix = SUFFIXES[model.format]
    # The description is prose: two specs that differ only there build the same file.
    made_of = dataclasses.replace(model, description="")
    return build_dir / "models" / f"{model.name}-{fingerprint(made_of, MODEL_BUILD)}{suffix}"


def keras_twin(model: Model) -> Model:
    """The Keras model an ONNX or torch model is converted from: the same spec, format keras,
    without the runtime's settings (so every setting of one runtime shares one Keras file)."""
    return dataclasses.replace(model, format="keras", intra_op_threads=0, inter_op_threads=0,
                               cpu_mem_arena=True)


@contextlib.contextmanager
def _build_lock(build_dir: Path) -> Iterator[None]:
    """One builder at a time per build folder: two runs (or two test workers) that need the same
    model or images wait for the first to finish instead of reading a half-written file."""
    build_dir.mkdir(parents=True, exist_ok=True)
    with (build_dir / ".build.lock").open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_model(model: Model, build_dir: Path = BUILD, log: bool = True) -> Path:
    """Build the model once per spec (the file name carries a hash of the spec)."""
    path = model_path(model, build_dir)
    if model.is_file:
        if not path.exists():
            raise AssetError(f"model {model.name!r}: no file at {path}")
        return path
    if path.exists():
        return path
    if model.format == "torch" and not torch_installed():
        # Before the Keras file is built: the conversion needs torch in this environment.
        raise AssetError(f"model {model.name!r} is converted to PyTorch: {TORCH_NOT_INSTALLED}")
    if model.format in CONVERTED:
        keras_file = ensure_model(keras_twin(model), build_dir, log)
        ensure_images(build_dir)
        with _build_lock(build_dir):
            return _convert_model(model, keras_file, path, build_dir, log)
    with _build_lock(build_dir):
        return _build_model(model, path, log)


def _convert_model(model: Model, keras_file: Path, path: Path, build_dir: Path,
                   log: bool) -> Path:
    """The ONNX or torch file from the Keras one (tf2onnx, or the same layers rebuilt in
    torch, in a child), checked against the Keras file on the sample images there: outputs
    that do not vary across the images, differ by over 1e-4 or name another top-1 class fail
    the build (servers.shared.runtimes.compare_outputs)."""
    if path.exists():
        return path
    what = CONVERTED[model.format]
    if log:
        print(f"converting model {model.name!r} to {what} ...", flush=True)
    _write_spec(model, path)  # before the file exists: a model file never lacks its settings
    argv = [sys.executable, "-m", "servers.shared.model", model.format, "--keras",
            str(keras_file), "--images", str(images_dir(build_dir)), "--out", str(path)]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=_quiet_tf_env())
    if res.returncode != 0 or not path.exists():
        err = (res.stderr or res.stdout).strip().splitlines()
        raise AssetError(f"converting model {model.name!r} to {what} failed: "
                         f"{err[-1] if err else '?'}")
    if log:
        print("  " + res.stdout.strip().splitlines()[-1], flush=True)
    return path


def _build_model(model: Model, path: Path, log: bool) -> Path:
    if path.exists():  # built by another process while this one waited for the lock
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if log:
        print(f"building model {model.name!r} ({model.description or model.arch}) ...",
              flush=True)
    _write_spec(model, path)
    argv = [sys.executable, "-m", "servers.shared.model", "build", "--arch", model.arch,
            "--input-size", str(model.input_size), "--classes", str(model.classes),
            "--seed", str(model.seed), "--alpha", str(model.alpha), "--out", str(path)]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True,
                         env=_quiet_tf_env())
    if res.returncode != 0 or not path.exists():
        err = (res.stderr or res.stdout).strip().splitlines()
        raise AssetError(f"building model {model.name!r} failed: {err[-1] if err else '?'}")
    if log:
        print("  " + res.stdout.strip().splitlines()[-1], flush=True)
        for line in res.stderr.splitlines():
            if ": warning: " in line:
                print("  " + line, flush=True)
    return path


def _write_spec(model: Model, path: Path) -> None:
    """The model's settings (threads, arena) beside its file, `<file>.json`, where the
    predictor reads them: written atomically, and before the model file is renamed into place,
    so that no reader finds the model without them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path.with_suffix(".json"), json.dumps(as_dict(model), indent=2) + "\n")


def _quiet_tf_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


CHECK_TIMEOUT_S = 300.0


def check_model_file(model: Model) -> None:
    """A model file of the user's, checked before any server starts: it exists, is not empty,
    and loads with the very code the servers use (servers.shared.model.load_model, in a child: the
    harness never imports TensorFlow). A 0-byte or garbage file is one line here, not a server
    that fails at start-up with Keras's misleading "file not found"."""
    path = Path(model.path)
    where = f"model {model.name!r} ({path})"
    if not path.exists():
        raise AssetError(f"{where}: no such file or folder")
    if path.is_file() and path.stat().st_size == 0:
        raise AssetError(f"{where}: the file is empty")
    code = ("import sys\nfrom servers.shared.model import load_model\n"
            "m = load_model(sys.argv[1])\nprint(m.kind, m.input_size)")
    try:
        res = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT,
                             capture_output=True, text=True, env=_quiet_tf_env(),
                             timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise AssetError(f"{where}: loading it took over {CHECK_TIMEOUT_S:.0f} s") from None
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr or res.stdout).strip().splitlines() if ln.strip()]
        raise AssetError(f"{where}: cannot be loaded: {lines[-1][:300] if lines else '?'}")


def images_dir(build_dir: Path = BUILD) -> Path:
    return build_dir / "images"


def ensure_images(build_dir: Path = BUILD, count: int = IMAGE_COUNT) -> list[Path]:
    """JPEGs of varied size and quality, cut from matplotlib's sample photograph."""
    made = _existing_images(build_dir, count)
    if made is not None:
        return made
    with _build_lock(build_dir):
        return _existing_images(build_dir, count) or _make_images(build_dir, count)


def _existing_images(build_dir: Path, count: int) -> list[Path] | None:
    out = images_dir(build_dir)
    manifest = out / "images.json"
    if manifest.exists():
        names = json.loads(manifest.read_text()).get("files", [])
        paths = [out / n for n in names]
        if len(paths) == count and all(p.exists() for p in paths):
            return paths
    return None


def _make_images(build_dir: Path, count: int) -> list[Path]:
    out = images_dir(build_dir)
    manifest = out / "images.json"
    from matplotlib import cbook
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    sample = Path(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    photo = Image.open(io.BytesIO(sample.read_bytes())).convert("RGB")
    rng = random.Random(IMAGE_SEED)
    w, h = photo.size
    paths = []
    for i in range(count):
        # A random crop (at least half of each side), resized to 160..720 px on the long side.
        cw, ch = rng.randint(w // 2, w), rng.randint(h // 2, h)
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = photo.crop((x, y, x + cw, y + ch))
        long_side = rng.randint(160, 720)
        scale = long_side / max(cw, ch)
        crop = crop.resize((max(8, round(cw * scale)), max(8, round(ch * scale))),
                           Image.Resampling.BILINEAR)
        p = out / f"sample_{i:02d}.jpg"
        crop.save(p, "JPEG", quality=rng.randint(70, 95))
        paths.append(p)
    manifest.write_text(json.dumps({
        "source": "matplotlib sample data grace_hopper.jpg",
        "seed": IMAGE_SEED, "made": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "files": [p.name for p in paths],
        "bytes": [p.stat().st_size for p in paths],
    }, indent=2) + "\n")
    return paths
