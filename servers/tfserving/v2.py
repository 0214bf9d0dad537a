"""The Open Inference Protocol ("V2", KServe's and Triton's) over REST: health, metadata and
infer with JSON tensors or the binary tensor data extension, on the same model and lock as
TF-Serving's API (the contract: servers.tfserving's docstring).

The checks and the metadata are protocol-free (tensor_batch, metadata) so that the gRPC side
(servers.tfserving.v2_grpc) refuses exactly what REST refuses.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from servers.shared.errors import error_response, one_line
from servers.tfserving.core import Core
from servers.tfserving.servable import (
    OUTPUT_NAME,
    InputError,
    Servable,
    bad,
    loads_json,
    not_found,
)
from servers.tfserving.timing import Timing

DATATYPE = "FP32"  # what the model takes and gives: the tensor after preprocessing
PLATFORM = "tensorflow_savedmodel"
SERVER_NAME = "infbench-tfserving"
SERVER_VERSION = "1"
EXTENSIONS = ["binary_tensor_data"]
HEADER_LENGTH = "inference-header-content-length"
# models/<name>[/versions/<v>][/ready|/infer]
_MODEL_PATH = re.compile(r"models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
                         r"(?:/(?P<verb>ready|infer))?")


def model_version(servable: Servable, version: str | None) -> None:
    """NOT_FOUND unless `version` (a string in V2; empty: the latest) is the one served."""
    if version and version != str(servable.version):
        raise not_found(f"model '{servable.name}' has no version '{version}' (it serves "
                        f"'{servable.version}')")


def check_model(servable: Servable, name: str, version: str | None) -> None:
    if name != servable.name:
        raise not_found(f"unknown model '{name}' (this server serves '{servable.name}')")
    model_version(servable, version)


def metadata(servable: Servable) -> dict[str, Any]:
    """The model's metadata, as REST gives it (gRPC builds the same fields)."""
    return {
        "name": servable.name, "versions": [str(servable.version)], "platform": PLATFORM,
        "inputs": [{"name": servable.input_name, "datatype": DATATYPE,
                    "shape": [-1, *servable.shape]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": DATATYPE,
                     "shape": [-1, servable.classes]}],
    }


def server_metadata() -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def tensor_shape(datatype: Any, shape: Any, servable: Servable) -> list[int]:
    """The input's shape, checked against the model: [N, size, size, channels] of FP32."""
    if datatype != DATATYPE:
        raise bad(f"input datatype {datatype!r}: the model takes {DATATYPE}")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise bad(f"input shape must be a list of integers, got {shape!r}")
    if len(shape) != 4 or tuple(shape[1:]) != servable.shape:
        want = ", ".join(map(str, servable.shape))
        raise bad(f"input shape must be [N, {want}]; got {shape}")
    servable.check_count(shape[0])
    return shape


def tensor_batch(shape: list[int], values: np.ndarray, servable: Servable) -> np.ndarray:
    """The model's batch from flat (or nested) values of a checked shape."""
    count = math.prod(shape)
    if values.size != count:
        raise bad(f"input has {values.size} values; shape {shape} needs {count}")
    return servable.floats(values.reshape(shape))


def raw_values(data: bytes, shape: list[int]) -> np.ndarray:
    """Little-endian FP32 bytes (the binary extension's and gRPC's raw contents)."""
    need = 4 * math.prod(shape)
    if len(data) != need:
        raise bad(f"input has {len(data)} bytes of raw data; shape {shape} of {DATATYPE} "
                  f"needs {need}")
    return np.frombuffer(data, dtype="<f4")


def check_outputs(names: list[str]) -> None:
    unknown = [n for n in names if n != OUTPUT_NAME]
    if unknown:
        raise bad(f"requested outputs {unknown} unknown; the model has {OUTPUT_NAME!r}")


# ---------------------------------------------------------------------------------------------
# REST


@dataclass
class _Infer:
    """A parsed REST infer request."""

    batch: np.ndarray
    request_id: str | None
    binary_output: bool


def _params(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad(f"{where} \"parameters\" must be an object")
    return value


def _flag(params: dict[str, Any], key: str, where: str) -> bool:
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise bad(f"{where} parameter {key!r} must be true or false")
    return value


def parse_infer(doc: Any, binary: bytes, servable: Servable, rec: Timing) -> _Infer:
    """The batch and what the answer should be, from the JSON header and any binary data."""
    if not isinstance(doc, dict):
        raise bad("the request body must be a JSON object")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad('"id" must be a string')
    params = _params(doc.get("parameters"), "the request's")
    binary_output = _flag(params, "binary_data_output", "the request's")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad('"inputs" must be a list of one tensor (the model has one input)')
    tensor = inputs[0]
    if not isinstance(tensor.get("name"), str):
        raise bad("input 0: \"name\" must be a string")
    shape = tensor_shape(tensor.get("datatype"), tensor.get("shape"), servable)
    rec.batch = shape[0]
    size = _params(tensor.get("parameters"), "input 0's").get("binary_data_size")
    if size is not None:
        if type(size) is not int or size < 0:
            raise bad("input 0: binary_data_size must be a non-negative integer")
        if "data" in tensor:
            raise bad("input 0 has both \"data\" and binary_data_size")
        if size != len(binary):
            raise bad(f"input 0: binary_data_size {size} but {len(binary)} bytes follow "
                      "the JSON header")
        rec.format = "v2-binary"
        values = raw_values(binary, shape)
    else:
        if binary:
            raise bad(f"{len(binary)} bytes follow the JSON header but no input has "
                      "binary_data_size")
        if "data" not in tensor:
            raise bad("input 0 has neither \"data\" nor binary_data_size")
        rec.format = "v2-json"
        try:
            values = np.asarray(tensor["data"], dtype=np.float64)
        except (ValueError, TypeError):
            raise bad("input 0: \"data\" is not a list of numbers of one shape") from None
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise bad('"outputs" must be a list of objects')
        names = [o.get("name") for o in outputs]
        if not all(isinstance(n, str) for n in names):
            raise bad("every requested output needs a \"name\"")
        check_outputs([str(n) for n in names])
        binary_output = binary_output or any(
            _flag(_params(o.get("parameters"), "an output's"), "binary_data", "an output's")
            for o in outputs)
    return _Infer(tensor_batch(shape, values, servable), request_id, binary_output)


def infer_answer(servable: Servable, out: np.ndarray, parsed: _Infer) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follow it."""
    output: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": DATATYPE,
                              "shape": [int(n) for n in out.shape]}
    raw = b""
    if parsed.binary_output:
        raw = out.astype("<f4", copy=False).tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
    else:
        output["data"] = out.astype(np.float32, copy=False).ravel().tolist()
    doc: dict[str, Any] = {"model_name": servable.name, "model_version": str(servable.version),
                           "outputs": [output]}
    if parsed.request_id is not None:
        doc["id"] = parsed.request_id
    head = json.dumps(doc).encode()
    return (head + raw, len(head)) if parsed.binary_output else (head, None)


class V2Rest:
    """The /v2 routes, served by servers.tfserving.rest's Starlette app; `read_body` is its
    body reader (the body limit's), handed over rather than imported (rest imports this)."""

    def __init__(self, core: Core, read_body: Callable[[Request], Awaitable[bytes]]) -> None:
        self.core = core
        self.read_body = read_body

    async def root(self, request: Request) -> Response:
        return JSONResponse(server_metadata())

    async def route(self, request: Request) -> Response:
        rest = request.path_params["rest"]
        get = request.method == "GET"
        if rest in ("health/live", "health/ready") and get:
            ready = rest == "health/live" or self.core.servable is not None
            return JSONResponse({}, status_code=200 if ready else 503)
        match = _MODEL_PATH.fullmatch(rest)
        if match is None or (match["verb"] == "infer") == get:
            return error_response(404, f"no such endpoint: {request.method} {request.url.path}")
        if match["verb"] == "infer":
            return await self.infer(request, match["name"], match["version"])
        try:
            servable = self.core.servable_or_unavailable()
            check_model(servable, match["name"], match["version"])
        except InputError as exc:
            return error_response(exc.status, exc.message)
        if match["verb"] == "ready":
            return JSONResponse({})
        return JSONResponse(metadata(servable))

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        rec = Timing("rest")
        log = self.core.timings
        try:
            servable = self.core.servable_or_unavailable()
            check_model(servable, name, version)
            header = request.headers.get(HEADER_LENGTH)
            try:
                body = await self.read_body(request)
            finally:
                rec.receive = rec.parse = time.perf_counter() - rec.t0
            content, length = await anyio.to_thread.run_sync(
                self._infer_sync, servable, body, header, rec, time.perf_counter())
        except InputError as exc:
            log.finish(rec, exc.status)
            return error_response(exc.status, exc.message)
        except Exception as exc:
            log.finish(rec, 500)
            return error_response(500, f"internal error: {type(exc).__name__}: "
                                       f"{one_line(str(exc))}")
        log.finish(rec, 200)
        if length is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(length)})

    @staticmethod
    def _infer_sync(servable: Servable, body: bytes, header: str | None, rec: Timing,
                    queued: float) -> tuple[bytes, int | None]:
        started = time.perf_counter()
        rec.queue += started - queued
        try:
            if header is None:
                head, binary = body, b""
            else:
                if not header.isdigit() or int(header) > len(body):
                    raise bad(f"Inference-Header-Content-Length {header!r}: expected the JSON "
                              f"header's length, at most the body's {len(body)} bytes")
                head, binary = body[:int(header)], body[int(header):]
            doc = loads_json(head)
        finally:
            now = time.perf_counter()
            rec.parse = rec.receive + (now - started)
        with rec.decoding():
            parsed = parse_infer(doc, binary, servable, rec)
            del doc
        out = servable.run(parsed.batch, rec)
        started = time.perf_counter()
        answer = infer_answer(servable, out, parsed)
        rec.serialize = time.perf_counter() - started
        return answer
