"""Everything the FastAPI and Starlette apps share, so they differ only in framework idiom.

The contract, identical for both apps:

    GET  /health   200 {"status": "ok", "model", "input_size", "endpoint", "thread_limit",
                        "call", "pid", "inflight", "max_images", "max_body_bytes"}
    POST /predict  multipart/form-data, one part per image in the repeated field `images`
                   200 {"predictions": [{"class", "score"}, ...], "count", "elapsed_ms"}

Bad input is a 4xx with {"error": "<one line>"} (and "index" for a bad image):
    no `images` files, or a text part in `images`    400
    a file that is not a decodable image / truncated 400  (error and "index" name it)
    malformed multipart body                         400
    more than INFBENCH_MAX_IMAGES images             413
    body over INFBENCH_MAX_BODY_BYTES (by Content-Length or counted while streaming)  413
    a content type other than multipart/form-data    415
Only a genuine server fault is a 500.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
import numpy as np
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from servers import probes
from servers.model import BadImage, LoadedModel, load_model, predict, preprocess
from servers.settings import Settings

FIELD = "images"
PREDICT_PATH = "/predict"
HEALTH_PATH = "/health"
# Non-file form fields a request may carry; the images are files, so a few is plenty.
MAX_FIELDS = 16


class ApiError(Exception):
    """A request the server refuses, with the status and one-line message the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a streamed body passes the limit.

    An HTTPException so that the frameworks' form parsing lets it through untouched (FastAPI
    re-raises HTTPException but turns other parse errors into a 400).
    """

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


def error_response(status: int, message: str, **extra: Any) -> JSONResponse:
    first_line = message.strip().splitlines()[0] if message.strip() else "error"
    return JSONResponse({"error": first_line, **extra}, status_code=status)


async def _send_error(send: Send, status: int, message: str) -> None:
    """An error response straight from ASGI middleware, without going through the app."""
    response = error_response(status, message)
    await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never receives
    return {"type": "http.disconnect"}


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


class BodyLimitMiddleware:
    """Reject request bodies over `max_body_bytes` with 413, before they fill memory or disk.

    A Content-Length over the limit is refused before any byte is read; the bytes actually
    received are counted too, so a chunked body or a lying Content-Length cannot get past.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _send_error(send, 400, f"bad Content-Length {length!r}")
                return
            if int(length) > self.limit:
                await _send_error(send, 413, f"request body over {self.limit} bytes")
                return

        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:
            # Normally the app's exception handler has already answered 413; if it could not,
            # answer here, unless a response is already on its way.
            if started:
                raise
            await _send_error(send, 413, str(exc.detail))


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
            ctype = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
            if ctype != "multipart/form-data":
                await _send_error(send, 415, f"unsupported content type {ctype or 'none'!r}: "
                                  f"send multipart/form-data with files in field {FIELD!r}")
                return
        # Only touched on the event loop thread, so a plain int is safe.
        self.service.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.service.inflight -= 1


class Service:
    """The model and settings behind one app instance (one per server process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._model: LoadedModel | None = None
        self.inflight = 0

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
        self._model = load_model(s.model_path, s.input_size)
        size = self._model.input_size
        predict(self._model, np.zeros((1, size, size, 3), dtype=np.float32), s.call)
        print(f"infbench: {self._model.name} ({self._model.kind}, {size}x{size}) loaded and "
              f"warmed in {time.perf_counter() - started:.1f} s; endpoint={s.endpoint} "
              f"thread_limit={s.thread_limit} call={s.call} pid={os.getpid()}",
              file=sys.stderr, flush=True)
        yield

    def health(self) -> dict[str, Any]:
        s = self.settings
        return {"status": "ok", "model": self.model.name, "input_size": self.model.input_size,
                "endpoint": s.endpoint, "thread_limit": s.thread_limit, "call": s.call,
                "pid": os.getpid(), "inflight": self.inflight, "max_images": s.max_images,
                "max_body_bytes": s.max_body_bytes, "trim_each_request": s.trim_each,
                "pad_batch": s.pad_batch}

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

    def infer(self, images: list[bytes], started: float) -> JSONResponse:
        """Decode, predict and answer; blocking (CPU-bound), wherever the caller runs it."""
        batch = preprocess(images, self.model.input_size)
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
        """The sync endpoint's body: meant to run in anyio's worker threads."""
        return self.infer([u.file.read() for u in uploads], started)

    async def infer_async(self, uploads: list[UploadFile], started: float) -> JSONResponse:
        """The async endpoint's body: reads with await, then infers ON the event loop.

        Deliberately blocking: preprocessing and the model call hold the loop for their whole
        duration, which is exactly the async-endpoint pattern the study measured.
        """
        images = [await u.read() for u in uploads]
        return self.infer(images, started)

    # -- Starlette-style endpoints (FastAPI reuses health) ------------------------------------

    async def health_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse(self.health())


# ---------------------------------------------------------------------------------------------
# Error handling, shared


def middleware(service: Service) -> list[Middleware]:
    """Body limit outermost (protects every path), then the /predict gate."""
    return [
        Middleware(BodyLimitMiddleware, max_body_bytes=service.settings.max_body_bytes),
        Middleware(PredictGateMiddleware, service=service),
    ]


Handler = Callable[[Request, Any], Coroutine[Any, Any, Response]]


def exception_handlers(service: Service) -> dict[int | type[Exception], Handler]:
    """Every error as {"error": ...}; input problems are 4xx, only real faults are 500."""
    max_images = service.settings.max_images

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        detail = str(exc.detail)
        # Starlette's multipart parser enforces max_files itself, as a 400: same class as ours.
        if exc.status_code == 400 and detail.startswith("Too many files"):
            return error_response(413, f"too many images (at most {max_images} per request)")
        return error_response(exc.status_code, detail)

    async def on_api(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.message)

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
