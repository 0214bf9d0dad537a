"""The model behind both protocols: the one refusal type (REST status and gRPC code), the
validated options and the servable (checks, input conversion and the guarded model call)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from servers.shared.errors import ApiError, one_line
from servers.shared.model import BadImage, LoadedModel, decode_image, forward
from servers.shared.settings import Settings
from servers.tfserving.timing import Timing

if TYPE_CHECKING:
    from tensorflow_serving.apis import get_model_status_pb2


DEFAULT_SIGNATURE = "serving_default"
OUTPUT_NAME = "output_0"  # what Keras 3's model.export names a model's single output


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


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a number JSON allows")


def loads_json(data: bytes) -> Any:
    """A request's JSON document, or a 400: malformed, nested too deeply, NaN or Infinity."""
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise bad("malformed JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, NaN/Infinity
        raise bad(f"malformed JSON: {one_line(str(exc))}") from None


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
        self.classes = 0  # the output's width, known once the warm-up call has run (Core.load)

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
            started, cpu = time.perf_counter(), time.thread_time()
            rec.queue += started - waited
            out = forward(self.loaded, batch, self.call, self.pad_to)
            rec.model = time.perf_counter() - started
            rec.model_cpu = time.thread_time() - cpu
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


