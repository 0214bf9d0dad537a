"""Ray Serve's deployment of our Keras model: the same file, the same preprocessing, our upload
contract (POST /predict, multipart, one file part per image in the field `images`).

Run by `python -m servers.peers.ray` (servers/peers/ray/__main__.py: a local Ray cluster, Serve's
HTTP proxy on the harness's port) in its own environment (servers/peers/ray/requirements.lock);
of ours it imports servers.shared.model and servers.peers.common only.

Batching is Ray Serve's `@serve.batch`: the calls that arrive together (one per request, each
with its request's images) are handed over as one list, up to INFBENCH_RAY_MAX_BATCH calls
(default 16) or INFBENCH_RAY_BATCH_WAIT_MS (default 5); the model runs once on their images
joined, and each call gets its own images' answers. The replicas are Ray actors
(INFBENCH_RAY_REPLICAS, default 1), each with the model; decoding runs in the replica, off its
event loop (a thread). The answer is {"predictions": [{"class", "score"}, ...], "count"} as our
servers give it; a bad upload is a 400 with {"error": ...}.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from servers.peers.common import load_warm, top_classes
from servers.peers.common import positive_int_env as int_env
from servers.shared.model import BadImage, forward, preprocess

MAX_BATCH = int_env("INFBENCH_RAY_MAX_BATCH", 16)
WAIT_S = int_env("INFBENCH_RAY_BATCH_WAIT_MS", 5) / 1000
FIELD = "images"


@serve.deployment(num_replicas=int_env("INFBENCH_RAY_REPLICAS", 1),
                  max_ongoing_requests=int_env("INFBENCH_RAY_MAX_ONGOING", 64),
                  ray_actor_options={"num_cpus": 0})
class Classifier:
    def __init__(self) -> None:
        self.loaded, self.call = load_warm()

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=WAIT_S)
    async def infer(self, calls: list[tuple[float, np.ndarray]]) -> list[np.ndarray]:
        """Each call is (when it was queued, its images); the model runs once on them all."""
        started = time.perf_counter()
        batches = [b for _, b in calls]
        probs = forward(self.loaded, np.concatenate(batches), self.call,
                        waited_s=[started - queued for queued, _ in calls])
        bounds = np.cumsum([len(b) for b in batches])[:-1]
        return list(np.split(probs, bounds))

    async def __call__(self, request: Request) -> Any:
        if request.url.path == "/health":  # a replica answers: the model is loaded
            return {"status": "ok", "model": self.loaded.name, "pid": os.getpid()}
        if request.url.path != "/predict" or request.method != "POST":
            return JSONResponse({"error": f"no route {request.method} {request.url.path}"},
                                status_code=404)
        try:
            form = await request.form()
        except Exception as e:
            return JSONResponse({"error": f"not a multipart form: {e}"}, status_code=400)
        parts = [p for p in form.getlist(FIELD) if not isinstance(p, str)]
        if not parts:
            return JSONResponse({"error": f"no file parts in the field {FIELD!r}"},
                                status_code=400)
        images = [await p.read() for p in parts]
        try:
            batch = await asyncio.to_thread(preprocess, images, self.loaded.input_size,
                                            self.loaded.channels)
        except BadImage as e:
            return JSONResponse({"error": str(e), "index": e.index}, status_code=400)
        answers = top_classes(await self.infer((time.perf_counter(), batch)))
        return {"predictions": answers, "count": len(answers)}


app = Classifier.bind()
