"""The FastAPI app: the idiomatic `list[UploadFile]` endpoint over servers.image.service.

Run: python -m uvicorn servers.image.app_fastapi:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import FastAPI, File, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from servers.image.service import (
    FIELD,
    HEALTH_PATH,
    MAX_FIELDS,
    PREDICT_PATH,
    Service,
    exception_handlers,
    middleware,
)
from servers.shared import nodelay
from servers.shared.errors import error_response
from servers.shared.settings import load_settings

nodelay.apply_from_env()  # INFBENCH_TCP_NODELAY=1: see servers/shared/nodelay.py
service = Service(load_settings())

Images = Annotated[list[UploadFile], File(description="one part per image")]


def predict_sync(images: Images) -> JSONResponse:
    """INFBENCH_ENDPOINT=sync: a plain def, so FastAPI runs it in anyio's worker threads."""
    started = time.perf_counter()
    return service.infer_sync(service.check_uploads(images), started)


async def predict_async(images: Images) -> JSONResponse:
    """INFBENCH_ENDPOINT=async: reads with await, then blocks the event loop on the model."""
    started = time.perf_counter()
    return await service.infer_async(service.check_uploads(images), started)


async def on_validation_error(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 as the shared {"error": ...} 400: a missing or non-file `images` part."""
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "missing" for e in errors):
        return error_response(400, f"no files in form field {FIELD!r}")
    first = errors[0] if errors else {}
    loc = list(first.get("loc", ()))
    if len(loc) >= 3 and loc[:2] == ["body", FIELD]:
        return error_response(400, f"image {loc[2]}: part {FIELD!r} is a text field, not a file")
    return error_response(400, f"invalid request: {first.get('msg', 'bad input')}")

app = FastAPI(
    title="infbench (FastAPI)",
    middleware=middleware(service),
    exception_handlers={**exception_handlers(service.settings.max_images),
                        RequestValidationError: on_validation_error},
    lifespan=service.lifespan,
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
app.add_api_route(HEALTH_PATH, service.health_endpoint, methods=["GET"])
app.add_api_route(
    PREDICT_PATH,
    predict_sync if service.settings.endpoint == "sync" else predict_async,
    methods=["POST"],
    form_limits={"max_files": service.settings.max_images, "max_fields": MAX_FIELDS},
)
