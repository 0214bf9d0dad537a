"""What the queue study's two APIs and its model worker share: settings, keys, encodings, checks.

The study: an HTTP API (FastAPI or Flask) pushes each image onto a Redis list; model workers
pop batches, run the model once per batch and push each job's result to a per-job key that
the API is blocked on. This module holds every fact that more than one of those processes must
agree on, so that they cannot drift apart. It imports neither a web framework nor the model
(numpy, PIL, TensorFlow): the APIs stay as lean as the services teams actually run.

Redis keys, all under the prefix P = INFBENCH_QUEUE_KEY (default "infbench"):

    P:queue          list    jobs, oldest first: API RPUSHes, workers BLMPOP ... LEFT COUNT n
    P:job:<id>       string  "1" while the API still waits for <id> (EX job timeout + 10 s);
                             the worker delivers a result only if it can delete this key
    P:result:<id>    list    at most one result, pushed by the worker (EX INFBENCH_RESULT_TTL);
                             the API BLPOPs it, which also deletes the emptied key
    P:pred:<id>      string  the prediction the API issued (EX INFBENCH_FEEDBACK_TTL): /feedback
                             accepts only ids that have one
    P:feedback:<id>  string  the feedback JSON (EX INFBENCH_FEEDBACK_TTL); a repeat overwrites

A job on P:queue is `<header JSON>\\n<image bytes>`, the header {"id", "t_enqueued",
"deadline"}: JSON escapes newlines, so the first newline ends the header, and the image travels
as raw bytes (no base64: a third larger and a pass over every byte on both sides). A result is
one JSON object: {"id", "status" (200, 400 bad image, 500 model fault), "class", "score" or
"error", "t_enqueued", "t_dequeued", "t_model_start", "t_model_done", "batch_size",
"model_batch", "worker_pid"}.

Nothing of a job outlives it: the API's BLPOP empties (and so deletes) the result list; after a
timeout the API removes the job, its liveness key and any result in one MULTI, and a worker
delivers only while the liveness key exists. What stays, on purpose, is P:pred:<id> and
P:feedback:<id> for INFBENCH_FEEDBACK_TTL: about 250 bytes of Redis memory per answered
request, so Redis grows for the first TTL of a run and then levels off. Lower the TTL for runs
that look at Redis memory.

Timings: with INFBENCH_TIMING_DIR set, each API process appends one JSON line per /predict that
reached the queue (answered 200, a worker's 400/500, or 504) to <dir>/timings-<pid>.jsonl:
{"id", "t_received", "t_enqueued", "t_dequeued", "t_model_start", "t_model_done",
"t_responded", "status", "batch_size", "worker_pid"}, Unix times (the worker's are null for a
504, the model's for a bad image). Requests refused before the queue (bad form, 413, 415) are
not written: they have no queue or model time to split, and Locust counts them. The file is
servers.shared.timings' (buffered, written about once a second and at exit; its failure rule).

Settings come from the environment, read once at start; a bad value stops the process with a
one-line message that names the variable:

    INFBENCH_REDIS_URL        (required) e.g. redis://127.0.0.1:6390/0
    INFBENCH_QUEUE_KEY        key prefix (default "infbench"), so two studies never share keys
    INFBENCH_JOB_TIMEOUT      API: seconds a request waits for its result (default 30)
    INFBENCH_RESULT_TTL       seconds a result list lives if no API pops it (default 60)
    INFBENCH_FEEDBACK_TTL     seconds a prediction id and its feedback live (default 3600)
    INFBENCH_MAX_BODY_BYTES   API: request body limit (default 16 MiB)
    INFBENCH_TIMING_DIR       API: folder for timings-<pid>.jsonl (unset: no timing file)
    INFBENCH_REDIS_MAX_CONNECTIONS  API: Redis connections per process (default 1000; each
                              request waiting for its result holds one); when all are in use,
                              a request is a 503 that names the pool
    INFBENCH_MODEL_PATH       worker: (required) .keras/.h5 file or SavedModel directory
    INFBENCH_QUEUE_BATCH      worker: most jobs popped (and predicted) at once (default 1)
    INFBENCH_CALL             worker: predict (default) | predict_on_batch | call
    INFBENCH_INPUT_SIZE       worker: square input size, for models that do not declare one
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.connection import parse_url
from redis.exceptions import MaxConnectionsError

from servers.shared.errors import ApiError, error_body
from servers.shared.settings import (
    CALL_STYLES,
    DEFAULT_REDIS_MAX_CONNECTIONS,
    SettingsError,
    env_choice,
    env_device,
    env_dir,
    env_float,
    env_int,
    env_path,
    env_redis_max_connections,
    redis_pool_exhausted,
)

FIELD = "images"
DEFAULT_PREFIX = "infbench"
DEFAULT_JOB_TIMEOUT_S = 30.0
DEFAULT_RESULT_TTL_S = 60
DEFAULT_FEEDBACK_TTL_S = 3600
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024
DEFAULT_BATCH = 1
# A job's liveness key outlives the API's wait by this much, so it never expires while the API
# still waits; if the API dies instead, the key still goes away on its own.
JOB_KEY_SLACK_S = 10
# How much longer than its blocking wait a client socket may stay silent before we call Redis
# dead: the blocking commands' own timeouts must always fire first.
SOCKET_SLACK_S = 5.0
HEALTH_SOCKET_TIMEOUT_S = 2.0
# Longest id /feedback looks up; ours are 32 hex digits.
MAX_ID_CHARS = 128
_PREFIX_RE = re.compile(r"[A-Za-z0-9_.:{}-]{1,64}")
TIMING_FIELDS = ("t_received", "t_enqueued", "t_dequeued", "t_model_start", "t_model_done",
                 "t_responded", "status", "batch_size", "worker_pid")


# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class QueueSettings:
    """Everything the APIs and the worker read from the environment, validated."""

    redis_url: str
    prefix: str = DEFAULT_PREFIX
    job_timeout: float = DEFAULT_JOB_TIMEOUT_S
    result_ttl: int = DEFAULT_RESULT_TTL_S
    feedback_ttl: int = DEFAULT_FEEDBACK_TTL_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    timing_dir: Path | None = None
    model_path: str = ""
    batch: int = DEFAULT_BATCH
    call: str = "predict"
    input_size: int | None = None
    device: str = "cpu"  # the worker's INFBENCH_DEVICE
    # The APIs' pool; the worker pops with one connection at a time and ignores it.
    redis_max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)


def load_settings(role: str, env: Mapping[str, str] | None = None) -> QueueSettings:
    """Validate the variables `role` ("api" or "worker") needs, from `env` (default os.environ).

    Redis itself is not contacted: a service may start before Redis answers, and reports that
    in /health instead.
    """
    if role not in ("api", "worker"):
        raise ValueError(f"unknown role {role!r}")
    env = os.environ if env is None else env
    url = env.get("INFBENCH_REDIS_URL", "").strip()
    if not url:
        raise SettingsError("INFBENCH_REDIS_URL: required (e.g. redis://127.0.0.1:6379/0)")
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise SettingsError(f"INFBENCH_REDIS_URL: {exc} (got {url!r})") from None
    prefix = env.get("INFBENCH_QUEUE_KEY", "").strip() or DEFAULT_PREFIX
    if not _PREFIX_RE.fullmatch(prefix):
        raise SettingsError("INFBENCH_QUEUE_KEY: expected 1-64 of letters, digits and "
                            f"_ . : - {{ }}, got {prefix!r}")
    timing_dir: Path | None = None
    model_path = ""
    call = "predict"
    device = "cpu"
    max_connections = DEFAULT_REDIS_MAX_CONNECTIONS
    if role == "api":
        timing_dir = env_dir(env, "INFBENCH_TIMING_DIR")
        max_connections = env_redis_max_connections(env)
    else:
        model_path = env_path(env, "INFBENCH_MODEL_PATH",
                              "for the worker (a .keras/.h5 file, SavedModel dir, .onnx or .pt)")
        call = env_choice(env, "INFBENCH_CALL", CALL_STYLES, "predict")
        device = env_device(env)
    return QueueSettings(
        redis_url=url,
        prefix=prefix,
        job_timeout=env_float(env, "INFBENCH_JOB_TIMEOUT", DEFAULT_JOB_TIMEOUT_S,
                              "a positive number of seconds"),
        result_ttl=env_int(env, "INFBENCH_RESULT_TTL", DEFAULT_RESULT_TTL_S),
        feedback_ttl=env_int(env, "INFBENCH_FEEDBACK_TTL", DEFAULT_FEEDBACK_TTL_S),
        max_body_bytes=env_int(env, "INFBENCH_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        timing_dir=timing_dir,
        model_path=model_path,
        batch=env_int(env, "INFBENCH_QUEUE_BATCH", DEFAULT_BATCH),
        call=call,
        input_size=env_int(env, "INFBENCH_INPUT_SIZE"),
        device=device,
        redis_max_connections=max_connections,
    )


# Gunicorn's "App failed to load" worker exit code: Gunicorn then stops, where any other code
# would make it restart the worker (and fail again) forever.
GUNICORN_APP_LOAD_ERROR = 4


def settings_or_exit(role: str, program: str, exit_code: int = 1) -> QueueSettings:
    """load_settings, or the one-line error on stderr and exit (status 1: a config error)."""
    try:
        return load_settings(role)
    except SettingsError as exc:
        print(f"{program}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(exit_code) from None


# ---------------------------------------------------------------------------------------------
# Keys and encodings


@dataclass(frozen=True)
class Keys:
    """The Redis key names under one prefix (see the module docstring)."""

    prefix: str

    @property
    def queue(self) -> str:
        return f"{self.prefix}:queue"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def result(self, job_id: str) -> str:
        return f"{self.prefix}:result:{job_id}"

    def pred(self, job_id: str) -> str:
        return f"{self.prefix}:pred:{job_id}"

    def feedback(self, job_id: str) -> str:
        return f"{self.prefix}:feedback:{job_id}"


def new_job_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Job:
    """One queued image, as the worker sees it."""

    id: str
    t_enqueued: float
    deadline: float  # unix time after which the API no longer waits for the result
    image: bytes


def encode_job(job: Job) -> bytes:
    header = {"id": job.id, "t_enqueued": job.t_enqueued, "deadline": job.deadline}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + job.image


def decode_job(raw: bytes) -> Job:
    """The job, or ValueError for bytes that are not one (someone else's list, a bad prefix)."""
    head, sep, image = raw.partition(b"\n")
    if not sep:
        raise ValueError("no header line")
    try:
        header = json.loads(head)
        return Job(str(header["id"]), float(header["t_enqueued"]), float(header["deadline"]),
                   image)
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"bad header: {type(exc).__name__}") from None


def encode_result(result: Mapping[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":")).encode()


def decode_result(raw: bytes | str) -> dict[str, Any]:
    value = json.loads(raw)
    if not isinstance(value, dict):
        raise ValueError("result is not a JSON object")
    return value


def job_key_ttl(settings: QueueSettings) -> int:
    return math.ceil(settings.job_timeout) + JOB_KEY_SLACK_S


# The worker's delivery, atomic: the result is pushed only if the API still waits, which the
# API's cleanup after a timeout (below) makes false in the same atomic step as it deletes any
# result. So a late result is never left behind, and no polling is needed to find out.
DELIVER_LUA = """
if redis.call('DEL', KEYS[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

# /feedback in one atomic step: stored only for an id the API issued (P:pred:<id> exists).
FEEDBACK_LUA = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[2])
return 1
"""


def queue_job(pipe: Any, keys: Keys, settings: QueueSettings, job_id: str,
              payload: bytes) -> None:
    """Buffer the enqueue on a transactional pipeline (sync or asyncio; the caller executes).

    Liveness key and job go in one MULTI, so a worker never sees a job whose key is missing.
    """
    pipe.set(keys.job(job_id), b"1", ex=job_key_ttl(settings))
    pipe.rpush(keys.queue, payload)


def abandon_job(pipe: Any, keys: Keys, job_id: str, payload: bytes) -> None:
    """Buffer the cleanup after a timeout on a transactional pipeline (the caller executes).

    Deleting the liveness key stops any later delivery; LREM takes the job off the queue if no
    worker has popped it yet (it scans from the head, where a job that waited this long
    usually is); the result key goes in case a worker delivered between our timeout and now.
    """
    pipe.delete(keys.job(job_id))
    pipe.lrem(keys.queue, 1, payload)
    pipe.delete(keys.result(job_id))


def blocking_timeout(settings: QueueSettings, t_enqueued: float) -> float:
    """Seconds left of the job's wait, for BLPOP (never 0: to Redis that means forever)."""
    left = t_enqueued + settings.job_timeout - time.time()
    return max(round(left, 3), 0.001)


# ---------------------------------------------------------------------------------------------
# Requests and answers


def check_content_type(content_type: str | None) -> None:
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        raise ApiError(415, f"unsupported content type {ctype or 'none'!r}: send "
                       f"multipart/form-data with one image file in field {FIELD!r}")


def too_many_files() -> ApiError:
    return ApiError(400, f"expected exactly one image file in field {FIELD!r}, got more")


def check_parts(file_fields: Sequence[str], text_fields: Sequence[str]) -> None:
    """Exactly one file part, in field `images`; text fields elsewhere are ignored."""
    if len(file_fields) > 1:
        raise ApiError(400, f"expected exactly one image file in field {FIELD!r}, "
                       f"got {len(file_fields)} files")
    if not file_fields:
        if FIELD in text_fields:
            raise ApiError(400, f"part {FIELD!r} is a text field, not a file")
        raise ApiError(400, f"no file in form field {FIELD!r}")
    if file_fields[0] != FIELD:
        raise ApiError(400, f"the file is in field {file_fields[0]!r}; send it in {FIELD!r}")


def unknown_prediction(job_id: str) -> ApiError:
    return ApiError(404, f"unknown prediction id {job_id!r} (never issued, or expired)")


def redis_unavailable(exc: BaseException, pool_size: int | None = None) -> str:
    """The 503's message when Redis fails a request or a health check; `pool_size`, the
    failing client's max_connections, words the case where its pool was exhausted."""
    if isinstance(exc, MaxConnectionsError) and pool_size is not None:
        return redis_pool_exhausted(pool_size)
    return f"Redis unavailable: {exc}"


def api_health(settings: QueueSettings, queue_length: int = 0,
               error: BaseException | None = None) -> tuple[int, dict[str, Any]]:
    """(status, body) of either API's /health: 200 with the queue's length, 503 on `error`."""
    if error is not None:
        return 503, {"status": "error", "error": redis_unavailable(error), "pid": os.getpid(),
                     "redis": False}
    return 200, {"status": "ok", "pid": os.getpid(), "redis": True,
                 "queue_length": queue_length, "queue": settings.keys.queue,
                 "job_timeout": settings.job_timeout, "max_body_bytes": settings.max_body_bytes}


def check_image_bytes(data: bytes) -> None:
    if not data:
        raise ApiError(400, "the image file is empty")


def parse_feedback(body: bytes, content_type: str | None) -> tuple[str, bool]:
    """(id, correct) from a /feedback body, or the ApiError it deserves."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ApiError(415, f"unsupported content type {ctype or 'none'!r}: send "
                       'application/json {"id": "<prediction id>", "correct": true|false}')
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(doc, dict):
        raise ApiError(400, 'expected a JSON object {"id": ..., "correct": ...}')
    unknown = sorted(set(doc) - {"id", "correct"})
    if unknown:
        raise ApiError(400, f"unknown field(s): {', '.join(unknown)}")
    job_id = doc.get("id")
    if not isinstance(job_id, str) or not 0 < len(job_id) <= MAX_ID_CHARS:
        raise ApiError(400, f'"id" must be a prediction id (a string of 1-{MAX_ID_CHARS} '
                       "characters)")
    correct = doc.get("correct")
    if not isinstance(correct, bool):
        raise ApiError(400, '"correct" must be true or false')
    return job_id, correct


def feedback_value(correct: bool) -> bytes:
    return json.dumps({"correct": correct, "t": time.time()}).encode()


def prediction_value(result: Mapping[str, Any]) -> bytes:
    return json.dumps({"class": result.get("class"), "score": result.get("score"),
                       "t": time.time()}).encode()


def timing_record(job_id: str, status: int, t_received: float, t_enqueued: float,
                  t_responded: float, result: Mapping[str, Any] | None) -> dict[str, Any]:
    """One request's timeline: ours, plus the worker's stamps when a result came back."""
    r = result or {}
    return {"id": job_id, "t_received": t_received, "t_enqueued": t_enqueued,
            "t_dequeued": r.get("t_dequeued"), "t_model_start": r.get("t_model_start"),
            "t_model_done": r.get("t_model_done"), "t_responded": t_responded,
            "status": status, "batch_size": r.get("batch_size"),
            "worker_pid": r.get("worker_pid")}


def _ms(start: Any, end: Any) -> float | None:
    if isinstance(start, int | float) and isinstance(end, int | float):
        return round((end - start) * 1000, 3)
    return None


def answer(job_id: str, result: Mapping[str, Any] | None, t_received: float,
           t_enqueued: float) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """(status, response body, timing record) for a job's result, or for a timeout (None)."""
    body: dict[str, Any]
    if result is None:
        status, body = 504, error_body("no result within the job timeout (the model workers "
                                       "are busy or not running)")
    elif result.get("status") == 200:
        status = 200
        prediction = {"class": result.get("class"), "score": result.get("score")}
        body = {"id": job_id, "prediction": prediction}
    else:
        status = int(result.get("status") or 500)
        body = error_body(str(result.get("error") or "the worker failed"))
    t_responded = time.time()
    record = timing_record(job_id, status, t_received, t_enqueued, t_responded, result)
    if status == 200:
        timing = {k: v for k, v in record.items() if k not in ("id", "status")}
        timing.update(
            model_batch=(result or {}).get("model_batch"),
            queue_wait_ms=_ms(record["t_enqueued"], record["t_dequeued"]),
            model_ms=_ms(record["t_model_start"], record["t_model_done"]),
            total_ms=_ms(t_received, t_responded),
        )
        body["timing"] = timing
    return status, body, record


# ---------------------------------------------------------------------------------------------
# Pages


INDEX_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>infbench queue API ({framework})</title>
<style>body{{font-family:sans-serif;max-width:40em;margin:2em auto;line-height:1.4}}
code{{background:#eee;padding:0 .2em}}</style></head>
<body><h1>infbench queue API <small>({framework})</small></h1>
<p>Images go onto a Redis queue (<code>{queue}</code>) and model workers answer them.</p>
<form action="/predict" method="post" enctype="multipart/form-data">
<input type="file" name="images" accept="image/*"> <button>Predict</button></form>
<ul><li><code>POST /predict</code>: multipart/form-data, one image file in field
<code>images</code></li>
<li><code>POST /feedback</code>: JSON <code>{{"id": "&lt;prediction id&gt;", "correct":
true}}</code></li>
<li><code>GET /health</code></li></ul></body></html>
"""


def index_html(framework: str, keys: Keys) -> str:
    return INDEX_HTML.format(framework=framework, queue=keys.queue)
