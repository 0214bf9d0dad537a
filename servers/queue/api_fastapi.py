"""The queue study's API on FastAPI (async, redis.asyncio): images onto Redis, results back.

Run: python -m uvicorn servers.queue.api_fastapi:app --host 127.0.0.1 --port 8000
Settings: INFBENCH_REDIS_URL and the rest in servers.queue.common (keys, encodings, limits).

    GET  /          a small HTML page with an upload form
    GET  /health    200 {"status": "ok", "pid", "redis": true, "queue_length", ...}
                    503 {"status": "error", "error", "pid", "redis": false} if Redis is away
    POST /predict   multipart/form-data, exactly one image file in field `images`
                    200 {"id", "prediction": {"class", "score"}, "timing": {...}}
    POST /feedback  application/json {"id": "<prediction id>", "correct": true|false}
                    200 {"id", "stored": true}; 404 for an id we never answered

Errors are {"error": "<one line>"}: 400 bad form or feedback (and a file the worker cannot
decode), 404/405 unknown path/method, 413 body over INFBENCH_MAX_BODY_BYTES
(servers.shared.bodylimit, which also drains a body still coming before any answer), 415 wrong
content type, 503 Redis unavailable (or this process's connection pool exhausted: the message
names INFBENCH_REDIS_MAX_CONNECTIONS), 504 no result within INFBENCH_JOB_TIMEOUT.

How a request waits for its result: BLPOP on its own result list (P:result:<id>), with the
time left of INFBENCH_JOB_TIMEOUT as the timeout. No polling: Redis wakes us the moment the
worker pushes, a result pushed before we start waiting is kept in the list rather than lost (as
a pub/sub message would be), and the timeout is Redis' own. The price is one Redis connection
per request in flight, held for the wait (the asyncio pool grows to match, up to
INFBENCH_REDIS_MAX_CONNECTIONS; redis-py's own cap of 100 was a 503 at 200 users). A pub/sub
listener fanning results out to futures would need one connection in all, at the cost of that
race.

On timeout the request answers 504 and, in one MULTI, deletes the job's liveness key (so a
worker that still finishes it delivers nothing), LREMs the job from the queue if no worker took
it, and deletes any result that arrived in between: nothing of the job is left in Redis.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from servers.queue.common import (
    FEEDBACK_LUA,
    HEALTH_SOCKET_TIMEOUT_S,
    SOCKET_SLACK_S,
    Job,
    abandon_job,
    answer,
    api_health,
    blocking_timeout,
    check_content_type,
    check_image_bytes,
    check_parts,
    decode_result,
    encode_job,
    feedback_value,
    index_html,
    new_job_id,
    parse_feedback,
    prediction_value,
    queue_job,
    redis_unavailable,
    settings_or_exit,
    too_many_files,
    unknown_prediction,
)
from servers.shared import nodelay
from servers.shared.bodylimit import BodyLimitMiddleware
from servers.shared.errors import ApiError, error_response
from servers.shared.timings import TimingsWriter

PROGRAM = "servers.queue.api_fastapi"
nodelay.apply_from_env()  # INFBENCH_TCP_NODELAY=1: see servers/shared/nodelay.py
settings = settings_or_exit("api", PROGRAM)
keys = settings.keys
timings = TimingsWriter(settings.timing_dir)
# Text fields a /predict form may carry besides the file; a few is plenty.
MAX_FIELDS = 8


def _client(socket_timeout: float) -> aioredis.Redis:
    # No retries inside redis-py: a retried RPUSH could queue a job twice, a retried BLPOP
    # would wait past the job timeout. A failure is a 503 for this request instead.
    return aioredis.Redis.from_url(
        settings.redis_url, socket_timeout=socket_timeout,
        socket_connect_timeout=HEALTH_SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        max_connections=settings.redis_max_connections)


class State:
    """The Redis clients, made in the lifespan (inside the server's event loop)."""

    redis: aioredis.Redis
    health: aioredis.Redis
    feedback: AsyncScript


state = State()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state.redis = _client(settings.job_timeout + SOCKET_SLACK_S)
    # /health must answer quickly even when Redis hangs, so it has its own short timeout.
    state.health = _client(HEALTH_SOCKET_TIMEOUT_S)
    state.feedback = state.redis.register_script(FEEDBACK_LUA)
    try:
        yield
    finally:
        timings.close()
        await state.redis.aclose()
        await state.health.aclose()


# ---------------------------------------------------------------------------------------------
# Endpoints


async def index() -> HTMLResponse:
    return HTMLResponse(index_html("FastAPI", keys))


async def health() -> JSONResponse:
    try:
        await state.health.ping()
        status, body = api_health(settings, await state.health.llen(keys.queue))
    except RedisError as exc:
        status, body = api_health(settings, error=exc)
    return JSONResponse(body, status)


async def _read_image(request: Request) -> bytes:
    """The one uploaded image's bytes, or the ApiError the form deserves."""
    check_content_type(request.headers.get("content-type"))
    try:
        form = await request.form(max_files=1, max_fields=MAX_FIELDS)
    except HTTPException as exc:
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            raise too_many_files() from None
        raise
    try:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        texts = [k for k, v in form.multi_items() if not isinstance(v, UploadFile)]
        check_parts([k for k, _ in files], texts)
        data = await files[0][1].read()
    finally:
        await form.close()
    check_image_bytes(data)
    return data


async def predict(request: Request) -> JSONResponse:
    t_received = time.time()
    image = await _read_image(request)
    job_id = new_job_id()
    t_enqueued = time.time()
    payload = encode_job(Job(job_id, t_enqueued, t_enqueued + settings.job_timeout, image))
    del image
    r = state.redis
    async with r.pipeline(transaction=True) as pipe:
        queue_job(pipe, keys, settings, job_id, payload)
        await pipe.execute()
    popped = await r.blpop([keys.result(job_id)], timeout=blocking_timeout(settings, t_enqueued))
    result: dict[str, Any] | None = None
    if popped is None:
        async with r.pipeline(transaction=True) as pipe:
            abandon_job(pipe, keys, job_id, payload)
            await pipe.execute()
    else:
        result = decode_result(popped[1])
        if result.get("status") == 200:  # remembered for /feedback before the client has it
            await r.set(keys.pred(job_id), prediction_value(result), ex=settings.feedback_ttl)
    status, body, record = answer(job_id, result, t_received, t_enqueued)
    timings.append(record)
    return JSONResponse(body, status)


async def feedback(request: Request) -> JSONResponse:
    job_id, correct = parse_feedback(await request.body(), request.headers.get("content-type"))
    stored = await state.feedback(keys=[keys.pred(job_id), keys.feedback(job_id)],
                                  args=[feedback_value(correct), settings.feedback_ttl])
    if not stored:
        raise unknown_prediction(job_id)
    return JSONResponse({"id": job_id, "stored": True})


# ---------------------------------------------------------------------------------------------
# Errors: every one as {"error": ...}; input problems are 4xx, only real faults are 500.


async def on_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.message)


async def on_http(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, str(exc.detail), exc.headers)


async def on_validation(request: Request, exc: Exception) -> Response:
    return error_response(400, f"invalid request: {exc}")


async def on_redis(request: Request, exc: Exception) -> Response:
    return error_response(503, redis_unavailable(exc, settings.redis_max_connections))


async def on_fault(request: Request, exc: Exception) -> Response:
    return error_response(500, f"internal error: {type(exc).__name__}")


app = FastAPI(
    title="infbench queue API (FastAPI)",
    lifespan=lifespan,
    exception_handlers={ApiError: on_api_error, HTTPException: on_http,
                        RequestValidationError: on_validation, RedisError: on_redis,
                        Exception: on_fault},
    openapi_url=None,
    docs_url=None,
    redoc_url=None,
)
app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
app.add_api_route("/", index, methods=["GET"], response_class=HTMLResponse)
app.add_api_route("/health", health, methods=["GET"])
app.add_api_route("/predict", predict, methods=["POST"])
app.add_api_route("/feedback", feedback, methods=["POST"])
