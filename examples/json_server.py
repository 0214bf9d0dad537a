"""A worked example of "your own server": another request shape than infbench's servers.

It answers the TensorFlow-Serving REST style of request instead of multipart uploads:

  GET  /v1/models/<name>           200 {"model_version_status": [{"state": "AVAILABLE", ...}]}
  POST /v1/models/<name>:predict   body {"instances": [{"b64": "<base64 JPEG>"}, ...]}
                                   200 {"predictions": [{"class": c, "score": s}, ...]}
                                   400 {"error": ...} for anything else

It keeps infbench's limits, read from the same variables as the other servers
(servers/shared/settings.py): a body over INFBENCH_MAX_BODY_BYTES is a 413, images decoding to
more than INFBENCH_MAX_REQUEST_PIXELS in all a 413, no room in INFBENCH_MAX_INFLIGHT_PIXELS
(pixels decoded at once over all requests) within a short wait a 503 with Retry-After, an
oversized request target or header block a 414 / 431; every refusal is JSON {"error": ...}.

The model and its preprocessing are infbench's (servers/shared/model.py), so only the transport
differs; the model file comes from INFBENCH_MODEL_PATH, which the harness sets for every
variant (or set it yourself). experiments.toml runs it as the variant `example-json`:

  make run_example-json PROFILE=quick

Run by hand: INFBENCH_MODEL_PATH=build/models/small.keras \\
    python -m uvicorn examples.json_server:app --host 127.0.0.1 --port 8501
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from servers.image.service import PixelBudget, exception_handlers
from servers.shared import probes
from servers.shared.bodylimit import BodyLimitMiddleware
from servers.shared.headerlimit import HeaderLimitsMiddleware
from servers.shared.model import LoadedModel, load_model, predict
from servers.shared.settings import load_settings

MAX_INSTANCES = 256
settings = load_settings()
# Process-wide: every request's decode takes its pixels from this one budget.
pixels = PixelBudget(settings.max_request_pixels, settings.max_inflight_pixels)
_state: dict[str, LoadedModel] = {}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def status(request: Request) -> JSONResponse:
    if "model" not in _state:
        return _error(503, "model not loaded")
    return JSONResponse({"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK"}}]})


def _decode(doc: Any) -> list[bytes]:
    """The JPEG bytes of each instance, or ValueError naming what is wrong."""
    if not isinstance(doc, dict) or not isinstance(doc.get("instances"), list):
        raise ValueError('expected {"instances": [{"b64": ...}, ...]}')
    instances = doc["instances"]
    if not instances or len(instances) > MAX_INSTANCES:
        raise ValueError(f"expected 1 to {MAX_INSTANCES} instances, got {len(instances)}")
    out = []
    for i, item in enumerate(instances):
        if not isinstance(item, dict) or not isinstance(item.get("b64"), str):
            raise ValueError(f'instance {i}: expected {{"b64": "<base64>"}}')
        try:
            out.append(base64.b64decode(item["b64"], validate=True))
        except (binascii.Error, ValueError):
            raise ValueError(f"instance {i}: not valid base64") from None
    return out


def _infer(images: list[bytes]) -> list[dict[str, Any]]:
    """In a worker thread: a wait for pixel budget blocks the thread, not the event loop."""
    model = _state["model"]
    top = predict(model, pixels.preprocess(images, model.input_size))
    return [{"class": c, "score": round(s, 6)} for c, s in top]


async def predict_endpoint(request: Request) -> JSONResponse:
    try:
        images = _decode(json.loads(await request.body()))
    except ValueError as e:  # json.JSONDecodeError is a ValueError too
        return _error(400, str(e))
    # A bad image (400), too many pixels (413) or no room (503) raise: exception_handlers.
    predictions = await run_in_threadpool(_infer, images)
    return JSONResponse({"predictions": predictions})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    probes.start_from_env()  # a no-op unless the variant sets probes = true
    _state["model"] = load_model(settings.model_path, settings.input_size)
    yield


app = Starlette(routes=[Route("/v1/models/{name}", status),
                        Route("/v1/models/{name}:predict", predict_endpoint, methods=["POST"])],
                middleware=[Middleware(BodyLimitMiddleware,
                                       max_body_bytes=settings.max_body_bytes),
                            Middleware(HeaderLimitsMiddleware)],
                exception_handlers=exception_handlers(MAX_INSTANCES),
                lifespan=lifespan)
