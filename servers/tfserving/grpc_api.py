"""The gRPC side (grpcio's thread pool): PredictionService/Predict, ModelService/GetModelStatus
and grpc.health.v1, with each Predict's receive and (de)serialise times."""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servers.shared.errors import one_line
from servers.tfserving.core import HEALTH_SERVICES, Core
from servers.tfserving.rpc import abort, answering
from servers.tfserving.servable import (
    DEFAULT_SIGNATURE,
    OUTPUT_NAME,
    InputError,
    Servable,
    bad,
    not_found,
)
from servers.tfserving.timing import Timing, TimingLog
from servers.tfserving.v2_grpc import INFER_METHOD, add_v2

if TYPE_CHECKING:
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import get_model_status_pb2, predict_pb2


PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
# The calls that get a timing record: TF-Serving's Predict and the V2 protocol's ModelInfer.
TIMED_METHODS = (PREDICT_METHOD, INFER_METHOD)

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
    """Starts each Predict's (and ModelInfer's) record on arrival and times its
    (de)serialisation.

    grpcio deserialises on its polling thread, outside the RPC's context, so the times travel
    with the message (a _Parsed) to the handler's thread, where the record lives in _RPC.
    """

    def __init__(self, log: TimingLog) -> None:
        self.log = log

    def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or details.method not in TIMED_METHODS:
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
    """Add TF-Serving's two services, the V2 protocol's (servers.tfserving.v2_grpc) and health
    (NOT_SERVING until loaded), and start.

    The TF-Serving protos import TensorFlow, hence here rather than at module import.
    """
    from tensorflow_serving.apis import (
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    log = core.timings

    class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
        """Predict only; Classify, Regress, MultiInference and metadata stay UNIMPLEMENTED."""

        def Predict(self, request: predict_pb2.PredictRequest,
                    context: grpc.ServicerContext) -> predict_pb2.PredictResponse:
            rec = _RPC.get() or Timing("grpc")
            with answering(log, rec, context):
                servable = core.servable_or_unavailable()
                spec = request.model_spec
                servable.check(spec.name, _model_version(spec))
                servable.check_signature(spec.signature_name)
                unknown = [n for n in request.output_filter if n != OUTPUT_NAME]
                if unknown:
                    raise bad(f"output_filter names unknown outputs {unknown}; "
                              f"the model has {OUTPUT_NAME!r}")
                with rec.decoding():
                    batch = grpc_batch(request, servable, rec)
                out = servable.run(batch, rec)
                started = time.perf_counter()
                response = predict_pb2.PredictResponse()
                response.model_spec.name = servable.name
                response.model_spec.version.value = servable.version
                response.model_spec.signature_name = DEFAULT_SIGNATURE
                response.outputs[OUTPUT_NAME].CopyFrom(output_tensor(out))
                rec.serialize = time.perf_counter() - started
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
    add_v2(core, server, _RPC.get)
    health_pb2_grpc.add_HealthServicer_to_server(core.grpc_health, server)
    for service in HEALTH_SERVICES:
        core.grpc_health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.start()


