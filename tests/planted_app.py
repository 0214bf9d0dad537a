"""A planted server for the verdict tests: no model, the same /health and /predict contract.

PLANTED_LEAK=N keeps N small Python strings per request for ever (a leak of Python objects);
0 keeps nothing (a healthy server). The memory probes run as in the real servers.

Run: python -m uvicorn tests.planted_app:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from servers import probes

PER_REQUEST = int(os.environ.get("PLANTED_LEAK", "0"))
_kept: list[list[str]] = []
_served = 0


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "leak_per_request": PER_REQUEST, "served": _served,
                         "kept_lists": len(_kept)})


async def predict(request: Request) -> JSONResponse:
    global _served
    body = await request.body()
    _served += 1
    if PER_REQUEST:
        _kept.append([f"request {_served} object {i}" for i in range(PER_REQUEST)])
    return JSONResponse({"predictions": [], "count": 0, "bytes": len(body)})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    probes.start_from_env()
    yield


app = Starlette(routes=[Route("/health", health), Route("/predict", predict, methods=["POST"])],
                lifespan=lifespan)
