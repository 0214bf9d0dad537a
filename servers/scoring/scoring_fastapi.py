"""The scoring API, async build: FastAPI on Uvicorn.

    GET  /health   200 {"status": "ok", "pid", "redis": true}  (503, "redis": false, if not)
    POST /score    JSON {"entity_id": int | str}
                   200 {"entity_id", "score", "scores": {"a", "b"}, "timing": {...}}
                   404 unknown entity, 422 bad body (FastAPI's validation), 413 body too large,
                   502 an upstream (Redis, a model API) failed, 504 one did not answer in time;
                   503 every connection of the feature-store pool is in use
                   (INFBENCH_REDIS_MAX_CONNECTIONS); all errors {"error": "<one line>"}

Per request: GET the features with redis.asyncio, then POST them to model_a AND model_b
concurrently (asyncio.gather) over one httpx.AsyncClient per process, made in the lifespan.
Configured by the INFBENCH_* variables in servers.scoring.common's docstring.

Run: python -m uvicorn servers.scoring.scoring_fastapi:app --host 127.0.0.1 --port PORT \
         --workers W --no-access-log
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import redis.asyncio as aioredis
import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictInt, StrictStr
from starlette.types import ASGIApp, Receive, Scope, Send

from servers.scoring.common import (
    ENTITY_ID_MAX_CHARS,
    HEALTH_PATH,
    INT64_MAX,
    INT64_MIN,
    SCORE_PATH,
    ScoreTiming,
    feature_key,
    install_fastapi_errors,
    load_scoring_settings,
    model_answer,
    pool_exhausted,
    record,
    score_answer,
    scoring_health,
    stored_features,
    timing_log,
    upstream_failed,
    upstream_timeout,
)
from servers.shared import nodelay
from servers.shared.bodylimit import BodyLimitMiddleware
from servers.shared.errors import ApiError, error_response
from servers.shared.headerlimit import HeaderLimitsMiddleware
from servers.shared.profiling import ProfileASGI, load_profile_settings

nodelay.apply_from_env()  # INFBENCH_TCP_NODELAY=1: see servers/shared/nodelay.py
settings = load_scoring_settings()
profile_settings = load_profile_settings()  # None unless INFBENCH_PROFILER is set
T0_KEY = "infbench_t0"

# The same rule as servers.scoring.common.check_entity_id (the Flask build), as pydantic types.
EntityId = (Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
            | Annotated[StrictStr, Field(min_length=1, max_length=ENTITY_ID_MAX_CHARS)])


class ScoreRequest(BaseModel):
    entity_id: EntityId


@dataclass
class Clients:
    http: httpx.AsyncClient
    store: aioredis.Redis


_clients: Clients | None = None


def clients() -> Clients:
    if _clients is None:
        raise RuntimeError("clients not made (lifespan startup did not run)")
    return _clients


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """One pooled HTTP client and one Redis pool per worker process, closed at shutdown."""
    global _clients
    t, pool = settings.upstream_timeout, settings.upstream_pool
    http = httpx.AsyncClient(
        timeout=httpx.Timeout(t),
        # As many keep-alive connections as connections: under load, a smaller keep-alive
        # pool (httpx's default is 20) would close and reopen connections all the time.
        limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
    )
    store = aioredis.Redis.from_url(settings.features_url, socket_timeout=t,
                                    socket_connect_timeout=t,
                                    max_connections=settings.redis_max_connections)
    _clients = Clients(http, store)
    try:
        yield
    finally:
        _clients = None
        await http.aclose()
        await store.aclose()
        log = timing_log(settings)
        if log is not None:
            log.close()


class StartClock:
    """ASGI wrapper: the request's clock starts before FastAPI routes and validates it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})[T0_KEY] = time.perf_counter()
        await self.app(scope, receive, send)


def request_timing(request: Request) -> ScoreTiming:
    return ScoreTiming(request.scope.get("state", {}).get(T0_KEY) or time.perf_counter())


def log_error(request: Request, status: int) -> None:
    """Errors answered outside the endpoint (422, 413, 404 route) still get a timing line."""
    if request.url.path == SCORE_PATH and request.method == "POST":
        record(settings, request_timing(request), status)


app = FastAPI(title="infbench scoring API (FastAPI)", lifespan=lifespan, openapi_url=None,
              docs_url=None, redoc_url=None)
app.add_middleware(HeaderLimitsMiddleware)
# Outside the header limits: it drains a body still coming before any answer.
app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
app.add_middleware(StartClock)  # added last: outermost
if profile_settings is not None:  # outermost of all: the profile covers the whole request
    app.add_middleware(ProfileASGI, settings=profile_settings)
install_fastapi_errors(app, on_error=log_error)


async def read_features(timing: ScoreTiming, entity_id: int | str) -> list[float]:
    key = feature_key(entity_id)
    started = time.perf_counter()
    try:
        blob = await clients().store.get(key)
    except redis.exceptions.TimeoutError:
        raise upstream_timeout("feature store", settings.upstream_timeout) from None
    except redis.exceptions.MaxConnectionsError:
        raise pool_exhausted(settings.redis_max_connections) from None
    except redis.exceptions.RedisError as exc:
        raise upstream_failed("feature store", exc) from None
    finally:
        timing.features = time.perf_counter() - started
    return stored_features(blob, entity_id, key)


async def call_model(name: str, url: str,
                     features: list[float]) -> tuple[float, float, float | None]:
    """(score, round-trip seconds, the model's own elapsed_ms), or ApiError(502/504).

    httpx's timeouts bound each phase; asyncio.timeout bounds the whole call as well.
    """
    t = settings.upstream_timeout
    started = time.perf_counter()
    try:
        async with asyncio.timeout(t):
            r = await clients().http.post(f"{url}/predict", json={"features": features})
    except (TimeoutError, httpx.TimeoutException):
        raise upstream_timeout(name, t) from None
    except httpx.HTTPError as exc:
        raise upstream_failed(name, exc) from None
    elapsed = time.perf_counter() - started
    score, server_ms = model_answer(name, r.status_code, r.content)
    return score, elapsed, server_ms


@app.get(HEALTH_PATH)
async def health() -> JSONResponse:
    try:
        ok, error = bool(await clients().store.ping()), None
    except redis.exceptions.MaxConnectionsError:
        ok, error = False, pool_exhausted(settings.redis_max_connections).message
    except redis.exceptions.RedisError as exc:
        ok, error = False, str(exc)
    status, body = scoring_health(ok, error)
    return JSONResponse(body, status_code=status)


@app.post(SCORE_PATH)
async def score(body: ScoreRequest, request: Request) -> JSONResponse:
    timing = request_timing(request)
    entity_id = body.entity_id
    try:
        features = await read_features(timing, entity_id)
        models_started = time.perf_counter()
        # Both calls run to completion (each bounded by the upstream timeout), so no task is
        # left behind when one fails; the first failure, a before b, is the answer.
        results: tuple[Any, ...] = await asyncio.gather(
            call_model("model_a", settings.model_a_url, features),
            call_model("model_b", settings.model_b_url, features),
            return_exceptions=True)
        timing.models = time.perf_counter() - models_started
        for i, result in enumerate(results):
            if not isinstance(result, BaseException):
                if i == 0:
                    _, timing.model_a, timing.model_a_server_ms = result
                else:
                    _, timing.model_b, timing.model_b_server_ms = result
        for result in results:
            if isinstance(result, BaseException):
                raise result
    except ApiError as exc:
        record(settings, timing, exc.status)
        return error_response(exc.status, exc.message)
    (a, _, _), (b, _, _) = results
    fields = record(settings, timing, 200)
    return JSONResponse(score_answer(entity_id, a, b, fields))
