"""A strict test server for request templates: no model, it only checks what arrives.

Every endpoint answers 400 with the reason when the body is not exactly what its template
should have produced, so a load whose requests all succeed proves the template was rendered
and sent as declared.

  POST /json?n=N   {"inputs": {"batch": N, "images": [{"data": "<b64 JPEG>", "px": HxWx3}]}}
  POST /npy/N      a .npy uint8 array (N, 8, 8, 3)
  PUT  /raw        one JPEG; header X-Token: secret; answers 201
  GET  /ready      200
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

JPEG = b"\xff\xd8\xff"
SIZE = 8
_seen: dict[str, int] = {"json": 0, "npy": 0, "raw": 0}


def _bad(reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=400)


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "seen": _seen})


async def json_batch(request: Request) -> JSONResponse:
    if request.headers.get("content-type") != "application/json":
        return _bad(f"content-type {request.headers.get('content-type')}")
    n = int(request.query_params["n"])
    doc = json.loads(await request.body())
    inputs = doc["inputs"]
    if inputs["batch"] != n or len(inputs["images"]) != n:
        return _bad(f"batch {inputs['batch']}, {len(inputs['images'])} images, path n={n}")
    for item in inputs["images"]:
        if not base64.b64decode(item["data"], validate=True).startswith(JPEG):
            return _bad("data is not a base64 JPEG")
        px = np.asarray(item["px"])
        if px.shape != (SIZE, SIZE, 3) or px.min() < 0 or px.max() > 255:
            return _bad(f"pixels shape {px.shape}")
    _seen["json"] += 1
    return JSONResponse({"ok": n})


async def npy_batch(request: Request) -> JSONResponse:
    n = int(request.path_params["n"])
    arr = np.load(io.BytesIO(await request.body()), allow_pickle=False)
    if arr.shape != (n, SIZE, SIZE, 3) or arr.dtype != np.uint8:
        return _bad(f"array {arr.shape} {arr.dtype}, path n={n}")
    _seen["npy"] += 1
    return JSONResponse({"ok": n})


async def raw_image(request: Request) -> JSONResponse:
    if request.headers.get("x-token") != "secret":
        return _bad("no X-Token header")
    if request.headers.get("content-type") != "image/jpeg" or \
            not (await request.body()).startswith(JPEG):
        return _bad("not a JPEG body")
    _seen["raw"] += 1
    return JSONResponse({"ok": 1}, status_code=201)


app = Starlette(routes=[
    Route("/ready", ready),
    Route("/json", json_batch, methods=["POST"]),
    Route("/npy/{n:int}", npy_batch, methods=["POST"]),
    Route("/raw", raw_image, methods=["PUT"]),
])
