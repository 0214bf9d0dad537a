"""A Starlette app with in-process dynamic batching: many requests, one model call.

Same contract as the other apps (servers/image/service.py): GET /health, POST /predict with one
multipart file part per image in `images`, the same answers and the same 4xx errors.

What differs is how the work runs:

  parse      on the event loop (Starlette's multipart parser), as before
  decode     off the loop, in a pool of INFBENCH_DECODE_THREADS threads (Pillow releases the GIL
             while it decodes and resizes); a bad image is this request's 400, nobody else's
  batch      decoded requests wait in a queue; one batcher task takes the first, then gathers
             more until INFBENCH_BATCH_MAX_IMAGES images or INFBENCH_BATCH_WAIT_MS since the
             first, concatenates them and makes ONE model call (INFBENCH_CALL; predict_on_batch
             is the one to use) on the single model thread, then hands each request its rows.
             While the model runs, the next batch gathers, so the model is never left idle
             waiting for the loop. A request bigger than the batch cap runs alone, never split.

Environment (beside the shared INFBENCH_* of servers/shared/settings.py):
  INFBENCH_BATCH_WAIT_MS      how long a batch may wait for more requests (default 5; 0: take
                              only what is already queued)
  INFBENCH_BATCH_MAX_IMAGES   images per model call at most (default 64)
  INFBENCH_DECODE_THREADS     decoding threads (default: the machine's cores)
  INFBENCH_PAD_BATCH          (shared) pad each model call to a multiple of N images, so the
                              model sees a few shapes instead of one per batch size

/health adds "batching": the settings and what happened (model calls, images, mean batch).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.image.service import (
    HEALTH_PATH,
    PREDICT_PATH,
    Service,
    exception_handlers,
    form_uploads,
    middleware,
)
from servers.shared import nodelay
from servers.shared.model import forward, preprocess
from servers.shared.settings import SettingsError, load_settings


def _env_number(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum:g}, got {raw!r}")
    return value


@dataclass
class Job:
    pixels: np.ndarray  # (n, size, size, channels), decoded
    done: asyncio.Future[np.ndarray]
    queued: float = field(default_factory=time.perf_counter)  # when it joined the queue


@dataclass
class Batcher:
    """Gathers decoded requests into model calls; one task, one model thread."""

    service: Service
    wait_s: float
    max_images: int
    queue: asyncio.Queue[Job] = field(default_factory=asyncio.Queue)
    calls: int = 0
    images: int = 0
    largest: int = 0
    model_s: float = 0.0
    _limiter: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(1))

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        carry: Job | None = None  # the request that did not fit the last batch goes first
        while True:
            first = carry or await self.queue.get()
            carry = None
            jobs, n = [first], len(first.pixels)
            deadline = loop.time() + self.wait_s
            while n < self.max_images:
                if not self.queue.empty():
                    nxt = self.queue.get_nowait()
                elif (left := deadline - loop.time()) > 0:
                    try:
                        nxt = await asyncio.wait_for(self.queue.get(), left)
                    except TimeoutError:
                        break
                else:
                    break
                if n + len(nxt.pixels) > self.max_images:
                    carry = nxt
                    break
                jobs.append(nxt)
                n += len(nxt.pixels)
            await self._call(jobs)

    async def _call(self, jobs: list[Job]) -> None:
        live = [j for j in jobs if not j.done.cancelled()]
        if not live:
            return
        batch = live[0].pixels if len(live) == 1 else np.concatenate([j.pixels for j in live])
        started = time.perf_counter()
        waited = [started - j.queued for j in live]
        try:
            s = self.service.settings
            probs = await anyio.to_thread.run_sync(
                functools.partial(forward, self.service.model, batch, s.call, s.pad_batch,
                                  waited_s=waited), limiter=self._limiter)
        except Exception as exc:  # a model fault fails this batch's requests, not the server
            for j in live:
                if not j.done.done():
                    j.done.set_exception(exc)
            return
        self.model_s += time.perf_counter() - started
        self.calls += 1
        self.images += len(batch)
        self.largest = max(self.largest, len(batch))
        row = 0
        for j in live:
            k = len(j.pixels)
            if not j.done.done():
                j.done.set_result(probs[row:row + k])
            row += k

    def health(self) -> dict[str, Any]:
        return {"wait_ms": self.wait_s * 1000, "max_images": self.max_images,
                "model_calls": self.calls, "images": self.images,
                "mean_batch": round(self.images / self.calls, 2) if self.calls else None,
                "largest_batch": self.largest, "model_s": round(self.model_s, 3),
                "queued": self.queue.qsize()}


nodelay.apply_from_env()  # INFBENCH_TCP_NODELAY=1: see servers/shared/nodelay.py
service = Service(load_settings())
_batcher = Batcher(service, _env_number("INFBENCH_BATCH_WAIT_MS", 5.0, 0.0) / 1000,
                   int(_env_number("INFBENCH_BATCH_MAX_IMAGES", 64, 1)))
_decoders = anyio.CapacityLimiter(int(_env_number("INFBENCH_DECODE_THREADS",
                                                  float(os.cpu_count() or 1), 1)))


@asynccontextmanager
async def lifespan(app: object) -> AsyncIterator[None]:
    async with service.lifespan(app):
        task = asyncio.create_task(_batcher.run(), name="infbench-batcher")
        try:
            yield
        finally:
            task.cancel()


async def predict_endpoint(request: Request) -> Response:
    started = time.perf_counter()
    async with form_uploads(request, service) as uploads:
        images = [await u.read() for u in uploads]
    m = service.model
    pixels = await anyio.to_thread.run_sync(preprocess, images, m.input_size, m.channels,
                                            limiter=_decoders)
    del images
    job = Job(pixels, asyncio.get_running_loop().create_future())
    _batcher.queue.put_nowait(job)
    probs = await job.done
    top = probs.argmax(axis=1)
    return JSONResponse({
        "predictions": [{"class": int(c), "score": float(probs[i, c])}
                        for i, c in enumerate(top)],
        "count": len(top),
        "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
    })


async def health_endpoint(request: Request) -> JSONResponse:
    return JSONResponse({**service.health(), "endpoint": "batching",
                         "batching": _batcher.health()})


app = Starlette(
    routes=[
        Route(HEALTH_PATH, health_endpoint, methods=["GET"]),
        Route(PREDICT_PATH, predict_endpoint, methods=["POST"]),
    ],
    middleware=middleware(service),
    exception_handlers=exception_handlers(service.settings.max_images),
    lifespan=lifespan,
)
