"""A planted server for the verdict tests: no model, the same /health and /predict contract.

PLANTED_LEAK=N keeps N small Python strings per request for ever (a leak of Python objects);
PLANTED_NATIVE_KB=K mallocs K KiB per request, touches it and never frees it (a native leak:
the pointers go into one array, so no Python object is added per request); neither keeps
nothing (a healthy server). The memory probes run as in the real servers.

Run: python -m uvicorn tests.planted_app:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from servers import probes

PER_REQUEST = int(os.environ.get("PLANTED_LEAK", "0"))
NATIVE_BYTES = int(os.environ.get("PLANTED_NATIVE_KB", "0")) * 1024
_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_native = array.array("Q")
_kept: list[list[str]] = []
_served = 0


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "leak_per_request": PER_REQUEST, "served": _served,
                         "kept_lists": len(_kept), "native_blocks": len(_native)})


async def predict(request: Request) -> JSONResponse:
    global _served
    body = await request.body()
    _served += 1
    if PER_REQUEST:
        _kept.append([f"request {_served} object {i}" for i in range(PER_REQUEST)])
    if NATIVE_BYTES:
        ptr = _libc.malloc(NATIVE_BYTES)
        ctypes.memset(ptr, 1, NATIVE_BYTES)  # touched, so resident
        _native.append(ptr)
    return JSONResponse({"predictions": [], "count": 0, "bytes": len(body)})


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    probes.start_from_env()
    yield


app = Starlette(routes=[Route("/health", health), Route("/predict", predict, methods=["POST"])],
                lifespan=lifespan)
