"""A user's server, untouched: no probe call, nothing of infbench imported. The verdict tests run
it as `server = "command"` and the harness must judge it from outside and through the injected
probes alone.

One kind of memory behaviour per environment switch (a request is a POST /predict):
  UNTOUCHED_PYLEAK_KB=K   keeps a K KiB bytes object per request for ever (a leak of big
                          Python objects: one memory block each, so block counts barely move)
  UNTOUCHED_NATIVE_KB=K   mallocs K KiB per request, touches it and never frees it (a native
                          leak; the pointers go into one array, so no Python object is added)
  UNTOUCHED_CHURN=N       starts a thread per request that fills N 64 KiB buffers and frees
                          them, keeping only a 2 KiB object of its own among the last 512: glibc
                          keeps the freed buffers' room in its arenas (allocator retention,
                          bounded: malloc_trim gives it back)
  UNTOUCHED_CACHE=N       a cache of the last N 64 KiB objects (bounded: a plateau)

Run: python -m uvicorn tests.untouched_app:app --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

import array
import collections
import ctypes
import ctypes.util
import os
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

KB = 1024
PYLEAK = int(os.environ.get("UNTOUCHED_PYLEAK_KB", "0")) * KB
NATIVE = int(os.environ.get("UNTOUCHED_NATIVE_KB", "0")) * KB
CHURN = int(os.environ.get("UNTOUCHED_CHURN", "0"))
CACHE = int(os.environ.get("UNTOUCHED_CACHE", "0"))
MAX_BODY = int(os.environ.get("INFBENCH_MAX_BODY_BYTES", str(64 * 1024 * KB)))

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.malloc.restype = ctypes.c_void_p
_libc.malloc.argtypes = [ctypes.c_size_t]
_kept: list[bytes] = []
_native = array.array("Q")
_pins: collections.deque[bytearray] = collections.deque(maxlen=512)
_cache: collections.OrderedDict[int, bytes] = collections.OrderedDict()
_lock = threading.Lock()
_served = 0


def _churn() -> None:
    # bytearray(n) zero-fills, so every buffer is touched (resident) before it is freed.
    buffers = [bytearray(64 * KB) for _ in range(CHURN)]
    pin = bytearray(2 * KB)  # above the buffers in this thread's arena, so they leave a hole
    with _lock:
        _pins.append(pin)
    del buffers


def _handle() -> None:
    global _served
    with _lock:
        _served += 1
        n = _served
    if PYLEAK:
        _kept.append(b"\x01" * PYLEAK)  # written, not calloc'd: resident
    if NATIVE:
        ptr = _libc.malloc(NATIVE)
        ctypes.memset(ptr, 1, NATIVE)
        _native.append(ptr)
    if CACHE:
        with _lock:
            _cache[n] = b"\x02" * (64 * KB)
            while len(_cache) > CACHE:
                _cache.popitem(last=False)
    if CHURN:
        t = threading.Thread(target=_churn)
        t.start()
        t.join()


def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "pid": os.getpid(), "served": _served})


async def predict(request: Request) -> JSONResponse:
    size = int(request.headers.get("content-length") or 0)
    if size > MAX_BODY:
        return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
    body = await request.body()
    if len(body) > MAX_BODY:
        return JSONResponse({"error": f"body over {MAX_BODY} bytes"}, status_code=413)
    if CHURN:
        # The churn's threads are joined off the event loop, as a blocking handler would be.
        from starlette.concurrency import run_in_threadpool
        await run_in_threadpool(_handle)
    else:
        _handle()
    return JSONResponse({"predictions": [], "count": 0, "bytes": len(body)})


app = Starlette(routes=[Route("/health", health), Route("/predict", predict, methods=["POST"])])
