"""The Open Inference Protocol over gRPC: inference.GRPCInferenceService (ModelInfer,
ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata), with tritonclient's generated
stubs (tritonclient.grpc.service_pb2: the protocol's own grpc_service.proto). The checks are
servers.tfserving.v2's, so gRPC refuses what REST refuses."""

from __future__ import annotations

import time
from typing import Any

import grpc
import numpy as np

from servers.tfserving.core import Core
from servers.tfserving.rpc import abort, answering
from servers.tfserving.servable import OUTPUT_NAME, InputError, Servable, bad
from servers.tfserving.timing import Timing
from servers.tfserving.v2 import (
    DATATYPE,
    EXTENSIONS,
    PLATFORM,
    SERVER_NAME,
    SERVER_VERSION,
    check_model,
    check_outputs,
    raw_values,
    tensor_batch,
    tensor_shape,
)

INFER_METHOD = "/inference.GRPCInferenceService/ModelInfer"


def infer_batch(request: Any, servable: Servable, rec: Timing) -> np.ndarray:
    """The model's batch from a ModelInferRequest: raw_input_contents or typed contents."""
    if len(request.inputs) != 1:
        raise bad(f"the model has one input; the request has {len(request.inputs)}")
    tensor = request.inputs[0]
    shape = tensor_shape(tensor.datatype, [int(d) for d in tensor.shape], servable)
    rec.batch = shape[0]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise bad(f"{len(request.raw_input_contents)} raw_input_contents for one input")
        if tensor.HasField("contents"):
            raise bad("input 0 has both contents and raw_input_contents")
        rec.format = "v2-raw"
        values = raw_values(request.raw_input_contents[0], shape)
    else:
        rec.format = "v2-contents"
        values = np.asarray(tensor.contents.fp32_contents, dtype=np.float32)
    return tensor_batch(shape, values, servable)


def _version(servable: Servable) -> str:
    return str(servable.version)


def add_v2(core: Core, server: grpc.Server, active: Any) -> None:
    """Register GRPCInferenceService on `server`; `active()` is the running RPC's record."""
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    log = core.timings

    def model(context: grpc.ServicerContext, name: str, version: str) -> Servable:
        try:
            servable = core.servable_or_unavailable()
            check_model(servable, name, version)
        except InputError as exc:
            abort(context, exc)
        return servable

    def tensor_meta(name: str, shape: list[int]) -> Any:
        return service_pb2.ModelMetadataResponse.TensorMetadata(
            name=name, datatype=DATATYPE, shape=shape)

    class Inference(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
        """The protocol's health, metadata and infer; the rest stays UNIMPLEMENTED."""

        def ServerLive(self, request: Any, context: grpc.ServicerContext) -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        def ServerReady(self, request: Any, context: grpc.ServicerContext) -> Any:
            return service_pb2.ServerReadyResponse(ready=core.servable is not None)

        def ModelReady(self, request: Any, context: grpc.ServicerContext) -> Any:
            model(context, request.name, request.version)
            return service_pb2.ModelReadyResponse(ready=True)

        def ServerMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
            return service_pb2.ServerMetadataResponse(
                name=SERVER_NAME, version=SERVER_VERSION, extensions=EXTENSIONS)

        def ModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
            s = model(context, request.name, request.version)
            return service_pb2.ModelMetadataResponse(
                name=s.name, versions=[_version(s)], platform=PLATFORM,
                inputs=[tensor_meta(s.input_name, [-1, *s.shape])],
                outputs=[tensor_meta(OUTPUT_NAME, [-1, s.classes])])

        def ModelInfer(self, request: Any, context: grpc.ServicerContext) -> Any:
            rec = active() or Timing("grpc")
            with answering(log, rec, context):
                servable = core.servable_or_unavailable()
                check_model(servable, request.model_name, request.model_version)
                check_outputs([o.name for o in request.outputs])
                with rec.decoding():
                    batch = infer_batch(request, servable, rec)
                out = servable.run(batch, rec)
                started = time.perf_counter()
                response = service_pb2.ModelInferResponse(
                    model_name=servable.name, model_version=_version(servable),
                    id=request.id)
                response.outputs.add(name=OUTPUT_NAME, datatype=DATATYPE,
                                     shape=[int(n) for n in out.shape])
                response.raw_output_contents.append(out.astype("<f4", copy=False).tobytes())
                rec.serialize = time.perf_counter() - started
            return response  # the record is finished by PredictTimer's serialiser

    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(Inference(), server)
