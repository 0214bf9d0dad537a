"""The REST side (Starlette on Uvicorn): TF-Serving's /v1/models API, row and columnar
formats, the body limit; the predict work runs in anyio's worker threads."""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
from typing import Any

import anyio.to_thread
import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.shared.bodylimit import BodyLimitMiddleware, BodyTooLarge
from servers.shared.errors import error_response, one_line
from servers.tfserving.core import Core
from servers.tfserving.servable import (
    DEFAULT_SIGNATURE,
    InputError,
    Servable,
    bad,
    loads_json,
    too_large,
)
from servers.tfserving.timing import Timing
from servers.tfserving.v2 import V2Rest

# /v1/models/<name>[/versions/<n>][:verb]; TF-Serving's version labels are not served.
_MODEL_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18}))?"
                         r"(?::(?P<verb>[A-Za-z]+))?")


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and "b64" in value


def _unwrap_instance(value: Any, index: int) -> Any:
    """An instance's value: {"<input name>": value} becomes value (the model has one input)."""
    if isinstance(value, dict) and not _is_b64(value):
        if len(value) != 1:
            raise bad(f"instance {index}: the model has one input, got keys {sorted(value)}")
        return next(iter(value.values()))
    return value


def rest_values(doc: Any, servable: Servable) -> tuple[str, list[Any]]:
    """("row" | "columnar", the list of instance values) from a parsed predict body."""
    if not isinstance(doc, dict):
        raise bad("the request body must be a JSON object")
    if "instances" in doc and "inputs" in doc:
        raise bad('use either "instances" (row format) or "inputs" (columnar format), not both')
    signature = doc.get("signature_name", DEFAULT_SIGNATURE)
    if not isinstance(signature, str):
        raise bad('"signature_name" must be a string')
    servable.check_signature(signature)
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise bad('"instances" must be a list')
        return "row", [_unwrap_instance(v, i) for i, v in enumerate(instances)]
    if "inputs" in doc:
        inputs = doc["inputs"]
        if isinstance(inputs, dict) and not _is_b64(inputs):
            if len(inputs) != 1:
                raise bad(f'the model has one input, "inputs" names {len(inputs)}')
            inputs = next(iter(inputs.values()))
        if not isinstance(inputs, list):
            raise bad('"inputs" must be a list with the batch dimension first')
        return "columnar", inputs
    raise bad('missing "instances" (row format) or "inputs" (columnar format)')


def rest_batch(values: list[Any], layout: str, servable: Servable,
               rec: Timing) -> np.ndarray:
    """The model's input batch from instance values: encoded images or number lists."""
    servable.check_count(len(values))
    rec.batch = len(values)
    if _is_b64(values[0]):
        rec.format = f"{layout}-b64"
        encoded = []
        for i, value in enumerate(values):
            if not _is_b64(value) or not isinstance(value["b64"], str):
                raise bad(f'instance {i}: expected {{"b64": "<base64 string>"}} like instance 0')
            try:
                encoded.append(base64.b64decode(value["b64"], validate=True))
            except (binascii.Error, ValueError):
                raise bad(f"instance {i}: not valid base64") from None
        return servable.images(encoded)
    rec.format = layout
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise bad("instances are not a tensor (ragged lists or mixed types)") from None
    if arr.dtype.kind not in "iuf":
        kind = "strings" if arr.dtype.kind in "US" else f"{arr.dtype.name} values"
        raise bad(f"expected numbers (a float tensor) or {{\"b64\": ...}}, got {kind}")
    return servable.floats(arr)


class RestApi:
    """The Starlette side: routes, body limit, and the predict path run in a worker thread."""

    def __init__(self, core: Core) -> None:
        self.core = core

    def app(self) -> Starlette:
        v2 = V2Rest(self.core, self.body)
        return Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models/{rest:path}", self.models, methods=["GET", "POST"]),
                Route("/v2", v2.root, methods=["GET"]),
                Route("/v2/{rest:path}", v2.route, methods=["GET", "POST"]),
            ],
            middleware=[Middleware(BodyLimitMiddleware,
                                   max_body_bytes=self.core.opts.settings.max_body_bytes)],
            exception_handlers={HTTPException: self._on_http, Exception: self._on_fault},
            lifespan=self.core.lifespan,
        )

    async def _on_http(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error_response(exc.status_code, str(exc.detail))

    async def _on_fault(self, request: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {type(exc).__name__}")

    async def health(self, request: Request) -> JSONResponse:
        return JSONResponse(self.core.health())

    async def models(self, request: Request) -> Response:
        match = _MODEL_PATH.fullmatch(request.path_params["rest"])
        if match is None:
            return error_response(404, f"no such endpoint: {request.method} {request.url.path}")
        name, verb = match["name"], match["verb"]
        version = int(match["version"]) if match["version"] else None
        if request.method == "POST" and verb == "predict":
            return await self.predict(request, name, version)
        if verb is not None or request.method != "GET":
            if verb in ("classify", "regress"):
                return error_response(400, f"this model serves :predict only, not :{verb}")
            return error_response(404, f"no such endpoint: {request.method} {request.url.path}")
        try:
            servable = self.core.servable_or_unavailable()
            servable.check(name, version)
        except InputError as exc:
            return error_response(exc.status, exc.message)
        return JSONResponse(servable.status_json())

    @staticmethod
    async def body(request: Request) -> bytes:
        """The body; BodyLimitMiddleware has refused a Content-Length over the limit already and
        counts what streams in."""
        try:
            return await request.body()
        except BodyTooLarge as exc:
            raise too_large(str(exc.detail)) from None

    async def predict(self, request: Request, name: str, version: int | None) -> Response:
        rec = Timing("rest")
        log = self.core.timings
        try:
            servable = self.core.servable_or_unavailable()
            servable.check(name, version)
            try:
                body = await self.body(request)
            finally:
                rec.receive = rec.parse = time.perf_counter() - rec.t0
            content = await anyio.to_thread.run_sync(
                self._predict_sync, servable, body, rec, time.perf_counter())
        except InputError as exc:
            log.finish(rec, exc.status)
            return error_response(exc.status, exc.message)
        except Exception as exc:
            log.finish(rec, 500)
            return error_response(500, f"internal error: {type(exc).__name__}: "
                                       f"{one_line(str(exc))}")
        log.finish(rec, 200)
        return Response(content, media_type="application/json")

    @staticmethod
    def _predict_sync(servable: Servable, body: bytes, rec: Timing, queued: float) -> bytes:
        """Parse, decode, predict and serialise: CPU work, in a worker thread."""
        started = time.perf_counter()
        rec.queue += started - queued
        try:
            doc = loads_json(body)
            layout, values = rest_values(doc, servable)
            del doc
        finally:
            now = time.perf_counter()
            rec.parse = rec.receive + (now - started)
        with rec.decoding():
            batch = rest_batch(values, layout, servable, rec)
            del values
        out = servable.run(batch, rec)
        started = time.perf_counter()
        key = "predictions" if layout == "row" else "outputs"
        content = json.dumps({key: out.tolist()}).encode()
        rec.serialize = time.perf_counter() - started
        return content


