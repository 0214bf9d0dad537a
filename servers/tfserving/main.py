"""A TensorFlow-Serving-compatible server for infbench's models: REST and gRPC in one process.

Why: "REST vs gRPC" is only a fair question when both transports serve the same model, with the
same preprocessing, in the same process, on the same machine. The real tensorflow_model_server
cannot be installed here, so this server speaks its two APIs (the parts a client of a one-input
image model uses) with infbench's model code behind both, and times each request's phases.

    python -m servers.tfserving --rest-port 8501 --grpc-port 8500 [--model-name default]
        [--model-version 1] [--host 127.0.0.1]

Port 0 picks a free port; the first line on stderr names both ports:
    servers.tfserving: REST on http://127.0.0.1:8501 gRPC on 127.0.0.1:8500 pid=1234
gRPC serves (health NOT_SERVING) while the model loads; REST listens once it is loaded and warm.

REST (Starlette on Uvicorn, on the event loop; the work runs in anyio's worker threads):
    GET  /health                                  200 {"status": "ok", "pid", ...} once loaded
    GET  /v1/models/<name>[/versions/<v>]         200 {"model_version_status": [...]}
    POST /v1/models/<name>[/versions/<v>]:predict
         {"instances": [...]}  row format      -> 200 {"predictions": [[p0, p1, ...], ...]}
         {"inputs": [...]}     columnar format -> 200 {"outputs": [[p0, p1, ...], ...]}
      An instance (row) or the input (columnar, batch first) is a float tensor as nested number
      lists, (size, size, channels) per instance, fed to the model as it is; or {"b64": "..."},
      a JPEG/PNG that servers.shared.model decodes, resizes and scales. {"<input name>": value} is
      accepted too; optional "signature_name" must be "serving_default".
      Errors {"error": "<one line>"}: 400 malformed JSON, wrong shape or dtype, bad image or
      base64, both or neither of instances/inputs, unknown signature; 404 unknown model,
      version or path; 413 body over INFBENCH_MAX_BODY_BYTES or more than INFBENCH_MAX_IMAGES
      instances. The body limit is servers.shared.bodylimit's, as on every infbench server: a body
      still coming is drained before any answer.
gRPC (grpcio's thread pool, same model behind a lock):
    tensorflow.serving.PredictionService/Predict: one input, DT_FLOAT (tensor_content or
      float_val, shape [N, size, size, channels]) or DT_STRING (string_val, shape [N], encoded
      images); one output "output_0", DT_FLOAT [N, classes] in tensor_content.
    tensorflow.serving.ModelService/GetModelStatus
    grpc.health.v1.Health: NOT_SERVING while loading, SERVING once the model is warm.
    Errors: INVALID_ARGUMENT (bad input), NOT_FOUND (model, version), RESOURCE_EXHAUSTED
      (message over INFBENCH_MAX_BODY_BYTES, set as grpc.max_receive_message_length, or more
      than INFBENCH_MAX_IMAGES), UNAVAILABLE (loading), INTERNAL (a real fault).

Environment: INFBENCH_MODEL_PATH (required), INFBENCH_CALL (default predict_on_batch here),
INFBENCH_MAX_BODY_BYTES, INFBENCH_MAX_IMAGES, INFBENCH_INPUT_SIZE, INFBENCH_PAD_BATCH,
INFBENCH_THREAD_LIMIT (REST worker threads) as in servers.shared.settings; INFBENCH_GRPC_THREADS
(gRPC worker threads, default 8); INFBENCH_TIMING_DIR (the per-request time split, below);
INFBENCH_PROBE_DIR (servers.shared.probes).

The time split (always measured, written only when INFBENCH_TIMING_DIR is set): one JSON line
per predict request, any status, appended to <dir>/timings-<pid>.jsonl by servers.shared.timings
(buffered, flushed about once a second and at shutdown; the folder and the file are made at
start-up, and a server that cannot make them does not start):
    {"t": unix time the request reached the handler, "protocol": "rest" | "grpc",
     "format": "row" | "row-b64" | "columnar" | "columnar-b64" (REST),
               "tensor_content" | "float_val" | "string_val" (gRPC), null if never parsed,
     "batch": instances (0 if never parsed), "status": HTTP status (REST) or gRPC code name,
     "ok": status is 200 / "OK",
     "receive_ms": REST: reading the body; gRPC: from the call's arrival to the start of
                   deserialising (waiting for a free server thread, then the message),
     "parse_ms":   receive_ms + JSON parse / protobuf deserialise,
     "decode_ms":  base64 + image decode/resize, or number lists / tensor bytes to an array,
     "queue_ms":   waiting for a worker thread (REST) and for the model lock (both),
     "model_ms":   the one model call, "serialize_ms": output to JSON / to a TensorProto and
                   the response message to bytes,
     "total_ms":   the handler's whole time, from arrival to the response bytes}
Only predict requests are recorded. Not recorded: REST answers given before the predict handler
(unknown path, wrong method, a Content-Length over INFBENCH_MAX_BODY_BYTES) and gRPC messages
that do not deserialise (grpcio answers those INTERNAL itself).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextvars
import json
import math
import os
import re
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import anyio.to_thread
import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from servers.shared import probes
from servers.shared.bodylimit import BodyLimitMiddleware, BodyTooLarge
from servers.shared.cli import Parser
from servers.shared.errors import ApiError, error_response, one_line, reason
from servers.shared.model import BadImage, LoadedModel, decode_image, forward, load_model
from servers.shared.settings import CALL_STYLES, Settings, SettingsError, load_settings
from servers.shared.timings import TimingsWriter

if TYPE_CHECKING:
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2

PROG = "servers.tfserving"
DEFAULT_SIGNATURE = "serving_default"
OUTPUT_NAME = "output_0"  # what Keras 3's model.export names a model's single output
DEFAULT_CALL = "predict_on_batch"
DEFAULT_GRPC_THREADS = 8
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# /v1/models/<name>[/versions/<n>][:verb]; TF-Serving's version labels are not served.
_MODEL_PATH = re.compile(r"(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]{1,18}))?"
                         r"(?::(?P<verb>[A-Za-z]+))?")


# ---------------------------------------------------------------------------------------------
# Errors: one exception, two protocols


class InputError(ApiError):
    """A request refused, with its REST status and its gRPC code name (one place maps both)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


def bad(message: str) -> InputError:
    return InputError(400, "INVALID_ARGUMENT", message)


def not_found(message: str) -> InputError:
    return InputError(404, "NOT_FOUND", message)


def too_large(message: str) -> InputError:
    return InputError(413, "RESOURCE_EXHAUSTED", message)


def unavailable(message: str) -> InputError:
    return InputError(503, "UNAVAILABLE", message)


# ---------------------------------------------------------------------------------------------
# The time split


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass
class Timing:
    """One predict request's phases (seconds while measuring; written in ms)."""

    protocol: str
    t: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    format: str | None = None
    batch: int = 0
    status: int | str = 0
    receive: float = 0.0
    parse: float = 0.0
    decode: float = 0.0
    queue: float = 0.0
    model: float = 0.0
    serialize: float = 0.0
    total: float = 0.0
    done: bool = False

    def record(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 6), "protocol": self.protocol, "format": self.format,
            "batch": self.batch, "status": self.status, "ok": self.status in (200, "OK"),
            "receive_ms": _ms(self.receive), "parse_ms": _ms(self.parse),
            "decode_ms": _ms(self.decode), "queue_ms": _ms(self.queue),
            "model_ms": _ms(self.model), "serialize_ms": _ms(self.serialize),
            "total_ms": _ms(self.total),
        }


class TimingLog(TimingsWriter):
    """The predict requests' lines (servers.shared.timings); without a folder it keeps
    nothing, so the measuring stays on and costs a few clock reads."""

    def finish(self, rec: Timing, status: int | str) -> None:
        """Close a request's record (once) and queue its line."""
        if rec.done:
            return
        rec.done = True
        rec.status = status
        rec.total = time.perf_counter() - rec.t0
        if self.folder is not None:
            self.append(rec.record())


# ---------------------------------------------------------------------------------------------
# The model behind both protocols


@dataclass
class Options:
    """What the command line and the environment configure, validated."""

    host: str
    rest_port: int
    grpc_port: int
    model_name: str
    model_version: int
    settings: Settings
    call: str
    grpc_threads: int
    timing_dir: Path | None


class Servable:
    """One model under one name and version: checks, input conversion and the guarded call."""

    def __init__(self, opts: Options, loaded: LoadedModel) -> None:
        self.name = opts.model_name
        self.version = opts.model_version
        self.loaded = loaded
        self.size = loaded.input_size
        self.channels = loaded.channels
        self.shape = (self.size, self.size, self.channels)
        self.call = opts.call
        self.pad_to = opts.settings.pad_batch
        self.max_images = opts.settings.max_images
        # Keras models are not safe to call from several threads at once; gRPC's threads and
        # the REST worker threads take turns here (the wait is the record's queue time).
        self.lock = threading.Lock()
        model = loaded.model
        inputs = getattr(model, "inputs", None)
        self.input_name = str(inputs[0].name) if inputs else "input"

    def check(self, name: str, version: int | None) -> None:
        """NOT_FOUND unless `name` (and `version`, if given) is what this server serves."""
        if name != self.name:
            raise not_found(f"Servable not found for request: Latest({name})")
        if version is not None and version != self.version:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")

    def check_count(self, n: int) -> None:
        if n < 1:
            raise bad("no instances: the batch is empty")
        if n > self.max_images:
            raise too_large(f"{n} instances: at most {self.max_images} per request")

    def check_signature(self, name: str) -> None:
        if name not in ("", DEFAULT_SIGNATURE):
            raise bad(f'Serving signature name: "{name}" not found in signature def')

    def floats(self, arr: np.ndarray) -> np.ndarray:
        """A (N, size, size, channels) float32 batch, or the 400 that names the shape."""
        if arr.ndim != 4 or tuple(arr.shape[1:]) != self.shape:
            want = ", ".join(map(str, self.shape))
            got = tuple(arr.shape[1:]) if arr.ndim >= 1 else ()
            raise bad(f"each instance must have shape ({want}); got {got}")
        return arr.astype(np.float32, copy=False)

    def images(self, encoded: list[bytes]) -> np.ndarray:
        """Decode, resize and scale encoded images exactly as infbench's other servers do."""
        try:
            arrays = [decode_image(data, i, self.size, self.channels)
                      for i, data in enumerate(encoded)]
        except BadImage as exc:
            raise bad(str(exc)) from None
        return np.stack(arrays)

    def run(self, batch: np.ndarray, rec: Timing) -> np.ndarray:
        """One model call, serialised with every other request's."""
        waited = time.perf_counter()
        with self.lock:
            started = time.perf_counter()
            rec.queue += started - waited
            out = forward(self.loaded, batch, self.call, self.pad_to)
            rec.model = time.perf_counter() - started
        return out

    def status_proto(self) -> get_model_status_pb2.GetModelStatusResponse:
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        status = response.model_version_status.add()
        status.version = self.version
        status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
        status.status.error_code = 0  # tensorflow.error.OK
        return response

    def status_json(self) -> dict[str, Any]:
        """The REST form of GetModelStatus: protobuf's JSON mapping, as TF-Serving's is."""
        from google.protobuf import json_format

        return dict(json_format.MessageToDict(
            self.status_proto(), always_print_fields_with_no_presence=True,
            preserving_proto_field_name=True))


# ---------------------------------------------------------------------------------------------
# REST


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows")


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
        return Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models/{rest:path}", self.models, methods=["GET", "POST"]),
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
    async def _body(request: Request) -> bytes:
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
                body = await self._body(request)
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
            try:
                doc = json.loads(body, parse_constant=_reject_constant)
            except RecursionError:
                raise bad("malformed JSON: nested too deeply") from None
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
                raise bad(f"malformed JSON: {one_line(str(exc))}") from None
            layout, values = rest_values(doc, servable)
            del doc
        finally:
            now = time.perf_counter()
            rec.parse = rec.receive + (now - started)
        try:
            batch = rest_batch(values, layout, servable, rec)
            del values
        finally:
            rec.decode = time.perf_counter() - now
        out = servable.run(batch, rec)
        started = time.perf_counter()
        key = "predictions" if layout == "row" else "outputs"
        content = json.dumps({key: out.tolist()}).encode()
        rec.serialize = time.perf_counter() - started
        return content


# ---------------------------------------------------------------------------------------------
# gRPC

# The record of the RPC being handled. grpcio runs each RPC's interceptor, deserialiser,
# handler and serialiser inside that RPC's own contextvars.Context, so this is per call.
_RPC: contextvars.ContextVar[Timing | None] = contextvars.ContextVar("tfserving_rpc",
                                                                    default=None)


@dataclass
class _Parsed:
    """A deserialised request and when its deserialising started and ended (perf_counter)."""

    message: Any
    started: float
    ended: float


def grpc_batch(request: predict_pb2.PredictRequest, servable: Servable,
               rec: Timing) -> np.ndarray:
    """The model's input batch from a PredictRequest's one TensorProto."""
    from tensorflow.core.framework import types_pb2

    if len(request.inputs) != 1:
        raise bad(f"the model has one input; the request has {len(request.inputs)}")
    (tensor,) = request.inputs.values()
    dims = [d.size for d in tensor.tensor_shape.dim]
    if any(d < 0 for d in dims):
        raise bad(f"input shape {dims} has an unknown dimension")
    if tensor.dtype == types_pb2.DT_STRING:
        rec.format = "string_val"
        if len(dims) != 1 or dims[0] != len(tensor.string_val):
            raise bad(f"a DT_STRING input must have shape [N] with N string_val entries; got "
                      f"shape {dims} and {len(tensor.string_val)} values")
        servable.check_count(dims[0])
        rec.batch = dims[0]
        return servable.images(list(tensor.string_val))
    if tensor.dtype != types_pb2.DT_FLOAT:
        raise bad(f"input dtype {types_pb2.DataType.Name(tensor.dtype)}: expected DT_FLOAT "
                  "(a float tensor) or DT_STRING (encoded images)")
    rec.format = "tensor_content" if tensor.tensor_content else "float_val"
    if len(dims) != 4 or tuple(dims[1:]) != servable.shape:
        want = ", ".join(map(str, servable.shape))
        raise bad(f"a DT_FLOAT input must have shape [N, {want}]; got {dims}")
    servable.check_count(dims[0])
    rec.batch = dims[0]
    count = math.prod(dims)
    if tensor.tensor_content:
        content = tensor.tensor_content
        if len(content) != 4 * count:
            raise bad(f"tensor_content has {len(content)} bytes; shape {dims} needs {4 * count}")
        arr = np.frombuffer(content, dtype="<f4")
    else:
        values = np.asarray(tensor.float_val, dtype=np.float32)
        if values.size == 0 or values.size > count:
            raise bad(f"float_val has {values.size} values; shape {dims} needs {count}")
        if values.size < count:  # TensorFlow's rule: the last value fills the rest
            values = np.concatenate([values, np.full(count - values.size, values[-1],
                                                     dtype=np.float32)])
        arr = values
    return servable.floats(arr.reshape(dims))


def output_tensor(out: np.ndarray) -> tensor_pb2.TensorProto:
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(n)) for n in out.shape])
    return tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape=shape,
                                  tensor_content=out.astype("<f4", copy=False).tobytes())


def _model_version(spec: Any) -> int | None:
    """The version a ModelSpec asks for (None: the latest); a label is not something we have."""
    choice = spec.WhichOneof("version_choice")
    if choice == "version_label":
        raise not_found(f"Servable not found for request: Labeled({spec.name}, "
                        f"{spec.version_label})")
    return int(spec.version.value) if choice == "version" else None


class PredictTimer(grpc.ServerInterceptor):  # type: ignore[misc]
    """Starts each Predict's record on arrival and times its (de)serialisation.

    grpcio deserialises on its polling thread, outside the RPC's context, so the times travel
    with the message (a _Parsed) to the handler's thread, where the record lives in _RPC.
    """

    def __init__(self, log: TimingLog) -> None:
        self.log = log

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method != PREDICT_METHOD:
            return handler
        _RPC.set(Timing("grpc"))
        return grpc.unary_unary_rpc_method_handler(
            self._behavior(handler.unary_unary),
            request_deserializer=self._deserializer(handler.request_deserializer),
            response_serializer=self._serializer(handler.response_serializer))

    @staticmethod
    def _deserializer(inner: Callable[[bytes], Any]) -> Callable[[bytes], _Parsed]:
        def deserialize(data: bytes) -> _Parsed:
            started = time.perf_counter()
            return _Parsed(inner(data), started, time.perf_counter())
        return deserialize

    @staticmethod
    def _behavior(inner: Callable[[Any, Any], Any]) -> Callable[[_Parsed, Any], Any]:
        def behavior(parsed: _Parsed, context: Any) -> Any:
            rec = _RPC.get()
            if rec is not None:
                rec.receive = max(0.0, parsed.started - rec.t0)
                rec.parse = max(0.0, parsed.ended - rec.t0)
            return inner(parsed.message, context)
        return behavior

    def _serializer(self, inner: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
        def serialize(message: Any) -> bytes:
            started = time.perf_counter()
            data = inner(message)
            rec = _RPC.get()
            if rec is not None:
                rec.serialize += time.perf_counter() - started
                self.log.finish(rec, "OK")
            return data
        return serialize


def bind_grpc(core: Core) -> tuple[grpc.Server, int]:
    """The gRPC server, bound but not started: a taken port fails before TensorFlow loads."""
    from concurrent import futures

    limit = core.opts.settings.max_body_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=core.opts.grpc_threads,
                                   thread_name_prefix="tfserving-grpc"),
        interceptors=[PredictTimer(core.timings)],
        options=[("grpc.max_receive_message_length", limit),
                 ("grpc.max_send_message_length", limit),
                 # Linux gRPC sets SO_REUSEPORT by default: a second server would then share
                 # the port silently instead of failing to bind.
                 ("grpc.so_reuseport", 0)])
    address = f"{core.opts.host}:{core.opts.grpc_port}"
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as exc:
        raise OSError(f"cannot bind gRPC to {address}: {one_line(str(exc))}") from None
    if port == 0:
        raise OSError(f"cannot bind gRPC to {address}")
    return server, port


def serve_grpc(core: Core, server: grpc.Server) -> None:
    """Add TF-Serving's two services and health (NOT_SERVING until loaded), and start.

    The TF-Serving protos import TensorFlow, hence here rather than at module import.
    """
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    log = core.timings

    def abort(context: grpc.ServicerContext, exc: InputError) -> NoReturn:
        context.abort(getattr(grpc.StatusCode, exc.code), exc.message)
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
        """Predict only; Classify, Regress, MultiInference and metadata stay UNIMPLEMENTED."""

        def Predict(self, request: predict_pb2.PredictRequest,
                    context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
            rec = _RPC.get() or Timing("grpc")
            try:
                servable = core.servable_or_unavailable()
                spec = request.model_spec
                servable.check(spec.name, _model_version(spec))
                servable.check_signature(spec.signature_name)
                unknown = [n for n in request.output_filter if n != OUTPUT_NAME]
                if unknown:
                    raise bad(f"output_filter names unknown outputs {unknown}; "
                              f"the model has {OUTPUT_NAME!r}")
                started = time.perf_counter()
                try:
                    batch = grpc_batch(request, servable, rec)
                finally:
                    rec.decode = time.perf_counter() - started
                out = servable.run(batch, rec)
                started = time.perf_counter()
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = DEFAULT_SIGNATURE
                response.outputs[OUTPUT_NAME].CopyFrom(output_tensor(out))
                rec.serialize = time.perf_counter() - started
            except InputError as exc:
                log.finish(rec, exc.code)
                abort(context, exc)
            except Exception as exc:
                log.finish(rec, "INTERNAL")
                context.abort(grpc.StatusCode.INTERNAL,
                              f"internal error: {type(exc).__name__}: {one_line(str(exc))}")
            return response  # the record is finished by PredictTimer's serialiser

    class ModelService(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
        def GetModelStatus(self, request: get_model_status_pb2.GetModelStatusRequest,
                           context: grpc.ServicerContext
                           ) -> get_model_status_pb2.GetModelStatusResponse:
            try:
                servable = core.servable_or_unavailable()
                spec = request.model_spec
                servable.check(spec.name, _model_version(spec))
            except InputError as exc:
                abort(context, exc)
            return servable.status_proto()

    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(),
                                                                        server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(), server)
    health_pb2_grpc.add_HealthServicer_to_server(core.grpc_health, server)
    for service in HEALTH_SERVICES:
        core.grpc_health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()


# ---------------------------------------------------------------------------------------------
# The process


class Core:
    """Everything one server process holds: options, the model, the timing log, gRPC."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.servable: Servable | None = None
        self.timings = TimingLog(opts.timing_dir)
        self.grpc_health = health.HealthServicer()
        self.grpc_server: grpc.Server | None = None
        self.rest_port = 0
        self.grpc_port = 0

    def servable_or_unavailable(self) -> Servable:
        if self.servable is None:
            raise unavailable("the model is still loading")
        return self.servable

    def load(self) -> None:
        started = time.perf_counter()
        s = self.opts.settings
        loaded = load_model(s.model_path, s.input_size)
        servable = Servable(self.opts, loaded)
        warm = np.zeros((1, *servable.shape), dtype=np.float32)
        forward(loaded, warm, self.opts.call, servable.pad_to)
        self.servable = servable
        for service in HEALTH_SERVICES:
            self.grpc_health.set(service, health_pb2.HealthCheckResponse.SERVING)
        print(f"{PROG}: model {servable.name!r} version {servable.version} = {loaded.name} "
              f"({loaded.kind}, {servable.size}x{servable.size}x{servable.channels}, input "
              f"{servable.input_name!r}) loaded and warmed in "
              f"{time.perf_counter() - started:.1f} s; call={self.opts.call} "
              f"timings={self.timings.path or 'off'} pid={os.getpid()}",
              file=sys.stderr, flush=True)

    @asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The model is loaded already (main); Uvicorn accepts connections after this."""
        if self.opts.settings.thread_limit is not None:
            # Must run inside the event loop: the limiter belongs to the running loop.
            limiter = anyio.to_thread.current_default_thread_limiter()
            limiter.total_tokens = self.opts.settings.thread_limit
        try:
            yield
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Stop gRPC (in-flight calls get a grace period) and write the last timings."""
        self.grpc_health.enter_graceful_shutdown()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=3.0).wait(timeout=5.0)
            self.grpc_server = None
        self.timings.close()

    def health(self) -> dict[str, Any]:
        s = self.opts.settings
        servable = self.servable
        return {
            "status": "ok" if servable is not None else "loading", "pid": os.getpid(),
            "model": self.opts.model_name, "version": self.opts.model_version,
            "model_file": servable.loaded.name if servable else None,
            "input_size": servable.size if servable else None,
            "channels": servable.channels if servable else None,
            "input_name": servable.input_name if servable else None, "output_name": OUTPUT_NAME,
            "call": self.opts.call, "rest_port": self.rest_port, "grpc_port": self.grpc_port,
            "grpc_threads": self.opts.grpc_threads, "thread_limit": s.thread_limit,
            "max_images": s.max_images, "max_body_bytes": s.max_body_bytes,
            "timings": str(self.timings.path) if self.timings.path else None,
        }


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r}")
    return int(text)


def _version(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"expected a positive version number, got {text!r}")
    return int(text)


def _parser() -> Parser:
    p = Parser(prog=f"python -m {PROG}", program=PROG,
               description="A TensorFlow-Serving-compatible REST + gRPC server for one model "
                           "(INFBENCH_MODEL_PATH).")
    p.add_argument("--rest-port", required=True, type=_port, help="REST port (0: any free)")
    p.add_argument("--grpc-port", required=True, type=_port, help="gRPC port (0: any free)")
    p.add_argument("--model-name", default="default", help="the name clients ask for")
    p.add_argument("--model-version", default=1, type=_version, help="the served version")
    p.add_argument("--host", default="127.0.0.1", help="address both servers bind")
    return p


def options(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Options:
    """The command line and the environment, validated (SettingsError or exit 1)."""
    args = _parser().parse_args(argv)
    env = dict(os.environ) if env is None else env
    if not args.model_name or "/" in args.model_name or ":" in args.model_name:
        raise SettingsError(f"--model-name {args.model_name!r}: must be non-empty, without "
                            "'/' or ':'")
    settings = load_settings(env)
    call = env.get("INFBENCH_CALL", "").strip() or DEFAULT_CALL
    if call not in CALL_STYLES:  # load_settings has checked a set value already
        raise SettingsError(f"INFBENCH_CALL: expected one of {', '.join(CALL_STYLES)}")
    threads_raw = env.get("INFBENCH_GRPC_THREADS", "").strip()
    threads = int(threads_raw) if threads_raw.isdigit() else DEFAULT_GRPC_THREADS
    if threads_raw and (not threads_raw.isdigit() or threads < 1):
        raise SettingsError(f"INFBENCH_GRPC_THREADS: expected a positive integer, "
                            f"got {threads_raw!r}")
    timing = env.get("INFBENCH_TIMING_DIR", "").strip()
    return Options(host=args.host, rest_port=args.rest_port, grpc_port=args.grpc_port,
                   model_name=args.model_name, model_version=args.model_version,
                   settings=settings, call=call, grpc_threads=threads,
                   timing_dir=Path(timing) if timing else None)


def _rest_socket(host: str, port: int) -> socket.socket:
    """Bound here, handed to Uvicorn: port 0 works, and the bound port is known for certain.

    The protocol must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
    only when their socket says so, and without it each response (headers, then body) waits
    ~40 ms on Nagle and the client's delayed ACK, which would be charged to REST.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind REST to {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    try:
        opts = options(argv)
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    core = Core(opts)
    sock = None
    try:
        sock = _rest_socket(opts.host, opts.rest_port)
        core.rest_port = int(sock.getsockname()[1])
        core.grpc_server, core.grpc_port = bind_grpc(core)
        core.timings.create()
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if sock is not None:
            sock.close()
        return 1
    serve_grpc(core, core.grpc_server)
    print(f"{PROG}: REST on http://{opts.host}:{core.rest_port} gRPC on "
          f"{opts.host}:{core.grpc_port} pid={os.getpid()}", file=sys.stderr, flush=True)
    probes.start_from_env()  # INFBENCH_PROBE_DIR: the memory probes' thread (opt-in)
    try:
        # Before Uvicorn listens: /health answers only once the model is warm, while gRPC
        # is already up and says NOT_SERVING.
        core.load()
    except Exception as exc:
        print(f"{PROG}: error: cannot load {opts.settings.model_path}: "
              f"{reason(exc)}",
              file=sys.stderr, flush=True)
        core.shutdown()
        sock.close()
        return 1
    config = uvicorn.Config(RestApi(core).app(), log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        core.shutdown()  # a no-op after the lifespan's, but covers a failed startup
        sock.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
