"""The scoring API, sync build: Flask on Gunicorn sync workers.

    GET  /health   200 {"status": "ok", "pid", "redis": true}  (503, "redis": false, if not)
    POST /score    JSON {"entity_id": int | str}
                   200 {"entity_id", "score", "scores": {"a", "b"}, "timing": {...}}
                   404 unknown entity, 400 bad body, 413 body too large,
                   502 an upstream (Redis, a model API) failed, 504 one did not answer in time;
                   all errors {"error": "<one line>"}

Per request: GET the features from Redis (redis-py), then POST them to model_a, THEN to
model_b, over one requests.Session per worker process (pooled connections; Gunicorn's sync
workers themselves close every connection, so the pool only helps towards async upstreams).
Configured by the INFBENCH_* variables in servers.scoring.common's docstring.

Run: python -m gunicorn -k sync -w W -b 127.0.0.1:PORT servers.scoring.scoring_flask:app
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis
import requests
from flask import Flask, Response, jsonify, request

from servers.scoring.common import (
    HEALTH_PATH,
    SCORE_PATH,
    ScoreTiming,
    check_entity_id,
    feature_key,
    install_flask_errors,
    load_scoring_settings,
    model_answer,
    parse_json_object,
    record,
    score_answer,
    scoring_health,
    stored_features,
    upstream_failed,
    upstream_timeout,
)
from servers.shared.bodylimit import BodyLimitWSGI
from servers.shared.errors import ApiError, error_body
from servers.shared.profiling import ProfileWSGI, load_profile_settings

settings = load_scoring_settings()
profile_settings = load_profile_settings()  # None unless INFBENCH_PROFILER is set
T0_KEY = "infbench.t0"


@dataclass
class Clients:
    """One worker process's pooled clients (made after the fork: sockets are not shared)."""

    pid: int
    http: requests.Session
    store: redis.Redis


_clients: Clients | None = None


def clients() -> Clients:
    global _clients
    if _clients is None or _clients.pid != os.getpid():
        t = settings.upstream_timeout
        store = redis.Redis.from_url(settings.features_url, socket_timeout=t,
                                     socket_connect_timeout=t)
        _clients = Clients(os.getpid(), requests.Session(), store)
    return _clients


class StartClock:
    """WSGI wrapper: the request's clock starts before Flask routes and parses it."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]]) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ[T0_KEY] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


def request_timing() -> ScoreTiming:
    return ScoreTiming(request.environ.get(T0_KEY) or time.perf_counter())


def log_error(status: int) -> None:
    """Errors answered outside the endpoint (413, a 500) still get a timing line."""
    if request.path == SCORE_PATH and request.method == "POST":
        record(settings, request_timing(), status)


app = Flask(__name__)
app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
# A chunked body over the limit is a 413 too, and whatever the answer, the rest of a body
# still coming is drained first (servers.shared.bodylimit).
app.wsgi_app = BodyLimitWSGI(app.wsgi_app, settings.max_body_bytes)  # type: ignore[method-assign]
app.wsgi_app = StartClock(app.wsgi_app)  # type: ignore[method-assign]
if profile_settings is not None:  # outermost: the profile covers the whole request
    app.wsgi_app = ProfileWSGI(app.wsgi_app, profile_settings)  # type: ignore[method-assign]
install_flask_errors(app, on_error=log_error)


def read_features(timing: ScoreTiming, entity_id: int | str) -> list[float]:
    key = feature_key(entity_id)
    started = time.perf_counter()
    try:
        blob = clients().store.get(key)
    except redis.TimeoutError:
        raise upstream_timeout("feature store", settings.upstream_timeout) from None
    except redis.RedisError as exc:
        raise upstream_failed("feature store", exc) from None
    finally:
        timing.features = time.perf_counter() - started
    return stored_features(blob, entity_id, key)


def call_model(name: str, url: str, features: list[float]) -> tuple[float, float, float | None]:
    """(score, round-trip seconds, the model's own elapsed_ms), or ApiError(502/504)."""
    t = settings.upstream_timeout
    started = time.perf_counter()
    try:
        r = clients().http.post(f"{url}/predict", json={"features": features}, timeout=(t, t))
    except requests.Timeout:
        raise upstream_timeout(name, t) from None
    except requests.RequestException as exc:
        raise upstream_failed(name, exc) from None
    elapsed = time.perf_counter() - started
    score, server_ms = model_answer(name, r.status_code, r.content)
    return score, elapsed, server_ms


def failed(timing: ScoreTiming, exc: ApiError) -> tuple[Response, int]:
    record(settings, timing, exc.status)
    return jsonify(error_body(exc.message)), exc.status


@app.get(HEALTH_PATH)
def health() -> tuple[Response, int]:
    try:
        ok, error = bool(clients().store.ping()), None
    except redis.RedisError as exc:
        ok, error = False, str(exc)
    status, body = scoring_health(ok, error)
    return jsonify(body), status


@app.post(SCORE_PATH)
def score() -> tuple[Response, int]:
    timing = request_timing()
    try:
        data = parse_json_object(request.get_data(cache=False), request.mimetype)
        entity_id = check_entity_id(data)
        features = read_features(timing, entity_id)
        models_started = time.perf_counter()
        try:
            a, timing.model_a, timing.model_a_server_ms = call_model(
                "model_a", settings.model_a_url, features)
            b, timing.model_b, timing.model_b_server_ms = call_model(
                "model_b", settings.model_b_url, features)
        finally:
            timing.models = time.perf_counter() - models_started
    except ApiError as exc:
        return failed(timing, exc)
    fields = record(settings, timing, 200)
    return jsonify(score_answer(entity_id, a, b, fields)), 200
