"""The model runtimes other than Keras: one small predictor per format, each callable on a
preprocessed batch the way a Keras model is (`predict`, `predict_on_batch`, `__call__`), so that
every server, the queue worker and the model-alone child keep one code path (`forward`).

ONNX Runtime and PyTorch are imported lazily, only when their file is loaded, and neither needs
TensorFlow: an .onnx or a .pt file of ours runs where only that runtime is installed
(scripts/gpu-check.sh). Their settings are the model's (experiments.toml [models.*]): the
build writes them beside the file, in the `<file>.json` the harness keeps for every model it
builds, and the predictor reads them there:

    intra_op_threads  threads inside one operator (0: the runtime's default, the cores);
                      torch.set_num_threads for PyTorch
    inter_op_threads  threads across independent operators (0: its default);
                      torch.set_num_interop_threads for PyTorch (once per process)
    cpu_mem_arena     ONNX Runtime only: its arena allocator on the CPU (true: its default);
                      false frees each run's buffers back to malloc instead of keeping them

`device` ("cpu" or "cuda", the service's; INFBENCH_DEVICE in the servers) picks ONNX Runtime's
CUDA execution provider or torch's CUDA device; asked for and not there, it is an error at
load time, never a silent fall-back to the CPU.

The conversions (Keras -> ONNX with tf2onnx; Keras -> torch layer by layer with the same
weights, saved as a state dict and the description that builds the module:
servers/shared/keras_torch.py) run at build time, and each is checked against the
Keras file on the sample images by `compare_outputs`, which can fail: the outputs must vary
across the images, agree within TOLERANCE, and name the same top-1 class.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ONNX_SUFFIX = ".onnx"
TORCH_SUFFIX = ".pt"
ONNX_OPSET = 17
TOLERANCE = 1e-4
# The reference outputs must spread across the sample images by at least this many tolerances,
# or a wrong conversion could agree with them as well as a right one.
MIN_SPREAD = 10
DEVICES = ("cpu", "cuda")


class RuntimeUnavailable(ValueError):
    """A device or runtime asked for that this machine does not have (one line)."""


TORCH_MISSING = ("a .pt model runs on PyTorch, which is not installed in this environment "
                 "(it is optional: make torch)")


def _need_torch() -> None:
    """torch importable, or the one line that says how to get it (not a bare ImportError)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise RuntimeUnavailable(TORCH_MISSING) from None


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")


def _beside(path: Path) -> dict[str, Any]:
    """The settings the build wrote next to `path` (none written: {})."""
    side = path.with_suffix(".json")
    if not side.is_file():
        return {}
    data = json.loads(side.read_text())
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class OnnxSettings:
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    cpu_mem_arena: bool = True

    @classmethod
    def beside(cls, path: Path) -> OnnxSettings:
        data = _beside(path)
        return cls(intra_op_threads=int(data.get("intra_op_threads", 0)),
                   inter_op_threads=int(data.get("inter_op_threads", 0)),
                   cpu_mem_arena=bool(data.get("cpu_mem_arena", True)))

    def describe(self) -> str:
        return (f"ONNX Runtime intra-op {self.intra_op_threads or 'default'}, inter-op "
                f"{self.inter_op_threads or 'default'}, cpu_mem_arena {self.cpu_mem_arena}")


@dataclass(frozen=True)
class TorchSettings:
    intra_op_threads: int = 0
    inter_op_threads: int = 0

    @classmethod
    def beside(cls, path: Path) -> TorchSettings:
        data = _beside(path)
        return cls(intra_op_threads=int(data.get("intra_op_threads", 0)),
                   inter_op_threads=int(data.get("inter_op_threads", 0)))

    def describe(self) -> str:
        import torch

        return (f"PyTorch intra-op {torch.get_num_threads()} (asked: "
                f"{self.intra_op_threads or 'default'}), inter-op "
                f"{torch.get_num_interop_threads()} (asked: "
                f"{self.inter_op_threads or 'default'}), inference_mode")


class _Batchwise:
    """Keras' three call styles on one `__call__`."""

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        raise NotImplementedError

    def predict(self, batch: np.ndarray, verbose: int = 0) -> np.ndarray:
        return self(batch)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self(batch)


class OnnxPredictor(_Batchwise):
    """An ONNX Runtime session (CPU, or the CUDA execution provider), callable like Keras."""

    kind = "onnx"

    def __init__(self, path: str, settings: OnnxSettings | None = None,
                 device: str = "cpu") -> None:
        import onnxruntime as ort

        _check_device(device)
        self.settings = settings or OnnxSettings.beside(Path(path))
        self.device = device
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.intra_op_threads
        opts.inter_op_num_threads = self.settings.inter_op_threads
        opts.enable_cpu_mem_arena = self.settings.cpu_mem_arena
        providers = ["CPUExecutionProvider"]
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeUnavailable(
                    "device 'cuda': this ONNX Runtime has no CUDAExecutionProvider (available: "
                    f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeUnavailable("device 'cuda': ONNX Runtime could not start its CUDA "
                                     f"provider (it runs {self.session.get_providers()})")
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX model {path} has {len(inputs)} inputs; expected one")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(
            batch, dtype=np.float32)})
        return np.asarray(out)

    def describe(self) -> str:
        return f"{self.settings.describe()}, {self.session.get_providers()[0]}"


def _set_torch_threads(settings: TorchSettings) -> None:
    """torch's thread pools as the model asks (0: leave its default). The inter-op pool can be
    sized only once per process, before any parallel work: asked for again differently, that
    is an error rather than a setting silently not applied."""
    import torch

    if settings.intra_op_threads:
        torch.set_num_threads(settings.intra_op_threads)
    want = settings.inter_op_threads
    if want and torch.get_num_interop_threads() != want:
        try:
            torch.set_num_interop_threads(want)
        except RuntimeError as exc:
            raise ValueError(f"inter_op_threads {want}: torch could not set it in this process "
                             f"({str(exc).splitlines()[0]})") from None


class TorchPredictor(_Batchwise):
    """A torch module under torch.inference_mode, on the CPU or CUDA, callable like Keras.

    The file is `torch.save` of a description of the layers and their state dict
    (servers/shared/keras_torch.py FILE_FORMAT), read with weights_only=True: no pickled code
    runs, and the module is built by our code with torch alone (no Keras, no TensorFlow)."""

    kind = "torch"

    def __init__(self, path: str, settings: TorchSettings | None = None,
                 device: str = "cpu") -> None:
        _need_torch()
        import torch

        from servers.shared.keras_torch import from_file

        _check_device(device)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeUnavailable(f"device 'cuda': torch {torch.__version__} sees no CUDA "
                                     "device (a CPU build, or no GPU)")
        self.settings = settings or TorchSettings.beside(Path(path))
        _set_torch_threads(self.settings)
        self.device = device
        try:
            doc = torch.load(path, map_location="cpu", weights_only=True)
            module, shape = from_file(doc)
        except Exception as exc:  # not a zip, not ours, a newer version: one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{path} is not a model file of ours that torch "
                             f"{torch.__version__} can load: {first[:200]}") from None
        self.module = module.to(device)
        self.input_shape = tuple(shape)

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        import torch

        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
            out = self.module(x.to(self.device))
            return np.asarray(out.float().cpu().numpy())

    def describe(self) -> str:
        return f"{self.settings.describe()}, device {self.device}"


# ---------------------------------------------------------------------------------------------
# The equivalence check of a conversion


@dataclass(frozen=True)
class Agreement:
    """How a converted model's outputs compare with the reference's on the sample images."""

    diff: float  # the largest absolute difference
    spread: float  # the largest standard deviation of one reference output across the images
    top1_classes: int  # distinct top-1 classes of the reference over the images
    images: int

    def describe(self) -> str:
        return (f"outputs within {self.diff:.2g} of the Keras file's on {self.images} sample "
                f"images (their spread {self.spread:.2g}, {self.top1_classes} distinct top-1 "
                "classes, the same on both)")


def compare_outputs(want: np.ndarray, got: np.ndarray,
                    tolerance: float = TOLERANCE) -> Agreement:
    """The converted outputs `got` against the reference `want` (images x outputs); raises
    ValueError, one line, unless they agree. A check that can fail: besides every output
    within `tolerance`, the reference outputs must vary across the images (by MIN_SPREAD
    tolerances: a model that answers the same for every image would match any conversion that
    also answers a constant), and each image's top-1 class must be the same on both, wherever
    the reference's best two are further apart than the tolerance."""
    want = np.asarray(want, dtype=np.float64)
    got = np.asarray(got, dtype=np.float64)
    if want.shape != got.shape:
        raise ValueError(f"the converted model's outputs have shape {got.shape}, the Keras "
                         f"file's {want.shape}")
    if want.ndim != 2 or len(want) < 2:
        raise ValueError(f"the check needs outputs of 2 or more images, got shape {want.shape}")
    if not np.isfinite(got).all():
        raise ValueError("the converted model's outputs are not all finite")
    spread = float(want.std(axis=0).max())
    if not spread >= MIN_SPREAD * tolerance:
        raise ValueError(f"the Keras file's outputs barely vary across the {len(want)} sample "
                         f"images (spread {spread:.2g}, under {MIN_SPREAD} x {tolerance:g}): the "
                         "check could not tell a wrong conversion from a right one")
    diff = float(np.abs(want - got).max())
    if not diff <= tolerance:
        raise ValueError(f"the converted model's outputs differ from the Keras file's by "
                         f"{diff:.3g} (over {tolerance:g}) on the sample images")
    if want.shape[1] > 1:
        top2 = np.sort(want, axis=1)[:, -2:]
        clear = (top2[:, 1] - top2[:, 0]) > tolerance
        wrong = int(((want.argmax(axis=1) != got.argmax(axis=1)) & clear).sum())
        if wrong:
            raise ValueError(f"the converted model's top-1 class differs from the Keras file's "
                             f"on {wrong} of {len(want)} sample images")
    return Agreement(diff=diff, spread=spread,
                     top1_classes=len(set(want.argmax(axis=1).tolist())), images=len(want))


def _write_checked(out: Path, write: Callable[[Path], None],
                   check: Callable[[Path], Agreement]) -> Agreement:
    """`write` a file next to `out`, `check` it, and only then rename it to `out`: a file that
    fails the check (or an interrupted build) never takes the model's name."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        agreement = check(Path(tmp))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return agreement


def convert_to_onnx(keras_path: Path, out: Path, sample: np.ndarray) -> Agreement:
    """The Keras file as an ONNX file at `out` (tf2onnx; the same weights), checked against the
    Keras file's outputs on `sample` (compare_outputs); no file is left when it fails."""
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(keras_path, compile=False)
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image"),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=ONNX_OPSET)
    want = np.asarray(model.predict_on_batch(sample))
    return _write_checked(
        out, lambda tmp: tmp.write_bytes(proto.SerializeToString()),
        lambda tmp: compare_outputs(want, OnnxPredictor(str(tmp), OnnxSettings())(sample)))


def convert_to_torch(keras_path: Path, out: Path, sample: np.ndarray,
                     tweak: Callable[[Any], None] | None = None) -> Agreement:
    """The Keras file as a torch file of ours at `out`: the same layers with the same weights
    (servers/shared/keras_torch.py), checked against the Keras file's outputs on `sample`
    (compare_outputs); no file is left when it fails. `tweak` (tests) may alter the torch
    module's weights before they are saved, as a wrong conversion would."""
    _need_torch()
    import keras
    import torch

    from servers.shared.keras_torch import describe, from_file

    model = keras.models.load_model(keras_path, compile=False)
    doc = describe(model)
    if tweak is not None:
        module, _ = from_file(doc)
        tweak(module)
        doc["state_dict"] = module.state_dict()
    want = np.asarray(model.predict_on_batch(sample))
    return _write_checked(
        out, lambda tmp: torch.save(doc, tmp),
        lambda tmp: compare_outputs(want, TorchPredictor(str(tmp), TorchSettings())(sample)))
