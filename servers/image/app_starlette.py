"""The Starlette app: plain Routes over the shared service in servers.image.service.

Run: python -m uvicorn servers.image.app_starlette:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from servers.image.service import (
    HEALTH_PATH,
    PREDICT_PATH,
    Service,
    exception_handlers,
    form_uploads,
    middleware,
)
from servers.shared import nodelay
from servers.shared.settings import load_settings

nodelay.apply_from_env()  # INFBENCH_TCP_NODELAY=1: see servers/shared/nodelay.py
service = Service(load_settings())


async def predict_sync(request: Request) -> Response:
    """INFBENCH_ENDPOINT=sync: the body is parsed on the loop, the work runs in a thread.

    This mirrors what FastAPI does for a `def` endpoint (parse the form, then call the function
    through run_in_threadpool, i.e. anyio's default limiter), so both apps measure the same.
    """
    async with form_uploads(request, service) as uploads:
        return await run_in_threadpool(service.infer_sync, uploads, time.perf_counter())


async def predict_async(request: Request) -> Response:
    """INFBENCH_ENDPOINT=async: everything, model call included, on the event loop."""
    async with form_uploads(request, service) as uploads:
        return await service.infer_async(uploads, time.perf_counter())


app = Starlette(
    routes=[
        Route(HEALTH_PATH, service.health_endpoint, methods=["GET"]),
        Route(PREDICT_PATH, predict_sync if service.settings.endpoint == "sync" else predict_async,
              methods=["POST"]),
    ],
    middleware=middleware(service),
    exception_handlers=exception_handlers(service.settings.max_images),
    lifespan=service.lifespan,
)
