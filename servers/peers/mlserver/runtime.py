"""MLServer's custom runtime for our Keras model: the same file, the same preprocessing.

Loaded by MLServer in its own environment (servers/peers/mlserver/requirements.lock); imports
of ours are servers.shared.model and servers.peers.common only (NumPy, Pillow and, lazily,
Keras: all in that lock), so
the model is loaded and called exactly as our servers do it.

Two input forms, both Open Inference Protocol tensors on one input:
- FP32 (N, size, size, channels): the images already preprocessed (what the V2 users send,
  loadtests/tfserving_users.py), fed to the model as they are;
- BYTES (N): the encoded images, each a base64 string (JSON) or the raw bytes (gRPC), decoded
  here by servers.shared.model.preprocess, as our image servers decode an upload.
The output is the model's whole output, FP32 (N, classes), named "probabilities".

MLServer's adaptive batching (model-settings max_batch_size / max_batch_time) merges
requests along the first axis before predict() and splits the answer again; its own error
type (MLServerError with a status) answers bad input with a 400 and a JSON {"error": ...}.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, InferenceResponse, RequestInput

from servers.peers.common import load_warm
from servers.shared.model import BadImage, forward, preprocess

OUTPUT = "probabilities"


class BadInput(MLServerError):
    """A request the model cannot take: MLServer answers it with 400 and its message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400)


def _images(inp: RequestInput) -> list[bytes]:
    """A BYTES input's images: raw bytes (gRPC), or base64 text (JSON carries strings)."""
    data = inp.data.root if hasattr(inp.data, "root") else inp.data
    out = []
    for i, item in enumerate(data):
        raw = item.encode() if isinstance(item, str) else bytes(item)
        if raw[:3] == b"\xff\xd8\xff" or raw[:8] == b"\x89PNG\r\n\x1a\n":
            out.append(raw)
            continue
        try:
            out.append(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            raise BadInput(f"image {i}: neither an image nor base64 of one") from None
    return out


class KerasRuntime(MLModel):
    async def load(self) -> bool:
        self.loaded, self.call = load_warm()
        self.ready = True
        return self.ready

    def _batch(self, inp: RequestInput) -> np.ndarray:
        size, ch = self.loaded.input_size, self.loaded.channels
        if inp.datatype == "BYTES":
            try:
                return preprocess(_images(inp), size, ch)
            except BadImage as e:
                raise BadInput(str(e)) from None
        if inp.datatype != "FP32":
            raise BadInput(f"input {inp.name!r}: datatype {inp.datatype}, expected FP32 "
                           "(preprocessed images) or BYTES (encoded images)")
        try:
            batch = NumpyCodec.decode_input(inp)
        except Exception as e:
            raise BadInput(f"input {inp.name!r}: {e}") from None
        want = (size, size, ch)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != want:
            raise BadInput(f"input {inp.name!r}: shape {list(batch.shape)}, expected "
                           f"[N, {size}, {size}, {ch}]")
        return np.asarray(batch, dtype=np.float32)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1:
            raise BadInput(f"expected one input, got {len(payload.inputs)}")
        batch = self._batch(payload.inputs[0])
        probs = forward(self.loaded, batch, self.call)
        out: Any = NumpyCodec.encode_output(OUTPUT, probs)
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 outputs=[out])
