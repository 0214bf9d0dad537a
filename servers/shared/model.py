"""The model every server serves: build it from a seed, load it, preprocess images, predict.

Keras (and so TensorFlow) is imported lazily inside the functions that need it, so that
`preprocess`, `BadImage` and the CLI's argument checks stay cheap to import (tests, harness).

CLI:
    python -m servers.shared.model build --arch mobilenet_v2 --input-size 96 --classes 1000 \
        --seed 0 --alpha 0.35 --out build/models/small.keras
    python -m servers.shared.model onnx  --keras small.keras --images build/images --out small.onnx
    python -m servers.shared.model torch --keras small.keras --images build/images --out small.pt
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from servers.shared.cli import Parser, positive_int
from servers.shared.errors import reason
from servers.shared.runtimes import (
    DEVICES,
    ONNX_SUFFIX,
    TORCH_SUFFIX,
    Agreement,
    OnnxPredictor,
    RuntimeUnavailable,
    TorchPredictor,
    convert_to_onnx,
    convert_to_torch,
)
from servers.shared.settings import CALL_STYLES
from servers.shared.timings import TimingsWriter

if TYPE_CHECKING:
    import keras

PROG = "servers.shared.model"
ARCHS = ("tiny_cnn", "mobilenet_v2", "mnist_cnn")
# Colour channels of each architecture's input; images are converted to match (1: grayscale).
ARCH_CHANNELS = {"tiny_cnn": 3, "mobilenet_v2": 3, "mnist_cnn": 1}
CHANNELS = (1, 3)
MODEL_SUFFIXES = (".keras", ".h5", ".onnx", ".pt")  # .onnx, .pt: servers/shared/runtimes.py
# What `build` makes for given arguments; bumped whenever that changes (2: MobileNetV2's batch
# norms calibrated, calibrate_batchnorm). The harness puts its copy in each built model's file
# name (infbench/measure/assets.py MODEL_BUILD; a test holds the two equal), so a cached model
# of an older builder is rebuilt rather than reused.
BUILDER_VERSION = 2

# Cap on decoded pixels (40 MP): a small upload can decode into gigabytes otherwise. Pillow
# warns above this and raises above twice this; `preprocess` also rejects above it itself.
MAX_PIXELS = 40_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class BadImage(ValueError):
    """An uploaded image that cannot be decoded; `index` is its position in the request."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"image {index}: {reason}")
        self.index = index
        self.reason = reason


# ---------------------------------------------------------------------------------------------
# Building


def check_arch(arch: str) -> None:
    """Fail fast (before TensorFlow is imported) on an unknown architecture."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(ARCHS)})")


def build_model(arch: str, input_size: int, classes: int, seed: int,
                alpha: float = 1.0) -> keras.Model:
    """A randomly initialised model, identical for identical arguments (weights from `seed`)."""
    check_arch(arch)
    if input_size < 1 or classes < 1:
        raise ValueError("input_size and classes must be positive")
    import keras

    keras.utils.set_random_seed(seed)
    shape = (input_size, input_size, ARCH_CHANNELS[arch])
    if arch == "tiny_cnn":
        inputs = keras.Input(shape=shape, name="image")
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(classes, activation="softmax")(x)
        return keras.Model(inputs, outputs, name="tiny_cnn")
    if arch == "mnist_cnn":
        # The classic Keras MNIST convnet's shape (grayscale digits), with random weights.
        inputs = keras.Input(shape=shape, name="image")
        x = keras.layers.Conv2D(32, 3, activation="relu")(inputs)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Conv2D(64, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D(2)(x)
        x = keras.layers.Flatten()(x)
        outputs = keras.layers.Dense(classes, activation="softmax")(x)
        return keras.Model(inputs, outputs, name="mnist_cnn")
    # weights=None always: nothing is downloaded, the weights are random from the seed.
    model = keras.applications.MobileNetV2(weights=None, input_shape=shape, alpha=alpha,
                                           classes=classes)
    calibrate_batchnorm(model, seed)
    return model


def calibration_batch(shape: tuple[int, ...], seed: int, count: int = 32) -> np.ndarray:
    """`count` smooth random images of `shape` (H, W, C) in [-1, 1], the same for the same seed:
    random 6x6 colour fields resized up, which look more like photographs to a first layer
    than pixel noise does."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    coarse = rng.uniform(-1.0, 1.0, (count, 6, 6, c)).astype(np.float32)
    out = np.empty((count, h, w, c), dtype=np.float32)
    for i, field in enumerate(coarse):
        for ch in range(c):
            img = Image.fromarray(field[..., ch], mode="F")
            out[i, ..., ch] = np.asarray(img.resize((w, h), Image.Resampling.BILINEAR))
    return out


def calibrate_batchnorm(model: keras.Model, seed: int) -> None:
    """Set every BatchNormalization layer's moving mean and variance to the statistics of its
    input on `calibration_batch`, so each normalises what it really receives.

    A randomly initialised MobileNetV2 keeps the initial statistics (mean 0, variance 1) while
    its activations shrink block after block: its softmax came out 0.001 for all 1000 classes on
    every image, and any conversion of it "matched". Calibrated, its outputs differ from image
    to image (docs/servers.md#runtimes). One forward pass in training mode with momentum 0
    writes each layer's batch statistics as its moving ones, each layer seeing the layers before
    it already normalised, as at inference. Deterministic: the batch is from `seed` and the
    reductions run with TensorFlow's op determinism on.
    """
    import keras
    import tensorflow as tf

    norms = [layer for layer in model.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    if not norms:
        return
    tf.config.experimental.enable_op_determinism()
    batch = calibration_batch(tuple(model.input_shape[1:]), seed)
    saved = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    try:
        model(batch, training=True)
    finally:
        for layer, momentum in zip(norms, saved, strict=True):
            layer.momentum = momentum


def save_atomically(model: keras.Model, out: Path) -> None:
    """Save next to `out` then rename, so an interrupted build never leaves a half file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Keras picks the format from the suffix, so the temporary name keeps it.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        model.save(tmp)
        # mkstemp creates the file 0600; give it the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _human_count(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f}M"
    if n >= 1_000:
        return f"{n / 1e3:.1f}k"
    return str(n)


# ---------------------------------------------------------------------------------------------
# Loading


class SavedModelPredictor:
    """A TF SavedModel's serving signature, callable on a batch like a Keras model."""

    def __init__(self, path: str) -> None:
        import keras

        self.layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        out = self.layer(batch)
        if isinstance(out, dict):
            if len(out) != 1:
                raise ValueError(f"SavedModel has {len(out)} outputs; expected one")
            out = next(iter(out.values()))
        return np.asarray(out)

    def predict(self, batch: np.ndarray, verbose: int = 0) -> np.ndarray:
        return self(batch)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self(batch)

    def signature_input_size(self) -> int | None:
        """The square size the serving signature declares, if it declares one."""
        shape = self.signature_image_shape()
        return shape[0] if shape else None

    def signature_image_shape(self) -> tuple[int, int] | None:
        """(size, channels) of the serving signature's input, if it declares a square image."""
        try:
            obj = self.layer._reloaded_obj  # no public accessor in Keras 3
            _, kwargs = obj.signatures["serving_default"].structured_input_signature
            (spec,) = kwargs.values()
            dims = spec.shape.as_list()
        except Exception:
            return None
        return _image_shape(dims)


def _image_shape(shape: Any) -> tuple[int, int] | None:
    """(N, C) of a (batch, N, N, C) input shape with C in CHANNELS, or None if it is not one."""
    dims = list(shape)
    if (len(dims) == 4 and isinstance(dims[1], int) and dims[1] == dims[2]
            and dims[3] in CHANNELS):
        return int(dims[1]), int(dims[3])
    return None


def _square_size(shape: Any) -> int | None:
    """The N of a (batch, N, N, 3) or (batch, N, N, 1) input shape, or None."""
    found = _image_shape(shape)
    return found[0] if found else None


@dataclass
class LoadedModel:
    """A loaded model and what a server needs to know about it."""

    model: Any  # keras.Model, SavedModelPredictor, runtimes.OnnxPredictor or TorchPredictor
    input_size: int
    path: str
    kind: str  # "keras", "savedmodel", "onnx" or "torch"
    channels: int = 3  # 3: RGB images; 1: grayscale (models with an (N, N, 1) input)
    device: str = "cpu"

    @property
    def name(self) -> str:
        return Path(self.path).name

    def runtime(self) -> str:
        """The runtime and its settings, in words (model_alone.json, the servers' log)."""
        describe = getattr(self.model, "describe", None)
        if describe is not None:
            return str(describe())
        return "TensorFlow defaults (intra/inter-op = the machine's cores)"


def load_model(path: str, input_size: int | None = None, device: str = "cpu") -> LoadedModel:
    """Load a .keras/.h5 file, a SavedModel directory, an .onnx file or a torch .pt file of ours.

    `input_size` (env INFBENCH_INPUT_SIZE in the servers) is used when the model does not
    declare a fixed square input itself, as a SavedModel's signature may not. `device`
    (INFBENCH_DEVICE) is "cpu" or "cuda"; "cuda" runs ONNX Runtime's CUDA provider or torch's
    CUDA device, and is refused for Keras (TensorFlow is installed as tensorflow-cpu here).
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if p.suffix in (ONNX_SUFFIX, TORCH_SUFFIX) and p.is_file():
        runtime = (OnnxPredictor(path, device=device) if p.suffix == ONNX_SUFFIX
                   else TorchPredictor(path, device=device))
        declared = _image_shape(runtime.input_shape)
        size = (declared[0] if declared else None) or input_size
        if size is None:
            raise ValueError(f"{runtime.kind} model {path} has input shape "
                             f"{runtime.input_shape}, not (N, N, 3) or (N, N, 1); set "
                             "INFBENCH_INPUT_SIZE")
        return LoadedModel(runtime, size, path, runtime.kind, declared[1] if declared else 3,
                           device)
    if device != "cpu":
        raise RuntimeUnavailable(f"device {device!r}: a Keras model runs on TensorFlow as "
                                 "installed here (tensorflow-cpu); use an .onnx or .pt model")
    if p.is_dir():
        sm = SavedModelPredictor(path)
        declared = sm.signature_image_shape()
        size = input_size or (declared[0] if declared else None)
        if size is None:
            raise ValueError(f"cannot tell the input size of SavedModel {path}; "
                             "set INFBENCH_INPUT_SIZE")
        return LoadedModel(sm, size, path, "savedmodel", declared[1] if declared else 3)
    if p.suffix not in MODEL_SUFFIXES:
        raise ValueError(f"model file {path} must end in .keras, .h5, .onnx or .pt "
                         "(or be a SavedModel dir)")
    import keras

    model = keras.models.load_model(path, compile=False)
    declared = _image_shape(model.input_shape)
    size = (declared[0] if declared else None) or input_size
    if size is None:
        raise ValueError(f"model {path} has input shape {model.input_shape}, not (N, N, 3) or "
                         "(N, N, 1); set INFBENCH_INPUT_SIZE")
    return LoadedModel(model, size, path, "keras", declared[1] if declared else 3)


# ---------------------------------------------------------------------------------------------
# Inference


def _bad(index: int, exc: Exception) -> BadImage:
    """Pillow's complaint about an upload (OSError, ValueError, SyntaxError, ...) as BadImage."""
    if isinstance(exc, BadImage):
        return exc
    if isinstance(exc, UnidentifiedImageError):
        return BadImage(index, "not a recognised image format")
    why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return BadImage(index, why)


def image_pixels(data: bytes, index: int) -> int:
    """The pixels an upload will decode to, from its header alone (Image.open decodes nothing).

    What the servers' pixel budget counts before they decode anything; BadImage for what is not
    an image or is over the per-image cap, as decode_image would say.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            pixels = img.width * img.height
    except Exception as exc:
        raise _bad(index, exc) from None
    if pixels > MAX_PIXELS:
        raise BadImage(index, f"{pixels} pixels is over {MAX_PIXELS} per image")
    return pixels


def decode_image(data: bytes, index: int, size: int, channels: int = 3) -> np.ndarray:
    """One upload as a (size, size, channels) float32 array in [-1, 1], or BadImage.

    channels 3 is RGB; 1 is grayscale (Pillow's "L"), for models with an (N, N, 1) input.

    Keeps at most one full-size copy alive where it can: an RGB image is resized as decoded
    (convert("RGB") would copy it), another mode's source is freed as soon as it is converted,
    and every Pillow image is closed before returning, so a large decode's buffers go back to
    the allocator at once instead of when the garbage collector gets to them.
    """
    if channels not in CHANNELS:
        raise ValueError(f"channels must be one of {CHANNELS}, got {channels}")
    mode = "RGB" if channels == 3 else "L"
    try:
        img: Image.Image = Image.open(io.BytesIO(data))
    except Exception as exc:
        raise _bad(index, exc) from None
    try:
        try:
            if img.width * img.height > MAX_PIXELS:
                raise BadImage(index, f"{img.width}x{img.height} is over {MAX_PIXELS} pixels")
            # load() forces the full decode, so a truncated file fails here, in the try.
            img.load()
            if img.mode != mode:
                rgb = img.convert(mode)
                img.close()
                img = rgb
        except Exception as exc:
            raise _bad(index, exc) from None
        resized = img.resize((size, size), Image.Resampling.BILINEAR)
    finally:
        img.close()
    with resized:
        # MobileNetV2's convention: [0, 255] -> [-1, 1].
        pixels = np.asarray(resized, dtype=np.float32) / 127.5 - 1.0
    return pixels if channels == 3 else pixels[..., np.newaxis]


def preprocess(images: list[bytes], size: int, channels: int = 3) -> np.ndarray:
    """Decode, convert, resize and scale each image; stacked to (N, size, size, channels)."""
    arrays = [decode_image(data, i, size, channels) for i, data in enumerate(images)]
    if not arrays:
        return np.zeros((0, size, size, channels), dtype=np.float32)
    return np.stack(arrays)


def predict(model: Any, batch: np.ndarray, style: str = "predict",
            pad_to: int = 0) -> list[tuple[int, float]]:
    """Top-1 (class, score) per image, calling the model the way `style` names (see forward)."""
    probs = forward(model, batch, style, pad_to)
    top = probs.argmax(axis=1)
    return [(int(c), float(probs[i, c])) for i, c in enumerate(top)]


# The model's calls, one JSON line each, when a service has INFBENCH_MODEL_CALLS=1 (and the
# harness's INFBENCH_TIMING_DIR): <dir>/calls-<pid>.jsonl, written by servers.shared.timings
# (buffered, about once a second), so that a run can say what batches a server formed and how
# busy its model was, whoever's server it is (ours and the peers all call forward()):
#     {"t": unix time the call started, "images": images asked for, "padded": images the model
#      ran on (only when pad_to added blanks), "model_ms": the call and its output to NumPy,
#      "wait_ms" / "wait_max_ms": mean and longest time the call's requests waited for it,
#      from being queued (only where the caller knows: our batching app, Ray Serve's replica)}
# Off, forward() pays for one attribute read. Not for the memory studies' servers: a writer
# thread and its lines are memory of their own.
MODEL_CALLS_ENV = "INFBENCH_MODEL_CALLS"
_calls: TimingsWriter | None = None


def model_calls_log() -> TimingsWriter:
    """This process's model-call writer (a no-op one unless INFBENCH_MODEL_CALLS=1 and
    INFBENCH_TIMING_DIR are set), made on first use."""
    global _calls
    if _calls is None:
        folder = os.environ.get("INFBENCH_TIMING_DIR", "").strip()
        on = os.environ.get(MODEL_CALLS_ENV, "").strip() == "1" and folder
        _calls = TimingsWriter(Path(folder) if on else None, stem="calls")
    return _calls


def forward(model: Any, batch: np.ndarray, style: str = "predict",
            pad_to: int = 0, waited_s: list[float] | None = None) -> np.ndarray:
    """The model's whole output for `batch`, (N, outputs) float32, one model call.

    `predict` is Keras' `model.predict` (what the original study used: a tf.data pipeline per
    call), `predict_on_batch` skips that, `call` is the plain eager forward pass. `pad_to` > 0
    pads the batch with blank images up to a multiple of it, so the model sees a few fixed
    shapes instead of one per batch size (a new shape can mean a new trace and new buffers).
    `waited_s`: how long each request in the batch waited for this call (the model-call line).
    """
    log = model_calls_log()
    if log.folder is None:
        return _forward(model, batch, style, pad_to)
    t, started = time.time(), time.perf_counter()
    probs = _forward(model, batch, style, pad_to)
    record: dict[str, Any] = {"t": round(t, 6), "images": len(batch),
                              "model_ms": round((time.perf_counter() - started) * 1000, 3)}
    if pad_to > 0 and len(batch) % pad_to:
        record["padded"] = len(batch) + pad_to - len(batch) % pad_to
    if waited_s:
        record["wait_ms"] = round(1000 * sum(waited_s) / len(waited_s), 3)
        record["wait_max_ms"] = round(1000 * max(waited_s), 3)
    log.append(record)
    return probs


def _forward(model: Any, batch: np.ndarray, style: str, pad_to: int) -> np.ndarray:
    if isinstance(model, LoadedModel):
        model = model.model
    n = len(batch)
    if pad_to > 0 and n % pad_to:
        blank = np.zeros((pad_to - n % pad_to, *batch.shape[1:]), dtype=batch.dtype)
        batch = np.concatenate([batch, blank])
    if style == "predict":
        out = model.predict(batch, verbose=0)
    elif style == "predict_on_batch":
        out = model.predict_on_batch(batch)
    elif style == "call":
        out = model(batch, training=False)
    else:
        raise ValueError(f"unknown call style {style!r} (known: {', '.join(CALL_STYLES)})")
    probs = out.numpy() if hasattr(out, "numpy") else np.asarray(out)
    return np.asarray(probs.reshape(len(batch), -1)[:n], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# CLI


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _parser() -> Parser:
    parser = Parser(prog=f"python -m {PROG}", program=PROG,
                    description="Build the benchmark model.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    b = sub.add_parser("build", program=PROG, help="build a model from a seed and save it")
    b.add_argument("--arch", required=True, choices=ARCHS)
    b.add_argument("--input-size", required=True, type=positive_int)
    b.add_argument("--classes", required=True, type=positive_int)
    b.add_argument("--seed", required=True, type=int)
    b.add_argument("--alpha", type=_positive_float, default=1.0,
                   help="MobileNetV2 width multiplier (ignored by the other archs)")
    b.add_argument("--out", required=True, type=Path, help="output .keras or .h5 file")
    for name, suffix, what in (("onnx", ONNX_SUFFIX, "ONNX (tf2onnx)"),
                               ("torch", TORCH_SUFFIX, "a torch state dict (the same layers)")):
        c = sub.add_parser(name, program=PROG,
                           help=f"convert a .keras file to {what}, checked on the sample images")
        c.add_argument("--keras", required=True, type=Path, help="the .keras file")
        c.add_argument("--images", required=True, type=Path,
                       help="folder of sample .jpg images")
        c.add_argument("--out", required=True, type=Path, help=f"output {suffix} file")
    return parser


CONVERSIONS = {"onnx": (ONNX_SUFFIX, convert_to_onnx), "torch": (TORCH_SUFFIX, convert_to_torch)}


def _convert(args: argparse.Namespace, started: float) -> int:
    suffix, convert = CONVERSIONS[args.command]
    out: Path = args.out
    if out.suffix != suffix:
        print(f"{PROG}: error: --out must end in {suffix}, got {out}", file=sys.stderr)
        return 1
    jpegs = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))]
    if not jpegs:
        print(f"{PROG}: error: no sample images (*.jpg) in {args.images}", file=sys.stderr)
        return 1
    try:
        loaded = load_model(str(args.keras))
        sample = preprocess(jpegs, loaded.input_size, loaded.channels)
        del loaded
        agreement: Agreement = convert(args.keras, out, sample)
    except Exception as exc:
        print(f"{PROG}: error: {reason(exc)}", file=sys.stderr)
        return 1
    print(f"converted {args.keras.name} -> {out} ({agreement.describe()}) in "
          f"{time.perf_counter() - started:.1f} s", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    args = _parser().parse_args(argv)
    if args.command in CONVERSIONS:
        return _convert(args, started)
    out: Path = args.out
    if out.suffix not in (".keras", ".h5"):
        print(f"{PROG}: error: --out must end in .keras or .h5, got {out}",
              file=sys.stderr)
        return 1
    if args.arch == "mobilenet_v2" and args.input_size < 32:
        print("servers.shared.model: error: mobilenet_v2 needs --input-size >= 32", file=sys.stderr)
        return 1
    try:
        model = build_model(args.arch, args.input_size, args.classes, args.seed, args.alpha)
        save_atomically(model, out)
    except Exception as exc:
        print(f"{PROG}: error: {reason(exc)}", file=sys.stderr)
        return 1
    alpha = f"alpha {args.alpha}, " if args.arch == "mobilenet_v2" else ""
    print(f"built {args.arch} ({alpha}{args.input_size}x{args.input_size}, {args.classes} "
          f"classes, {_human_count(model.count_params())} params) -> {out} "
          f"in {time.perf_counter() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
