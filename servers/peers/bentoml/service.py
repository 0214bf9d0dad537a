"""BentoML's service for our Keras model: the same file, the same preprocessing, our upload
contract (POST /predict, multipart, one file part per image in the field `images`).

Run by `bentoml serve servers.peers.bentoml.service:Classifier` in its own environment
(servers/peers/bentoml/requirements.lock); of ours it imports servers.shared.model and
servers.peers.common only.

Adaptive batching is BentoML's (`@bentoml.api(batchable=True)`): the images of the requests
that arrive together are joined into one list (batch_dim 0), the model runs once on them and
the answers are split back per request. INFBENCH_BENTO_MAX_BATCH (images, default 64) and
INFBENCH_BENTO_MAX_LATENCY_MS (default 1000: BentoML sheds requests that would wait longer)
are its two settings. The answer is a JSON list, one {"class", "score"} per image (BentoML
returns what the batched function returns, split per request; no envelope). An image that does
not decode fails its batch with BentoML's 400 (InvalidArgument): the batch is one call.
"""

from __future__ import annotations

from pathlib import Path

import bentoml
from bentoml.exceptions import InvalidArgument

from servers.peers.common import load_warm, positive_int_env, top_classes
from servers.shared.model import BadImage, forward, preprocess

MAX_BATCH = positive_int_env("INFBENCH_BENTO_MAX_BATCH", 64)
MAX_LATENCY_MS = positive_int_env("INFBENCH_BENTO_MAX_LATENCY_MS", 1000)


@bentoml.service(workers=1, traffic={"timeout": 60})
class Classifier:
    def __init__(self) -> None:
        self.loaded, self.call = load_warm()

    @bentoml.api(route="/predict", batchable=True, max_batch_size=MAX_BATCH,
                 max_latency_ms=MAX_LATENCY_MS)
    def predict(self, images: list[Path]) -> list[dict[str, float]]:
        try:
            batch = preprocess([p.read_bytes() for p in images], self.loaded.input_size,
                               self.loaded.channels)
        except BadImage as e:
            raise InvalidArgument(str(e)) from None
        return top_classes(forward(self.loaded, batch, self.call))
