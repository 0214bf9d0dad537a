"""Locust users for a TensorFlow-Serving-compatible server (servers.tfserving, or the real one),
and for the Open Inference Protocol ("V2": KServe, Triton, MLServer; servers.tfserving speaks it
too).

One kind of user per Locust process, chosen by the environment, so that REST and gRPC runs
differ only in the transport and the encoding of the same sample images:

  INFBENCH_TFS_KIND     rest-row-pixels  POST :predict {"instances": [<float tensor>, ...]}
                        rest-b64         POST :predict {"instances": [{"b64": <JPEG>}, ...]}
                        rest-columnar    POST :predict {"inputs": [<float tensor>, ...]}
                        grpc-tensor      Predict, a DT_FLOAT TensorProto in tensor_content
                        grpc-string      Predict, a DT_STRING TensorProto of JPEGs (string_val)
                        v2-rest-json     POST /v2/models/<model>/infer, one FP32 input with its
                                         row-major flattened "data" as JSON numbers, JSON output
                        v2-rest-binary   the same with the binary tensor data extension: the
                                         JSON header (binary_data_size, binary_data_output),
                                         then the raw little-endian FP32 bytes, its length in
                                         Inference-Header-Content-Length; a binary output
                        v2-grpc          inference.GRPCInferenceService/ModelInfer, the tensor in
                                         raw_input_contents (as tritonclient sends it)
  INFBENCH_BATCH        instances per request (default 1)
  INFBENCH_TFS_MODEL    the model name (default "default")
  INFBENCH_TFS_INPUT    the input's name in gRPC and V2 requests (default "image";
                        servers.tfserving takes a one-input model's input under any name,
                        TF-Serving and V2 servers do not: name the model's input there)
  INFBENCH_TFS_REPEAT   1 (default): the same body every request; 0: every request unique --
                        float kinds change one pixel's value, JPEG kinds take the next images
                        of the folder and end each JPEG with a request-unique trailer after its
                        end marker (decoders ignore it), so no two bodies are equal
  INFBENCH_IMAGES       folder of sample JPEGs (`make build`)
  INFBENCH_IMAGE_SIZE   pixels per side of the float tensors (the model's input size; needed
                        by the float kinds), INFBENCH_IMAGE_CHANNELS 3 (default) or 1
  INFBENCH_GRPC_HOST    host:port of the gRPC server (gRPC kinds); REST kinds use --host
  INFBENCH_WAIT_MIN/_MAX, INFBENCH_REQUEST_TIMEOUT, INFBENCH_COUNTS: as loadtests/locustfile.py,
                        which this file imports for them and for what every infbench load does
                        (the counts file, with "kind" added, and the final CSVs)

Float tensors are the images after servers.shared.model's preprocessing (what the server would feed
the model), rounded to 6 decimals in JSON; gRPC sends the exact float32 bytes.

Bodies are built once per process: the load generator shares the machine with the server, so
per request it only joins prepared bytes (and, with REPEAT=0, splices in the changing part).

The gRPC user is gevent-compatible (grpc.experimental.gevent.init_gevent() before any channel),
has its own channel (and connection) per user, as a REST user has its keep-alive connection,
sends the prepared request bytes through a generic unary-unary call, and fires Locust's
`request` event with request_type "grpc", so the CSV and HTML reports are the same as for HTTP.

The TF-Serving protobuf modules live inside the `tensorflow` package, whose __init__ loads all
of TensorFlow (about 6 s and hundreds of MB). Here only the generated protobuf modules are
needed, so `tensorflow` is registered as a bare namespace before importing them (unless
TensorFlow is already imported): nothing else in a Locust process may import TensorFlow after.
"""

from __future__ import annotations

import base64
import importlib.util
import itertools
import json
import os
import random
import struct
import sys
import time
import types
from pathlib import Path
from typing import Any

import locustfile as shared  # loadtests/ is on sys.path: Locust adds the locustfile's folder
from locust import User, between, task
from locust.exception import StopUser

KINDS = ("rest-row-pixels", "rest-b64", "rest-columnar", "grpc-tensor", "grpc-string",
         "v2-rest-json", "v2-rest-binary", "v2-grpc")
FLOAT_KINDS = ("rest-row-pixels", "rest-columnar", "grpc-tensor", "v2-rest-json",
               "v2-rest-binary", "v2-grpc")
SIGNATURE = "serving_default"
TFS_PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
V2_INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"
V2_HEADER = "Inference-Header-Content-Length"
# One float of the tensor changes per request with REPEAT=0: a million distinct values.
UNIQUE_VALUES = 1_000_000


def _fail(message: str) -> SystemExit:
    return SystemExit(f"tfserving_users: {message}")


def _int_env(name: str, default: int, lowest: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < lowest:
        raise _fail(f"{name}: expected an integer >= {lowest}, got {raw!r}")
    return int(raw)


KIND = os.environ.get("INFBENCH_TFS_KIND", "").strip()
if KIND not in KINDS:
    raise _fail(f"INFBENCH_TFS_KIND: expected one of {', '.join(KINDS)}, got {KIND!r}")
IS_GRPC = KIND in ("grpc-tensor", "grpc-string", "v2-grpc")
IS_V2 = KIND.startswith("v2-")
BATCH = _int_env("INFBENCH_BATCH", 1)
MODEL = os.environ.get("INFBENCH_TFS_MODEL", "").strip() or "default"
INPUT = os.environ.get("INFBENCH_TFS_INPUT", "").strip() or "image"
REPEAT = os.environ.get("INFBENCH_TFS_REPEAT", "1").strip() or "1"
if REPEAT not in ("0", "1"):
    raise _fail(f"INFBENCH_TFS_REPEAT: expected 1 (same input) or 0 (unique), got {REPEAT!r}")
UNIQUE = REPEAT == "0"
IMAGES = Path(os.environ.get("INFBENCH_IMAGES", "build/images"))
GRPC_HOST = os.environ.get("INFBENCH_GRPC_HOST", "").strip()
if IS_GRPC and not GRPC_HOST:
    raise _fail(f"INFBENCH_GRPC_HOST: required for {KIND} (host:port of the gRPC server)")
REST_PATH = f"/v2/models/{MODEL}/infer" if IS_V2 else f"/v1/models/{MODEL}:predict"
PREDICT_METHOD = V2_INFER_METHOD if IS_V2 else TFS_PREDICT_METHOD  # the gRPC kinds' call
NAME = f"{PREDICT_METHOD.rsplit('/', 1)[1] if IS_GRPC else REST_PATH} [{KIND} batch {BATCH}]"


# ---------------------------------------------------------------------------------------------
# Bodies, built once


def _jpegs() -> list[bytes]:
    paths = sorted(IMAGES.glob("*.jpg"))
    if not paths:
        raise _fail(f"no sample images in {IMAGES} (run `make build`)")
    return [p.read_bytes() for p in paths]


def _tensor(jpegs: list[bytes]) -> Any:
    """The batch as the server's preprocessing makes it: (BATCH, size, size, channels) float32."""
    from servers.shared.model import preprocess

    size = _int_env("INFBENCH_IMAGE_SIZE", 0, lowest=0)
    if size < 1:
        raise _fail(f"INFBENCH_IMAGE_SIZE: required for {KIND} (the model's input size)")
    channels = _int_env("INFBENCH_IMAGE_CHANNELS", 3)
    if channels not in (1, 3):
        raise _fail(f"INFBENCH_IMAGE_CHANNELS: expected 1 or 3, got {channels}")
    return preprocess([jpegs[i % len(jpegs)] for i in range(BATCH)], size, channels)


def _unique_value(n: int) -> float:
    return (n % UNIQUE_VALUES) / UNIQUE_VALUES


class Payload:
    """Request n's body: fixed bytes, or fixed bytes with one spliced-in part."""

    def __init__(self, fixed: bytes) -> None:
        self.fixed = fixed

    def body(self, n: int) -> bytes:
        return self.fixed


class JsonFloats(Payload):
    """REST float tensor; unique: the first number is written per request."""

    def __init__(self, key: str, tensor: Any) -> None:
        import numpy as np

        mark = "@infbench-unique@"
        values = np.round(tensor.astype(np.float64), 6).tolist()
        doc: dict[str, Any] = {"signature_name": SIGNATURE, key: values}
        super().__init__(json.dumps(doc).encode())
        values[0][0][0][0] = mark
        head, tail = json.dumps(doc).split(json.dumps(mark))
        self.head, self.tail = head.encode(), tail.encode()

    def body(self, n: int) -> bytes:
        if not UNIQUE:
            return self.fixed
        return b"".join((self.head, f"{_unique_value(n):.6f}".encode(), self.tail))


def _padded(jpeg: bytes) -> bytes:
    """The JPEG padded to a multiple of 3 bytes, so that base64(jpeg + trailer) is
    base64(jpeg) + base64(trailer): the trailer is encoded per request, the image once."""
    return jpeg + b"\0" * (-len(jpeg) % 3)


def _trailer(n: int) -> bytes:
    return (n % 2**48).to_bytes(6, "big")  # 6 bytes: base64 without padding


class JsonB64(Payload):
    """REST {"b64": ...} instances; unique: rotate through the folder, with trailers."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self.b64 = [base64.b64encode(_padded(j)) for j in jpegs]
        self.count = len(jpegs)
        fixed = [base64.b64encode(jpegs[i % self.count]) for i in range(BATCH)]
        super().__init__(self._join(fixed))

    @staticmethod
    def _join(values: list[bytes]) -> bytes:
        items = b", ".join(b'{"b64": "' + v + b'"}' for v in values)
        return b'{"signature_name": "' + SIGNATURE.encode() + b'", "instances": [' + items + b"]}"

    def body(self, n: int) -> bytes:
        if not UNIQUE:
            return self.fixed
        tail = base64.b64encode(_trailer(n))
        return self._join([self.b64[(n * BATCH + i) % self.count] + tail for i in range(BATCH)])


def _import_protos() -> tuple[Any, Any]:
    """predict_pb2 and types_pb2 without running tensorflow/__init__ (see the docstring)."""
    if "tensorflow" not in sys.modules:
        spec = importlib.util.find_spec("tensorflow")
        if spec is not None and spec.submodule_search_locations is not None:
            namespace = types.ModuleType("tensorflow")
            namespace.__path__ = list(spec.submodule_search_locations)
            sys.modules["tensorflow"] = namespace
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    return predict_pb2, types_pb2


class GrpcTensor(Payload):
    """A serialised PredictRequest with tensor_content; unique: its first float overwritten."""

    def __init__(self, tensor: Any) -> None:
        predict_pb2, types_pb2 = _import_protos()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = SIGNATURE
        proto = request.inputs[INPUT]
        proto.dtype = types_pb2.DT_FLOAT
        for n in tensor.shape:
            proto.tensor_shape.dim.add().size = int(n)
        content = tensor.astype("<f4").tobytes()
        proto.tensor_content = content
        fixed = request.SerializeToString()
        super().__init__(fixed)
        self.offset = fixed.find(content)
        assert self.offset > 0

    def body(self, n: int) -> bytes:
        if not UNIQUE:
            return self.fixed
        at = self.offset
        return b"".join((self.fixed[:at], struct.pack("<f", _unique_value(n)),
                         self.fixed[at + 4:]))


class GrpcString(Payload):
    """A serialised PredictRequest of DT_STRING JPEGs; unique: rebuilt per request, rotating."""

    def __init__(self, jpegs: list[bytes]) -> None:
        self.predict_pb2, self.types_pb2 = _import_protos()
        self.jpegs = jpegs
        self.padded = [_padded(j) for j in jpegs]
        super().__init__(self._request([jpegs[i % len(jpegs)] for i in range(BATCH)]))

    def _request(self, images: list[bytes]) -> bytes:
        request = self.predict_pb2.PredictRequest()
        request.model_spec.name = MODEL
        request.model_spec.signature_name = SIGNATURE
        proto = request.inputs[INPUT]
        proto.dtype = self.types_pb2.DT_STRING
        proto.tensor_shape.dim.add().size = len(images)
        proto.string_val.extend(images)
        return bytes(request.SerializeToString())

    def body(self, n: int) -> bytes:
        if not UNIQUE:
            return self.fixed
        tail = _trailer(n)
        count = len(self.padded)
        return self._request([self.padded[(n * BATCH + i) % count] + tail for i in range(BATCH)])


class Spliced(Payload):
    """Fixed bytes whose float32 at `offset` is overwritten per request when unique."""

    def __init__(self, fixed: bytes, offset: int) -> None:
        super().__init__(fixed)
        assert offset > 0
        self.offset = offset

    def body(self, n: int) -> bytes:
        if not UNIQUE:
            return self.fixed
        at = self.offset
        return b"".join((self.fixed[:at], struct.pack("<f", _unique_value(n)),
                         self.fixed[at + 4:]))


def _v2_input(tensor: Any) -> dict[str, Any]:
    return {"name": INPUT, "datatype": "FP32", "shape": [int(n) for n in tensor.shape]}


class V2Json(JsonFloats):
    """V2 REST: the tensor's row-major values flattened into "data"; unique as JsonFloats."""

    def __init__(self, tensor: Any) -> None:
        import numpy as np

        mark = "@infbench-unique@"
        values = np.round(tensor.astype(np.float64).ravel(), 6).tolist()
        doc: dict[str, Any] = {"inputs": [{**_v2_input(tensor), "data": values}]}
        Payload.__init__(self, json.dumps(doc).encode())
        values[0] = mark
        head, tail = json.dumps(doc).split(json.dumps(mark))
        self.head, self.tail = head.encode(), tail.encode()


def v2_binary(tensor: Any) -> tuple[bytes, int]:
    """The binary extension's body and its JSON header's length: the header asks for the
    output as binary too, as tritonclient's default does."""
    content = tensor.astype("<f4").tobytes()
    doc = {"inputs": [{**_v2_input(tensor), "parameters": {"binary_data_size": len(content)}}],
           "parameters": {"binary_data_output": True}}
    head = json.dumps(doc).encode()
    return head + content, len(head)


def _v2_grpc(tensor: Any) -> Spliced:
    """A serialised ModelInferRequest with the tensor in raw_input_contents (tritonclient's
    generated stubs: the protocol's grpc_service.proto)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(**_v2_input(tensor))
    content = tensor.astype("<f4").tobytes()
    request.raw_input_contents.append(content)
    fixed = request.SerializeToString()
    return Spliced(fixed, fixed.find(content))


def _payload() -> Payload:
    jpegs = _jpegs()
    if KIND == "v2-rest-json":
        return V2Json(_tensor(jpegs))
    if KIND == "v2-rest-binary":
        body, length = v2_binary(_tensor(jpegs))
        return Spliced(body, length)
    if KIND == "v2-grpc":
        return _v2_grpc(_tensor(jpegs))
    if KIND == "rest-row-pixels":
        return JsonFloats("instances", _tensor(jpegs))
    if KIND == "rest-columnar":
        return JsonFloats("inputs", _tensor(jpegs))
    if KIND == "rest-b64":
        return JsonB64(jpegs)
    if KIND == "grpc-tensor":
        return GrpcTensor(_tensor(jpegs))
    return GrpcString(jpegs)


PAYLOAD = _payload()
# Request numbers: a random start per process, so that several load processes with
# REPEAT=0 do not send the same sequence.
_numbers = itertools.count(random.SystemRandom().randrange(UNIQUE_VALUES))

if IS_GRPC:
    import grpc
    import grpc.experimental.gevent as grpc_gevent

    grpc_gevent.init_gevent()  # after Locust's monkey-patching, before any channel


# ---------------------------------------------------------------------------------------------
# Counts and the final CSV: the shared locustfile's (imported above; it registers the listeners
# that write INFBENCH_COUNTS and the final CSVs), with this load's kind in the counts file

shared._counts["kind"] = KIND


def _next_body() -> bytes:
    """The next body; no request starts once the step is ending (see locustfile.py)."""
    if shared._counts["test_stopping"] is not None:
        raise StopUser()
    return PAYLOAD.body(next(_numbers))


def _begin() -> bytes:
    """The next body, counted as started (the gRPC user counts its own requests)."""
    body = _next_body()
    shared._counts["started"] += 1
    return body


JSON = {"Content-Type": "application/json"}
# The REST kinds' headers (request_dump.py replays them): the binary extension says where its
# JSON header ends.
REST_HEADERS = ({"Content-Type": "application/octet-stream",
                 V2_HEADER: str(PAYLOAD.offset)}
                if KIND == "v2-rest-binary" and isinstance(PAYLOAD, Spliced) else JSON)


# ---------------------------------------------------------------------------------------------
# Users


class RestUser(shared.LoadUser):
    """POST :predict with the prepared JSON body, on the user's own keep-alive connection."""

    abstract = IS_GRPC
    wait_time = between(shared.WAIT_MIN, shared.WAIT_MAX)

    def on_start(self) -> None:
        self.fixed = shared.prepare("POST", REST_PATH, self.conn.host, PAYLOAD.fixed,
                                    REST_HEADERS)

    @task
    def predict(self) -> None:
        body = _next_body()
        request = self.fixed if body is PAYLOAD.fixed else \
            shared.prepare("POST", REST_PATH, self.conn.host, body, REST_HEADERS)
        self.request("POST", request, NAME, (200,))


class GrpcFailure(Exception):
    """A gRPC status other than OK, as Locust's failure table shows it."""


class GrpcUser(User):
    """Predict over its own gRPC channel, reported to Locust like an HTTP request."""

    abstract = not IS_GRPC
    wait_time = between(shared.WAIT_MIN, shared.WAIT_MAX)

    def on_start(self) -> None:
        # A local subchannel pool: each user gets its own connection, as each REST user does.
        self.channel = grpc.insecure_channel(GRPC_HOST, options=[
            ("grpc.use_local_subchannel_pool", 1),
            ("grpc.max_send_message_length", -1),
            ("grpc.max_receive_message_length", -1),
        ])
        # Prepared bytes in, raw bytes out: no per-request (de)serialising in the load.
        self.call = self.channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                                             response_deserializer=None)

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def predict(self) -> None:
        body = _begin()
        started_at = time.time()
        started = time.perf_counter()
        length = 0
        error: Exception | None = None
        try:
            response = self.call(body, timeout=shared.TIMEOUT)
            length = len(response)
        except grpc.RpcError as exc:
            code = exc.code()
            error = GrpcFailure(f"{code.name if code else 'UNKNOWN'}: {exc.details()}")
            shared._counts["failed"] += 1
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        shared._counts["finished"] += 1
        self.environment.events.request.fire(
            request_type="grpc", name=NAME, response_time=elapsed_ms,
            response_length=length, response=None, context={}, exception=error,
            start_time=started_at, url=GRPC_HOST)
