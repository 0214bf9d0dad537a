"""The queue study's API on Flask (sync, redis-py): the same contract as queue_api_fastapi.

Run: python -m gunicorn -w 1 -k sync -b 127.0.0.1:8000 servers.queue.api_flask:app
 (or -k gthread --threads N). Settings: INFBENCH_REDIS_URL and the rest in
servers.queue.common (keys, encodings, limits). The endpoints, errors, the BLPOP wait on a
per-job result list and the cleanup after a 504 are those described in
servers.queue.api_fastapi; only the framework idiom differs.

With `-k sync` each Gunicorn worker serves one request at a time and holds it through the
BLPOP, so Gunicorn's --timeout (default 30 s) must exceed INFBENCH_JOB_TIMEOUT, or Gunicorn
kills a worker whose request waits for a slow queue. gthread workers heartbeat from their main
thread, so they are not affected.
"""

from __future__ import annotations

import time
from typing import Any

import redis
from flask import Flask, Response, jsonify, request
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry
from werkzeug.exceptions import HTTPException

from servers.queue.common import (
    FEEDBACK_LUA,
    GUNICORN_APP_LOAD_ERROR,
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
    unknown_prediction,
)
from servers.shared.bodylimit import BodyLimitWSGI, too_large_message
from servers.shared.errors import ApiError, error_body
from servers.shared.timings import TimingsWriter

PROGRAM = "servers.queue.api_flask"
# Exit 4 on a bad setting, so that Gunicorn stops ("App failed to load", its own exit status 4)
# instead of booting a new worker every second forever.
settings = settings_or_exit("api", PROGRAM, GUNICORN_APP_LOAD_ERROR)
keys = settings.keys
timings = TimingsWriter(settings.timing_dir)


def _client(socket_timeout: float) -> redis.Redis:
    # No retries inside redis-py: a retried RPUSH could queue a job twice, a retried BLPOP
    # would wait past the job timeout. A failure is a 503 for this request instead.
    return redis.Redis.from_url(
        settings.redis_url, socket_timeout=socket_timeout,
        socket_connect_timeout=HEALTH_SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0),
        max_connections=settings.redis_max_connections)


# Made at import, i.e. in each Gunicorn worker (redis-py's pool also resets itself after a
# fork, should the app be pre-loaded). Thread-safe, for gthread workers.
store = _client(settings.job_timeout + SOCKET_SLACK_S)
health_store = _client(HEALTH_SOCKET_TIMEOUT_S)
feedback_script = store.register_script(FEEDBACK_LUA)

app = Flask(__name__)
app.config.update(
    MAX_CONTENT_LENGTH=settings.max_body_bytes,
    # One file plus a few text fields is all /predict takes; Werkzeug's default is 1000 parts.
    MAX_FORM_PARTS=16,
)
# A chunked body over the limit is a 413 too, and whatever the answer, the rest of a body
# still coming is drained first (servers.shared.bodylimit).
app.wsgi_app = BodyLimitWSGI(app.wsgi_app, settings.max_body_bytes)  # type: ignore[method-assign]


def _json(body: dict[str, Any], status: int) -> Response:
    response = jsonify(body)
    response.status_code = status
    return response


@app.get("/")
def index() -> Response:
    return Response(index_html("Flask", keys), mimetype="text/html")


@app.get("/health")
def health() -> Response:
    try:
        health_store.ping()
        status, body = api_health(settings, health_store.llen(keys.queue))
    except RedisError as exc:
        status, body = api_health(settings, error=exc)
    return _json(body, status)


def _read_image() -> bytes:
    """The one uploaded image's bytes, or the ApiError (or Werkzeug's 413/400) it deserves."""
    check_content_type(request.content_type)
    files = request.files  # parses the body: 413 over MAX_CONTENT_LENGTH, 400 if malformed
    file_fields = [field for field, _ in files.items(multi=True)]
    check_parts(file_fields, list(request.form.keys()))
    data: bytes = files[file_fields[0]].read()
    check_image_bytes(data)
    return data


@app.post("/predict")
def predict() -> Response:
    t_received = time.time()
    image = _read_image()
    job_id = new_job_id()
    t_enqueued = time.time()
    payload = encode_job(Job(job_id, t_enqueued, t_enqueued + settings.job_timeout, image))
    del image
    with store.pipeline(transaction=True) as pipe:
        queue_job(pipe, keys, settings, job_id, payload)
        pipe.execute()
    popped = store.blpop([keys.result(job_id)], timeout=blocking_timeout(settings, t_enqueued))
    result: dict[str, Any] | None = None
    if popped is None:
        with store.pipeline(transaction=True) as pipe:
            abandon_job(pipe, keys, job_id, payload)
            pipe.execute()
    else:
        result = decode_result(popped[1])
        if result.get("status") == 200:  # remembered for /feedback before the client has it
            store.set(keys.pred(job_id), prediction_value(result), ex=settings.feedback_ttl)
    status, body, record = answer(job_id, result, t_received, t_enqueued)
    timings.append(record)
    return _json(body, status)


@app.post("/feedback")
def feedback() -> Response:
    body = request.get_data(cache=False)  # 413 over MAX_CONTENT_LENGTH
    job_id, correct = parse_feedback(body, request.content_type)
    stored = feedback_script(keys=[keys.pred(job_id), keys.feedback(job_id)],
                             args=[feedback_value(correct), settings.feedback_ttl])
    if not stored:
        raise unknown_prediction(job_id)
    return _json({"id": job_id, "stored": True}, 200)


# ---------------------------------------------------------------------------------------------
# Errors: every one as {"error": ...}; input problems are 4xx, only real faults are 500.


@app.errorhandler(ApiError)
def on_api_error(exc: ApiError) -> Response:
    return _json(error_body(exc.message), exc.status)


@app.errorhandler(HTTPException)
def on_http(exc: HTTPException) -> Response:
    status = exc.code or 500
    if status == 413:
        message = too_large_message(settings.max_body_bytes)
    else:
        message = exc.description or exc.name
    response = _json(error_body(message), status)
    if status == 405 and exc.get_response().headers.get("Allow"):
        response.headers["Allow"] = exc.get_response().headers["Allow"]
    return response


@app.errorhandler(RedisError)
def on_redis(exc: RedisError) -> Response:
    return _json(error_body(redis_unavailable(exc, settings.redis_max_connections)), 503)


@app.errorhandler(Exception)
def on_fault(exc: Exception) -> Response:
    app.logger.exception("unhandled error")
    return _json(error_body(f"internal error: {type(exc).__name__}"), 500)
