"""What the scoring study's services share, so the sync and async builds differ only in idiom.

The study: a scoring API reads an entity's features from Redis (the feature store) and asks two
model APIs for a score each. The sync build (Flask on Gunicorn sync workers) calls the models
one after the other; the async build (FastAPI on Uvicorn) awaits both at once. Everything that
must be identical between the builds lives here: the Redis key layout, input rules and their
messages, settings, the model APIs' scoring, the timing record and the worker-count rule.
Framework modules (flask, fastapi, keras) are imported only inside the functions that need
them, so each build imports only its own framework.

Redis layout (written by servers.scoring.seed_features):
    features:<id>             the entity's vector, packed little-endian float32 (a string value)
    infbench:features:meta    a hash: entities, dim, seed, dtype, prefix, written_at
A packed blob rather than a hash of fields because the scoring API always needs the whole
vector: one GET of 4*dim bytes, no per-field text to parse, floats byte-exact; the dimension
is the blob's length / 4. The meta key is outside the `features:` prefix so no entity id can
collide with it.

Environment (read once at import by the apps; a bad value stops the server at startup with a
message naming the variable):
  scoring API
    INFBENCH_FEATURES_URL      (required) redis://host:port/db of the feature store
    INFBENCH_MODEL_A_URL       (required) base URL of model_a, e.g. http://127.0.0.1:8001
    INFBENCH_MODEL_B_URL       (required) base URL of model_b
    INFBENCH_UPSTREAM_TIMEOUT  seconds, each of Redis and the model calls (default 5)
    INFBENCH_UPSTREAM_POOL     async build: httpx connections (and keep-alives) per process
                               (default 100)
    INFBENCH_REDIS_MAX_CONNECTIONS  async build: feature-store connections per process (default
                               1000); when all are in use, a /score is a 503 naming the pool
    INFBENCH_TIMING_DIR        write one JSON line per /score to <dir>/timings-<pid>.jsonl
                               (servers.shared.timings)
    INFBENCH_TIMING_FLUSH_S    how often the timing lines are written (default 1; also at exit)
    INFBENCH_MAX_BODY_BYTES    request body limit (default 64 KiB)
    INFBENCH_PROFILER          pyinstrument | yappi: profile each POST /score into
    INFBENCH_PROFILE_DIR       this folder (servers/shared/profiling.py; off by default)
  model APIs
    INFBENCH_MODEL_API_KIND    sleep (default) | model
    INFBENCH_MODEL_NAME        the name in answers (default "model")
    INFBENCH_MODEL_SEED        seeds the sleep RNG and the sleep kind's weights (default 0)
    INFBENCH_MODEL_SLEEP_MS    sleep kind: "MIN-MAX" milliseconds, uniform (default 40-50)
    INFBENCH_MODEL_PATH        model kind: (required) the Keras model file
    INFBENCH_CALL              model kind: predict_on_batch (default) | predict | call
    INFBENCH_MAX_FEATURES      longest feature vector accepted (default 4096)
    INFBENCH_MAX_BODY_BYTES    request body limit (default 1 MiB)
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from servers.shared.errors import ApiError, error_body, error_response, one_line
from servers.shared.settings import (
    CALL_STYLES,
    DEFAULT_REDIS_MAX_CONNECTIONS,
    SettingsError,
    env_choice,
    env_dir,
    env_float,
    env_int,
    env_path,
    env_redis_max_connections,
    redis_pool_exhausted,
)
from servers.shared.timings import TimingsWriter

FEATURES_PREFIX = "features:"
META_KEY = "infbench:features:meta"
FEATURE_DTYPE = "<f4"  # little-endian float32, whatever the machine's byte order

HEALTH_PATH = "/health"
SCORE_PATH = "/score"
PREDICT_PATH = "/predict"

ENTITY_ID_MAX_CHARS = 128
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
DEFAULT_MAX_FEATURES = 4096
DEFAULT_SCORING_BODY_BYTES = 64 * 1024
DEFAULT_MODEL_BODY_BYTES = 1024 * 1024
DEFAULT_UPSTREAM_TIMEOUT_S = 5.0
DEFAULT_UPSTREAM_POOL = 100
DEFAULT_SLEEP_MS = (40.0, 50.0)
MODEL_API_KINDS = ("sleep", "model")
# Not the image servers' `predict`: for a batch of one, Keras' model.predict builds a tf.data
# pipeline per call that costs several times the forward pass itself (hundreds of ms against
# ~10 ms for the small model here), so the model kind would measure Keras, not inference.
DEFAULT_MODEL_CALL = "predict_on_batch"

# The one-line messages both builds give for the same bad input.
MSG_NOT_JSON = "body is not valid JSON"
MSG_NOT_OBJECT = "body must be a JSON object"
MSG_NO_ENTITY = "missing field 'entity_id'"
MSG_ENTITY_TYPE = (f"entity_id must be an integer ({INT64_MIN}..{INT64_MAX}) or a string of "
                   f"1-{ENTITY_ID_MAX_CHARS} characters")
MSG_NO_FEATURES = "missing field 'features'"


# ---------------------------------------------------------------------------------------------
# Worker counts


def usable_cores() -> int:
    """Cores this process may run on (the affinity mask, which a container's cpuset narrows)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def workers(cores: int | None = None) -> int:
    """THE worker rule of the study, for both builds: one worker process per usable core.

    One rule for both so that a difference between the builds is the architecture, not the
    process count: a Gunicorn sync worker serves one request at a time, a Uvicorn worker many,
    and that is the thing measured. A hypothesis that wants the sync build's usual sizing
    instead uses `gunicorn_workers`, and can give the same count to the async build to isolate
    the count from the architecture.
    """
    return max(1, usable_cores() if cores is None else cores)


def gunicorn_workers(cores: int | None = None) -> int:
    """Gunicorn's documented starting point for sync workers, 2 x cores + 1 (an alternative)."""
    return 2 * workers(cores) + 1


# ---------------------------------------------------------------------------------------------
# The feature store's layout


def feature_key(entity_id: int | str) -> str:
    """The Redis key of an entity: the int 7 and the string "7" name the same entity."""
    return f"{FEATURES_PREFIX}{entity_id}"


def feature_matrix(entities: int, dim: int, seed: int) -> np.ndarray:
    """Every entity's vector, row i for entity i: standard normal float32 from `seed`."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((entities, dim), dtype=np.float32).astype(FEATURE_DTYPE)


def encode_features(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=FEATURE_DTYPE).tobytes()


def decode_features(blob: bytes, key: str) -> list[float]:
    """The stored vector as floats; a value that is not one is the store's fault (502)."""
    if not blob or len(blob) % 4:
        raise ApiError(502, f"feature store: {key} holds {len(blob)} bytes, "
                       "not a packed float32 vector")
    return [float(x) for x in np.frombuffer(blob, dtype=FEATURE_DTYPE)]


def stored_features(blob: object, entity_id: int | str, key: str) -> list[float]:
    """The vector from the store's answer to GET `key`: None means no such entity (404)."""
    if blob is None:
        raise ApiError(404, f"no features for entity {entity_id!r}")
    assert isinstance(blob, bytes)
    return decode_features(blob, key)


def safe_url(url: str) -> str:
    """The URL without a password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


# ---------------------------------------------------------------------------------------------
# Input rules (the Flask builds call these; the FastAPI builds express the same rules as
# pydantic types built from the same constants, and word their errors with the same messages)


def parse_json_object(raw: bytes, mimetype: str) -> dict[str, Any]:
    """A request body that must be a JSON object, or ApiError(400) saying what is wrong."""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise ApiError(400, f"send JSON (Content-Type: application/json), not {mimetype or 'none'}")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError(400, MSG_NOT_JSON) from None
    if not isinstance(data, dict):
        raise ApiError(400, MSG_NOT_OBJECT)
    return data


def check_entity_id(data: Mapping[str, Any]) -> int | str:
    """The entity_id of a /score body: a 64-bit int (not a bool) or a short non-empty string."""
    if "entity_id" not in data:
        raise ApiError(400, MSG_NO_ENTITY)
    value = data["entity_id"]
    if type(value) is int and INT64_MIN <= value <= INT64_MAX:
        return value
    if isinstance(value, str) and 1 <= len(value) <= ENTITY_ID_MAX_CHARS:
        return value
    raise ApiError(400, MSG_ENTITY_TYPE)


def features_length_message(length: int, max_features: int) -> str:
    return f"features: expected 1 to {max_features} numbers, got {length}"


def check_features(data: Mapping[str, Any], max_features: int) -> list[float]:
    """The features of a /predict body: 1..max_features finite numbers (bools are not)."""
    if "features" not in data:
        raise ApiError(400, MSG_NO_FEATURES)
    values = data["features"]
    if not isinstance(values, list):
        raise ApiError(400, "features: Input should be a valid list")
    if not 1 <= len(values) <= max_features:
        raise ApiError(400, features_length_message(len(values), max_features))
    out = []
    for i, v in enumerate(values):
        if type(v) not in (int, float):
            raise ApiError(400, f"features.{i}: Input should be a valid number")
        f = float(v)
        if not math.isfinite(f):
            raise ApiError(400, f"features.{i}: Input should be a finite number")
        out.append(f)
    return out


def validation_message(errors: Sequence[Mapping[str, Any]], max_features: int = 0) -> str:
    """FastAPI's validation errors as the one line the Flask build would give."""
    if not errors:
        return "invalid request"
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    kind = str(first.get("type", ""))
    if kind == "json_invalid":
        return MSG_NOT_JSON
    if loc[:1] == ["body"]:
        loc = loc[1:]
    if not loc:
        return MSG_NOT_OBJECT if kind != "missing" else "missing JSON body"
    if loc[0] == "entity_id":
        return MSG_NO_ENTITY if kind == "missing" else MSG_ENTITY_TYPE
    if loc == ["features"] and kind == "missing":
        return MSG_NO_FEATURES
    if loc == ["features"] and kind in ("too_short", "too_long"):
        value = first.get("input")
        return features_length_message(len(value) if isinstance(value, list) else 0,
                                       max_features)
    return f"{'.'.join(loc)}: {first.get('msg', 'invalid value')}"


# ---------------------------------------------------------------------------------------------
# Settings


def env_url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str:
    """A required URL with one of `schemes` (the store's and the models'; not a general rule)."""
    raw = env.get(name, "").strip()
    if not raw:
        raise SettingsError(f"{name}: required ({' or '.join(s + '://...' for s in schemes)})")
    parts = urlsplit(raw)
    if parts.scheme not in schemes or not (parts.netloc or parts.scheme == "unix"):
        raise SettingsError(f"{name}: expected a {'/'.join(schemes)} URL, got {safe_url(raw)!r}")
    return raw.rstrip("/")


@dataclass(frozen=True)
class ScoringSettings:
    features_url: str
    model_a_url: str
    model_b_url: str
    upstream_timeout: float = DEFAULT_UPSTREAM_TIMEOUT_S
    upstream_pool: int = DEFAULT_UPSTREAM_POOL
    timing_dir: Path | None = None
    timing_flush_s: float = 1.0
    max_body_bytes: int = DEFAULT_SCORING_BODY_BYTES
    redis_max_connections: int = DEFAULT_REDIS_MAX_CONNECTIONS


def load_scoring_settings(env: Mapping[str, str] | None = None) -> ScoringSettings:
    env = os.environ if env is None else env
    return ScoringSettings(
        features_url=env_url(env, "INFBENCH_FEATURES_URL", ("redis", "rediss", "unix")),
        model_a_url=env_url(env, "INFBENCH_MODEL_A_URL", ("http", "https")),
        model_b_url=env_url(env, "INFBENCH_MODEL_B_URL", ("http", "https")),
        upstream_timeout=env_float(env, "INFBENCH_UPSTREAM_TIMEOUT", DEFAULT_UPSTREAM_TIMEOUT_S),
        upstream_pool=env_int(env, "INFBENCH_UPSTREAM_POOL", DEFAULT_UPSTREAM_POOL),
        timing_dir=env_dir(env, "INFBENCH_TIMING_DIR"),
        timing_flush_s=env_float(env, "INFBENCH_TIMING_FLUSH_S", 1.0),
        max_body_bytes=env_int(env, "INFBENCH_MAX_BODY_BYTES", DEFAULT_SCORING_BODY_BYTES),
        redis_max_connections=env_redis_max_connections(env),
    )


@dataclass(frozen=True)
class ModelApiSettings:
    kind: str = "sleep"
    name: str = "model"
    seed: int = 0
    sleep_ms: tuple[float, float] = DEFAULT_SLEEP_MS
    model_path: str | None = None
    call: str = DEFAULT_MODEL_CALL
    max_features: int = DEFAULT_MAX_FEATURES
    max_body_bytes: int = DEFAULT_MODEL_BODY_BYTES


def _sleep_range(raw: str) -> tuple[float, float]:
    lo_text, sep, hi_text = raw.partition("-")
    try:
        lo, hi = float(lo_text), float(hi_text if sep else lo_text)
    except ValueError:
        lo = hi = math.nan
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo <= hi):
        raise SettingsError(f"INFBENCH_MODEL_SLEEP_MS: expected MIN-MAX milliseconds "
                            f"(0 <= MIN <= MAX), got {raw!r}")
    return lo, hi


def load_model_api_settings(env: Mapping[str, str] | None = None) -> ModelApiSettings:
    env = os.environ if env is None else env
    kind = env_choice(env, "INFBENCH_MODEL_API_KIND", MODEL_API_KINDS, "sleep")
    seed_raw = env.get("INFBENCH_MODEL_SEED", "").strip() or "0"
    try:
        seed = int(seed_raw)
    except ValueError:
        raise SettingsError(f"INFBENCH_MODEL_SEED: expected an integer, got {seed_raw!r}") from None
    call = env_choice(env, "INFBENCH_CALL", CALL_STYLES, DEFAULT_MODEL_CALL)
    if kind == "model":
        model_path: str | None = env_path(env, "INFBENCH_MODEL_PATH",
                                          "when INFBENCH_MODEL_API_KIND=model")
    else:
        model_path = env.get("INFBENCH_MODEL_PATH", "").strip() or None
    sleep_raw = env.get("INFBENCH_MODEL_SLEEP_MS", "").strip()
    return ModelApiSettings(
        kind=kind,
        name=env.get("INFBENCH_MODEL_NAME", "").strip() or "model",
        seed=seed,
        sleep_ms=_sleep_range(sleep_raw) if sleep_raw else DEFAULT_SLEEP_MS,
        model_path=model_path,
        call=call,
        max_features=env_int(env, "INFBENCH_MAX_FEATURES", DEFAULT_MAX_FEATURES),
        max_body_bytes=env_int(env, "INFBENCH_MAX_BODY_BYTES", DEFAULT_MODEL_BODY_BYTES),
    )


# ---------------------------------------------------------------------------------------------
# The model APIs' work


def sleep_weights(name: str, seed: int, length: int) -> np.ndarray:
    """The sleep kind's linear weights: fixed by (seed, name), so model_a and model_b differ."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    return rng.standard_normal(length)


def linear_score(features: Sequence[float], weights: np.ndarray) -> float:
    """A logistic regression on the features: cheap, deterministic, in (0, 1)."""
    x = np.asarray(features, dtype=np.float64)
    z = float(x @ weights[: len(x)]) / math.sqrt(len(x))
    return 1.0 / (1.0 + math.exp(-max(-500.0, min(500.0, z))))


def features_image(features: Sequence[float], size: int) -> np.ndarray:
    """A (1, size, size, 3) model input from a feature vector, deterministically.

    The vector, squashed into [-1, 1] (the image models' input range) by tanh, is repeated
    cyclically over every pixel and channel, so every feature reaches the model and the same
    features always give the same image.
    """
    squashed = np.tanh(np.asarray(features, dtype=np.float32))
    return np.resize(squashed, size * size * 3).reshape(1, size, size, 3).astype(np.float32)


def class_score(probabilities: np.ndarray, name: str) -> float:
    """The model kind's score: how much the model favours "its" class k over chance.

    k = crc32(name) mod classes, so model_a and model_b read different classes of one model;
    with p the probability of k and C the number of classes, score = C*p / (1 + C*p): 0.5 when
    the model is indifferent (p = 1/C), towards 1 as it favours k, towards 0 as it avoids it.
    """
    probs = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    ratio = len(probs) * float(probs[zlib.crc32(name.encode()) % len(probs)])
    return ratio / (1.0 + ratio)


class Scorer:
    """One model API process's scorer: the sleep kind's delay and score, or the Keras model.

    sleep: a uniform delay in INFBENCH_MODEL_SLEEP_MS from a seeded RNG (the caller sleeps,
           with time.sleep or asyncio.sleep), then a logistic regression on the features.
    model: real CPU-bound inference: the features as an image (`features_image`) through the
           Keras model at INFBENCH_MODEL_PATH, batch of one; the score is `class_score`.
    """

    def __init__(self, settings: ModelApiSettings) -> None:
        self.settings = settings
        # Seeded by (seed, name): model_a and model_b draw different delays.
        self.rng = random.Random(f"{settings.seed}/{settings.name}")
        self.weights = sleep_weights(settings.name, settings.seed, settings.max_features)
        self._model: Any = None
        self.input_size = 0

    def load(self) -> None:
        """Model kind: load and warm the model (seconds; before the server says it is ready)."""
        if self.settings.kind != "model":
            return
        from servers.shared.model import load_model

        assert self.settings.model_path is not None  # settings checked it
        self._model = load_model(self.settings.model_path)
        self.input_size = self._model.input_size
        self.infer([0.0])

    def delay_s(self) -> float:
        """Sleep kind: the next delay, in seconds (0 for the model kind)."""
        if self.settings.kind != "sleep":
            return 0.0
        lo, hi = self.settings.sleep_ms
        return self.rng.uniform(lo, hi) / 1000.0

    def infer(self, features: Sequence[float]) -> float:
        """The score; for the model kind this blocks on TensorFlow (run it off the event loop)."""
        if self.settings.kind == "sleep":
            return linear_score(features, self.weights)
        if self._model is None:
            raise RuntimeError("model not loaded")
        from servers.shared.model import forward  # loaded already, by load()

        image = features_image(features, self.input_size)
        return class_score(forward(self._model, image, self.settings.call), self.settings.name)

    def health(self) -> dict[str, Any]:
        s = self.settings
        out: dict[str, Any] = {"status": "ok", "pid": os.getpid(), "model": s.name,
                               "kind": s.kind}
        if s.kind == "sleep":
            out["sleep_ms"] = list(s.sleep_ms)
        else:
            out.update(model_path=s.model_path, input_size=self.input_size, call=s.call)
        return out


def prediction(name: str, score: float, started: float) -> dict[str, Any]:
    return {"score": score, "model": name,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3)}


# ---------------------------------------------------------------------------------------------
# The scoring API's answers and timings


def model_answer(name: str, status: int, content: bytes) -> tuple[float, float | None]:
    """(score, the model's own elapsed_ms) from a model API's answer, or ApiError(502)."""
    try:
        data = json.loads(content)
    except ValueError:
        data = None
    if status != 200:
        detail = data.get("error") if isinstance(data, dict) else None
        raise ApiError(502, f"{name} answered {status}" + (f": {detail}" if detail else ""))
    if not isinstance(data, dict):
        raise ApiError(502, f"{name} answered 200 without a JSON object")
    score, elapsed = data.get("score"), data.get("elapsed_ms")
    if not _is_number(score) or not math.isfinite(score):
        raise ApiError(502, f"{name} answered 200 without a numeric score")
    return float(score), float(elapsed) if _is_number(elapsed) else None


def _is_number(value: object) -> TypeGuard[int | float]:
    return type(value) in (int, float)


def upstream_timeout(what: str, seconds: float) -> ApiError:
    return ApiError(504, f"{what} did not answer within {seconds:g} s")


def root_reason(exc: BaseException) -> str:
    """The deepest OS-level reason in an exception chain ("Connection refused"), else str(exc).

    HTTP clients wrap a refused connection three or four times (requests: ConnectionError <-
    MaxRetryError <- NewConnectionError <- ConnectionRefusedError); the innermost is the news.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    reason = None
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, OSError) and e.strerror:
            reason = e.strerror
        nested = [e.__cause__, e.__context__, getattr(e, "reason", None), *e.args]
        stack.extend(x for x in nested if isinstance(x, BaseException))
    if reason:
        return reason
    return one_line(str(exc), type(exc).__name__)


def pool_exhausted(limit: int) -> ApiError:
    """Our own pool to the feature store is full: a 503 (overloaded here), not a 502."""
    return ApiError(503, redis_pool_exhausted(limit))


def upstream_failed(what: str, exc: BaseException) -> ApiError:
    return ApiError(502, f"{what} unreachable: {root_reason(exc)}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


@dataclass
class ScoreTiming:
    """One /score request's clock, in seconds from perf_counter.

    `t0` is taken when the request reaches the app (a WSGI/ASGI wrapper outside the framework's
    routing and body parsing), `total` just before the answer is serialised. `models` is the
    wall time of the model stage: model_a + model_b in the sync build, the concurrent gather in
    the async one, so framework = total - features - models is the time in neither, and never
    negative (total - features - a - b would be, for the async build).
    """

    t0: float
    features: float | None = None
    model_a: float | None = None
    model_b: float | None = None
    models: float | None = None
    model_a_server_ms: float | None = None
    model_b_server_ms: float | None = None

    def finish(self) -> dict[str, float | None]:
        total = time.perf_counter() - self.t0
        spent = sum(x for x in (self.features, self.models) if x is not None)
        return {
            "features_ms": _ms(self.features),
            "model_a_ms": _ms(self.model_a),
            "model_b_ms": _ms(self.model_b),
            "models_ms": _ms(self.models),
            "total_ms": _ms(total),
            "framework_ms": _ms(max(0.0, total - spent)),
            "model_a_server_ms": self.model_a_server_ms,
            "model_b_server_ms": self.model_b_server_ms,
        }


_log: TimingsWriter | None = None
_log_lock = threading.Lock()


def timing_log(settings: ScoringSettings) -> TimingsWriter | None:
    """This process's timing writer, made on first use (None without INFBENCH_TIMING_DIR)."""
    global _log
    if settings.timing_dir is None:
        return None
    with _log_lock:
        if _log is None:
            _log = TimingsWriter(settings.timing_dir, settings.timing_flush_s)
        return _log


def record(settings: ScoringSettings, timing: ScoreTiming, status: int) -> dict[str, Any]:
    """Finish the request's clock, log it (if asked) and return the timing fields."""
    fields = timing.finish()
    log = timing_log(settings)
    if log is not None:
        log.append({"t": round(time.time(), 6), "status": status, **fields})
    return fields


def combine(score_a: float, score_b: float) -> float:
    """The scoring API's score: the mean of the two models'."""
    return (score_a + score_b) / 2.0


def score_answer(entity_id: int | str, score_a: float, score_b: float,
                 timing: Mapping[str, float | None]) -> dict[str, Any]:
    """The body of a 200 from /score, either build."""
    return {"entity_id": entity_id, "score": combine(score_a, score_b),
            "scores": {"a": score_a, "b": score_b}, "timing": timing}


def scoring_health(redis_ok: bool, error: str | None) -> tuple[int, dict[str, Any]]:
    if redis_ok:
        return 200, {"status": "ok", "pid": os.getpid(), "redis": True}
    return 503, {"status": "unavailable", "pid": os.getpid(), "redis": False,
                 **error_body(f"feature store: {error or 'no answer'}")}


# ---------------------------------------------------------------------------------------------
# Framework glue, imported lazily so each build imports only its own framework


def install_flask_errors(app: Any, on_error: Callable[[int], None] | None = None) -> None:
    """Every Flask error as {"error": ...} JSON: 4xx for bad input, a JSON 500 for a real fault.

    `on_error(status)` runs for each error answered here (the scoring API logs it).
    """
    from flask import jsonify
    from werkzeug.exceptions import HTTPException

    def answer(status: int, message: str) -> Any:
        if on_error is not None:
            on_error(status)
        return jsonify(error_body(message)), status

    def on_api(exc: ApiError) -> Any:
        return answer(exc.status, exc.message)

    def on_http(exc: HTTPException) -> Any:
        return answer(exc.code or 500, exc.description or exc.name)

    def on_fault(exc: Exception) -> Any:
        app.logger.exception("unhandled error")
        return answer(500, f"internal error: {type(exc).__name__}")

    app.register_error_handler(ApiError, on_api)
    app.register_error_handler(HTTPException, on_http)
    app.register_error_handler(Exception, on_fault)


def install_fastapi_errors(app: Any, on_error: Callable[[Any, int], None] | None = None,
                           max_features: int = 0) -> None:
    """Every FastAPI error as {"error": ...} JSON; validation errors stay 422 (FastAPI's own).

    `on_error(request, status)` runs for each error answered here (the scoring API logs it).
    """
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    def answer(request: Any, status: int, message: str) -> JSONResponse:
        if on_error is not None:
            on_error(request, status)
        return error_response(status, message)

    async def on_api(request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return answer(request, exc.status, exc.message)

    async def on_http(request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        return answer(request, exc.status_code, str(exc.detail))

    async def on_validation(request: Any, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return answer(request, 422, validation_message(list(exc.errors()), max_features))

    async def on_fault(request: Any, exc: Exception) -> JSONResponse:
        return answer(request, 500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(ApiError, on_api)
    app.add_exception_handler(HTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_fault)
