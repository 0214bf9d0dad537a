"""BentoML's service for our Keras model: the same file, the same preprocessing, our upload
contract (POST /predict, multipart, one file part per image in the field `images`).

Run by `bentoml serve servers.peers.bentoml.service:Classifier` in its own environment
(servers/peers/bentoml/requirements.lock); of ours it imports servers.shared.model only.

Adaptive batching is BentoML's (`@bentoml.api(batchable=True)`): the images of the requests
that arrive together are joined into one list (batch_dim 0), the model runs once on them and
the answers are split back per request. INFBENCH_BENTO_MAX_BATCH (images, default 64) and
INFBENCH_BENTO_MAX_LATENCY_MS (default 1000: BentoML sheds requests that would wait longer)
are its two settings. The answer is a JSON list, one {"class", "score"} per image (BentoML
returns what the batched function returns, split per request; no envelope). An image that does
not decode fails its batch with BentoML's 400 (InvalidArgument): the batch is one call.
"""

from __future__ import annotations

import os
from pathlib import Path

import bentoml
import numpy as np
from bentoml.exceptions import InvalidArgument

from servers.shared.model import BadImage, forward, load_model, preprocess


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


MAX_BATCH = _int_env("INFBENCH_BENTO_MAX_BATCH", 64)
MAX_LATENCY_MS = _int_env("INFBENCH_BENTO_MAX_LATENCY_MS", 1000)


@bentoml.service(workers=1, traffic={"timeout": 60})
class Classifier:
    def __init__(self) -> None:
        self.loaded = load_model(os.environ["INFBENCH_MODEL_PATH"])
        self.call = os.environ.get("INFBENCH_CALL", "predict_on_batch")
        size, ch = self.loaded.input_size, self.loaded.channels
        forward(self.loaded, np.zeros((1, size, size, ch), np.float32), self.call)

    @bentoml.api(route="/predict", batchable=True, max_batch_size=MAX_BATCH,
                 max_latency_ms=MAX_LATENCY_MS)
    def predict(self, images: list[Path]) -> list[dict[str, float]]:
        try:
            batch = preprocess([p.read_bytes() for p in images], self.loaded.input_size,
                               self.loaded.channels)
        except BadImage as e:
            raise InvalidArgument(str(e)) from None
        probs = forward(self.loaded, batch, self.call)
        top = probs.argmax(axis=1)
        return [{"class": int(c), "score": float(probs[i, c])} for i, c in enumerate(top)]
