"""The model runtimes other than Keras: one small predictor per format, each callable on a
preprocessed batch the way a Keras model is (`predict`, `predict_on_batch`, `__call__`), so that
every server, the queue worker and the model-alone child keep one code path (`forward`).

ONNX Runtime is imported lazily, only when an .onnx file is loaded. Its settings are the
model's (experiments.toml [models.*]): the build writes them beside the file, in the
`<file>.json` the harness keeps for every model it builds, and the predictor reads them there:

    intra_op_threads  threads inside one operator (0: ONNX Runtime's default, the cores)
    inter_op_threads  threads across independent operators (0: its default)
    cpu_mem_arena     ONNX Runtime's arena allocator on the CPU (true: its default); false
                      frees each run's buffers back to malloc instead of keeping them pooled

The conversion (Keras -> ONNX, tf2onnx at build time) is `convert_to_onnx`; it is checked
equal to the Keras file's outputs within ONNX_TOLERANCE on the sample batch it is given.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ONNX_SUFFIX = ".onnx"
ONNX_TOLERANCE = 1e-4
ONNX_OPSET = 17


@dataclass(frozen=True)
class OnnxSettings:
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    cpu_mem_arena: bool = True

    @classmethod
    def beside(cls, path: Path) -> OnnxSettings:
        """The settings the build wrote next to `path` (none written: the defaults)."""
        side = path.with_suffix(".json")
        if not side.is_file():
            return cls()
        data = json.loads(side.read_text())
        return cls(intra_op_threads=int(data.get("intra_op_threads", 0)),
                   inter_op_threads=int(data.get("inter_op_threads", 0)),
                   cpu_mem_arena=bool(data.get("cpu_mem_arena", True)))


class OnnxPredictor:
    """An ONNX Runtime session on the CPU, callable on a batch like a Keras model."""

    kind = "onnx"

    def __init__(self, path: str, settings: OnnxSettings | None = None) -> None:
        import onnxruntime as ort

        self.settings = settings or OnnxSettings.beside(Path(path))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.settings.intra_op_threads
        opts.inter_op_num_threads = self.settings.inter_op_threads
        opts.enable_cpu_mem_arena = self.settings.cpu_mem_arena
        self.session = ort.InferenceSession(path, sess_options=opts,
                                            providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX model {path} has {len(inputs)} inputs; expected one")
        self.input_name = inputs[0].name
        self.input_shape = tuple(inputs[0].shape)

    def __call__(self, batch: np.ndarray, training: bool = False) -> np.ndarray:
        (out,) = self.session.run(None, {self.input_name: np.ascontiguousarray(
            batch, dtype=np.float32)})
        return np.asarray(out)

    def predict(self, batch: np.ndarray, verbose: int = 0) -> np.ndarray:
        return self(batch)

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return self(batch)


def convert_to_onnx(keras_path: Path, out: Path, sample: np.ndarray) -> tuple[float, float]:
    """The Keras file as an ONNX file at `out` (written atomically), with the same weights;
    returns the largest absolute difference of the two on `sample`, and the largest spread
    (standard deviation across the sample) of the Keras outputs: 0 means the outputs do not
    depend on the image, and the equality says little. Raises ValueError, leaving no file, when
    the difference is over ONNX_TOLERANCE."""
    import keras
    import tensorflow as tf
    import tf2onnx

    model = keras.models.load_model(keras_path, compile=False)
    spec = (tf.TensorSpec((None, *model.input_shape[1:]), tf.float32, name="image"),)
    fn = tf.function(lambda x: model(x, training=False))
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=ONNX_OPSET)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=ONNX_SUFFIX, dir=out.parent)
    os.close(fd)
    try:
        Path(tmp).write_bytes(proto.SerializeToString())
        want = np.asarray(model.predict_on_batch(sample))
        got = OnnxPredictor(tmp, OnnxSettings())(sample)
        diff = float(np.abs(want - got).max())
        spread = float(want.std(axis=0).max()) if len(want) > 1 else 0.0
        if not diff <= ONNX_TOLERANCE:
            raise ValueError(f"the ONNX model's outputs differ from the Keras file's by {diff:.3g}"
                             f" (over {ONNX_TOLERANCE}) on the sample images")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return diff, spread

