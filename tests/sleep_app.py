"""A server with a known capacity: one request at a time, each taking INFBENCH_SLEEP_MS.

No model: its service time is fixed, so its capacity is 1000 / INFBENCH_SLEEP_MS requests/s
and a load above it must build a queue. That is what the open-loop tests need to see (or, for a
closed loop, not see). INFBENCH_SLEEP_MS=0 answers at once (the generator-ceiling benchmark's
null endpoint).

  GET  /health    {"status": "ok", "pid": ..., "served": n}
  POST /predict   {"count": 1} after the body is read, SLEEP_MS later, one at a time
"""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

SLEEP_S = float(os.environ.get("INFBENCH_SLEEP_MS", "20")) / 1000.0
MAX_BODY = 64 * 2**20
_state = {"served": 0}
_lock = asyncio.Lock()


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid(), "served": _state["served"],
                         "sleep_ms": SLEEP_S * 1000})


async def predict(request: Request) -> JSONResponse:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        return JSONResponse({"error": "body too large"}, status_code=413)
    await request.body()
    if SLEEP_S > 0:
        async with _lock:
            await asyncio.sleep(SLEEP_S)
    _state["served"] += 1
    return JSONResponse({"count": 1})


app = Starlette(routes=[Route("/health", health), Route("/predict", predict, methods=["POST"])])
