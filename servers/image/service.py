"""Everything the FastAPI and Starlette apps share, so they differ only in framework idiom.

The contract, identical for both apps:

    GET  /health   200 {"status": "ok", "model", "input_size", "endpoint", "thread_limit",
                        "call", "pid", "inflight", "max_images", "max_body_bytes",
                        "max_request_pixels", "max_inflight_pixels", "pixels_in_use", ...}
    POST /predict  multipart/form-data, one part per image in the repeated field `images`
                   200 {"predictions": [{"class", "score"}, ...], "count", "elapsed_ms"}

Bad input is a 4xx with {"error": "<one line>"} (and "index" for a bad image):
    no `images` files, or a text part in `images`    400
    a file that is not a decodable image / truncated 400  (error and "index" name it)
    malformed multipart body                         400
    more than INFBENCH_MAX_IMAGES images             413
    body over INFBENCH_MAX_BODY_BYTES (by Content-Length or counted while streaming)  413
    images over INFBENCH_MAX_REQUEST_PIXELS decoded pixels in all (from their headers)  413
    a content type other than multipart/form-data    415
    request target / header block over MAX_HEADER_BYTES (16 KiB)  414 / 431
    no room in INFBENCH_MAX_INFLIGHT_PIXELS within PIXEL_WAIT_S   503 with Retry-After
Only a genuine server fault is a 500.

The body limit, and the draining of a refused body before any answer (so that a client which
sends its whole body before reading gets the answer rather than a connection reset), are
servers.shared.bodylimit's, shared with every other server; so are the 414 / 431 head limits
(servers.shared.headerlimit) and the error type and body (servers.shared.errors).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from servers.shared import probes
from servers.shared.bodylimit import BodyLimitMiddleware, header
from servers.shared.errors import ApiError, error_response
from servers.shared.headerlimit import HeaderLimitsMiddleware
from servers.shared.model import (
    BadImage,
    LoadedModel,
    image_pixels,
    load_model,
    predict,
    preprocess,
)
from servers.shared.settings import Settings

FIELD = "images"
PREDICT_PATH = "/predict"
HEALTH_PATH = "/health"
# Non-file form fields a request may carry; the images are files, so a few is plenty.
MAX_FIELDS = 16
# How long a request waits for its share of the in-flight pixel budget before a 503: about one
# decode at the 40 MP cap, so a short burst queues and a flood is turned away.
PIXEL_WAIT_S = 2.0
RETRY_AFTER_S = 2
# After a decode this large, malloc_trim(0): glibc raises its mmap threshold once a big block
# is freed, so the next big decodes come from the arenas and stay resident after they are freed.
# Well above the harness's images (at most ~0.45 MP), so the benchmark's workload never trims.
TRIM_AFTER_PIXELS = 4_000_000


class PredictGateMiddleware:
    """Refuse non-multipart POSTs to /predict with 415 and count /predict requests in flight.

    In middleware because FastAPI parses the body before the handler runs: a JSON body would
    otherwise surface as "field missing" rather than as the wrong media type.
    """

    def __init__(self, app: ASGIApp, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PREDICT_PATH:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            ctype = (header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "multipart/form-data":
                # The body is drained before this goes out (BodyLimitMiddleware is outside).
                response = error_response(415, f"unsupported content type {ctype or 'none'!r}: "
                                          f"send multipart/form-data with files in field "
                                          f"{FIELD!r}")
                await response(scope, receive, send)
                return
        # Only touched on the event loop thread, so a plain int is safe.
        self.service.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.service.inflight -= 1


class PixelBudget:
    """How many decoded pixels requests may cost: per request, and alive at once in the process.

    A small upload can decode into hundreds of megabytes (a flat 39 MP PNG is ~120 KB), and
    every worker thread decoding one at a time is how a few requests take gigabytes. So each
    request's pixels are counted from the image headers before anything is decoded:

    - over `per_request` summed over its images: 413 (it could never be served);
    - a request decodes its images one at a time and frees each before the next
      (servers.shared.model.decode_image), so at any moment it holds at most its largest image: that
      is its share of `in_flight`, taken before the first decode and given back after the last.
      Waiting for room blocks a worker thread (sync endpoint) or awaits without blocking the
      event loop (async endpoint, where only the loop itself could free the room); no room
      within `wait_s`: 503 with Retry-After.
    """

    def __init__(self, per_request: int, in_flight: int, wait_s: float = PIXEL_WAIT_S) -> None:
        self.per_request = per_request
        self.in_flight = in_flight
        self.wait_s = wait_s
        self.in_use = 0
        self._cond = threading.Condition()
        self._loop_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def share(self, images: Sequence[bytes]) -> int:
        """The request's share of the in-flight budget, or BadImage / 413; decodes nothing."""
        pixels = [image_pixels(data, i) for i, data in enumerate(images)]
        total = sum(pixels)
        if total > self.per_request:
            raise ApiError(413, f"images decode to {total} pixels in all, over the "
                           f"{self.per_request} a request may use")
        need = max(pixels, default=0)
        if need > self.in_flight:
            raise ApiError(413, f"image {pixels.index(need)}: {need} pixels, over the "
                           f"{self.in_flight} this server decodes at once")
        return need

    def _take(self, pixels: int) -> bool:
        """Called with the lock held."""
        if self.in_use + pixels > self.in_flight:
            return False
        self.in_use += pixels
        return True

    def _busy(self, pixels: int) -> ApiError:
        return ApiError(503, f"busy: no room to decode {pixels} pixels within {self.wait_s:g} s "
                        f"({self.in_use} of {self.in_flight} in use); retry later",
                        headers={"Retry-After": str(RETRY_AFTER_S)})

    def acquire(self, pixels: int) -> None:
        """Take `pixels`, waiting up to `wait_s` in this (worker) thread; 503 if no room."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._take(pixels), timeout=self.wait_s):
                raise self._busy(pixels)

    async def acquire_async(self, pixels: int) -> None:
        """Take `pixels`, waiting up to `wait_s` without blocking the event loop; 503 if no room.

        A release from any thread wakes the waiters through their loop (call_soon_threadsafe).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while True:
            event = asyncio.Event()
            waiter = (loop, event)
            with self._cond:
                if self._take(pixels):
                    return
                self._loop_waiters.append(waiter)
            try:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise self._busy(pixels)
                try:
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    raise self._busy(pixels) from None
            finally:
                with self._cond:
                    self._loop_waiters.remove(waiter)

    def release(self, pixels: int) -> None:
        with self._cond:
            self.in_use -= pixels
            self._cond.notify_all()
            waiters = list(self._loop_waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody to wake
                loop.call_soon_threadsafe(event.set)

    def preprocess(self, images: list[bytes], size: int) -> np.ndarray:
        """servers.shared.model.preprocess within the budget; blocking, for a worker thread."""
        need = self.share(images)
        self.acquire(need)
        try:
            return _decode(images, size, need)
        finally:
            self.release(need)

    async def preprocess_async(self, images: list[bytes], size: int) -> np.ndarray:
        """servers.shared.model.preprocess within the budget, decoding ON the event loop."""
        need = self.share(images)
        await self.acquire_async(need)
        try:
            return _decode(images, size, need)
        finally:
            self.release(need)


def _decode(images: list[bytes], size: int, largest: int) -> np.ndarray:
    """Decode the batch; after a large image, hand the freed decode buffers back to the OS."""
    try:
        return preprocess(images, size)
    finally:
        if largest >= TRIM_AFTER_PIXELS:
            probes.malloc_trim()


class Service:
    """The model and settings behind one app instance (one per server process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model: LoadedModel | None = None
        self.inflight = 0
        self.pixels = PixelBudget(settings.max_request_pixels, settings.max_inflight_pixels)

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise RuntimeError("model not loaded (lifespan startup did not run)")
        return self._model

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """Load and warm the model before the server accepts connections."""
        s = self.settings
        probes.start_from_env()  # INFBENCH_PROBE_DIR: the memory probes' thread (opt-in)
        if s.thread_limit is not None:
            # Must run inside the event loop: the limiter belongs to the running loop.
            anyio.to_thread.current_default_thread_limiter().total_tokens = s.thread_limit
        started = time.perf_counter()
        self._model = load_model(s.model_path, s.input_size, s.device)
        size = self._model.input_size
        predict(self._model, np.zeros((1, size, size, 3), dtype=np.float32), s.call)
        print(f"infbench: {self._model.name} ({self._model.kind}, {size}x{size}, "
              f"{self._model.runtime()}) loaded and "
              f"warmed in {time.perf_counter() - started:.1f} s; endpoint={s.endpoint} "
              f"thread_limit={s.thread_limit} call={s.call} pid={os.getpid()}",
              file=sys.stderr, flush=True)
        yield

    def health(self) -> dict[str, Any]:
        s = self.settings
        return {"status": "ok", "model": self.model.name, "input_size": self.model.input_size,
                "kind": self.model.kind, "device": s.device,
                "endpoint": s.endpoint, "thread_limit": s.thread_limit, "call": s.call,
                "pid": os.getpid(), "inflight": self.inflight, "max_images": s.max_images,
                "max_body_bytes": s.max_body_bytes, "trim_each_request": s.trim_each,
                "pad_batch": s.pad_batch, "max_request_pixels": s.max_request_pixels,
                "max_inflight_pixels": s.max_inflight_pixels,
                "pixels_in_use": self.pixels.in_use}

    def check_uploads(self, items: Sequence[object]) -> list[UploadFile]:
        """The `images` parts as files, or the 400/413 the request deserves."""
        if not items:
            raise ApiError(400, f"no files in form field {FIELD!r}")
        if len(items) > self.settings.max_images:
            raise ApiError(413, f"too many images: {len(items)} "
                           f"(at most {self.settings.max_images} per request)")
        for i, item in enumerate(items):
            if not isinstance(item, UploadFile):
                raise ApiError(400, f"image {i}: part {FIELD!r} is a text field, not a file")
        return [item for item in items if isinstance(item, UploadFile)]

    def answer(self, batch: np.ndarray, started: float) -> JSONResponse:
        """Predict and answer; blocking (the model call), wherever the caller runs it."""
        top = predict(self.model, batch, self.settings.call, self.settings.pad_batch)
        del batch
        if self.settings.trim_each:
            probes.malloc_trim()
        return JSONResponse({
            "predictions": [{"class": c, "score": score} for c, score in top],
            "count": len(top),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
        })

    def infer_sync(self, uploads: list[UploadFile], started: float) -> JSONResponse:
        """The sync endpoint's body: meant to run in anyio's worker threads.

        A wait for pixel budget blocks this worker thread, never the event loop.
        """
        images = [u.file.read() for u in uploads]
        batch = self.pixels.preprocess(images, self.model.input_size)
        del images
        return self.answer(batch, started)

    async def infer_async(self, uploads: list[UploadFile], started: float) -> JSONResponse:
        """The async endpoint's body: reads with await, then infers ON the event loop.

        Deliberately blocking: preprocessing and the model call hold the loop for their whole
        duration, which is exactly the async-endpoint pattern the study measured. Only a wait
        for pixel budget awaits (the budget is freed by code that needs the loop to run).
        """
        images = [await u.read() for u in uploads]
        batch = await self.pixels.preprocess_async(images, self.model.input_size)
        del images
        return self.answer(batch, started)

    # -- Starlette-style endpoints (FastAPI reuses health) ------------------------------------

    async def health_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse(self.health())


# ---------------------------------------------------------------------------------------------
# Error handling, shared


def middleware(service: Service) -> list[Middleware]:
    """The body limit outermost (it protects every path and drains before any answer), then
    the header limits, then the /predict gate."""
    return [
        Middleware(BodyLimitMiddleware, max_body_bytes=service.settings.max_body_bytes),
        Middleware(HeaderLimitsMiddleware),
        Middleware(PredictGateMiddleware, service=service),
    ]


Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]


def exception_handlers(max_images: int) -> dict[int | type[Exception], Handler]:
    """Every error as {"error": ...}; input problems are 4xx, only real faults are 500."""

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = str(exc.detail)
        # Starlette's multipart parser enforces max_files itself, as a 400: same class as ours.
        if exc.status_code == 400 and detail.startswith("Too many files"):
            return error_response(413, f"too many images (at most {max_images} per request)")
        return error_response(exc.status_code, detail, exc.headers)

    async def on_api(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message, exc.headers)

    async def on_bad_image(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadImage)
        return error_response(400, str(exc), index=exc.index)

    async def on_fault(request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}")

    return {HTTPException: on_http, ApiError: on_api, BadImage: on_bad_image,
            Exception: on_fault}


@asynccontextmanager
async def form_uploads(request: Request, service: Service) -> AsyncIterator[list[UploadFile]]:
    """Parse the multipart body (Starlette app) and close its spooled files afterwards."""
    try:
        form = await request.form(max_files=service.settings.max_images, max_fields=MAX_FIELDS)
    except HTTPException:
        raise  # body too large, too many files: already the right status
    except Exception as exc:
        raise ApiError(400, f"malformed multipart body ({type(exc).__name__})") from None
    try:
        yield service.check_uploads(form.getlist(FIELD))
    finally:
        await form.close()
