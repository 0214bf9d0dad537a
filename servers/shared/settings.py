"""Server configuration, read once from the environment when an app module is imported.

The harness configures every variant through these variables, so a bad value must stop the
server at startup with a message naming the variable, never surface later as a 500.

    INFBENCH_MODEL_PATH      (required) .keras/.h5 file, TF SavedModel directory, .onnx or
                             torch .pt file
    INFBENCH_DEVICE          cpu (default) | cuda: where an .onnx or .pt model runs (ONNX
                             Runtime's CUDA provider, torch's CUDA device); cuda with a Keras
                             model, or on a machine without a GPU, stops the server at startup
    INFBENCH_ENDPOINT        sync (default) | async
    INFBENCH_THREAD_LIMIT    unset (anyio's default, 40) or a positive int
    INFBENCH_MAX_IMAGES      images per request (default 128)
    INFBENCH_MAX_BODY_BYTES  request body size (default 64 MiB)
    INFBENCH_CALL            predict (default) | predict_on_batch | call
    INFBENCH_INPUT_SIZE      square input size, for models that do not declare one (SavedModel)
    INFBENCH_TRIM_EACH       1: call glibc's malloc_trim(0) after every request (a hypothesis)
    INFBENCH_PAD_BATCH       pad each batch with blank images to a multiple of N (fixed shapes)
    INFBENCH_MAX_REQUEST_PIXELS   decoded pixels one request may ask for, summed over its images
                             (default 128,000,000: 128 images of 1 MP); more is a 413
    INFBENCH_MAX_INFLIGHT_PIXELS  full-size decoded pixels alive at once in the process, over all
                             requests (default 80,000,000: two images at the 40 MP cap, about
                             0.3-0.7 GB of decode buffers); a request that cannot get its share
                             within a short wait is a 503 with Retry-After

Both pixel counts come from the image headers, before anything is decoded; see
servers.image.service.PixelBudget for how a request's share is counted.

How long a body still coming is drained before an answer is not a variable either:
servers.shared.bodylimit.DRAIN_S (10 s), on every server.

Request header limits are not variables: MAX_HEADER_BYTES (16 KiB) caps the request target and
the header block, in the app (servers.image.service) and in the servers' own parsers. The flags that
set the latter, per server, for whatever starts them (the harness's launcher):

    uvicorn    --http h11 --h11-max-incomplete-event-size 16384
    gunicorn   -k uvicorn_worker.UvicornH11Worker   (its --limit-request-* flags do not reach
               an ASGI worker; h11's own default is 16 KiB, and the h11 worker pins h11)
    hypercorn  -c python:servers.shared.settings.HypercornLimits
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import overload

ENDPOINTS = ("sync", "async")
DEVICES = ("cpu", "cuda")  # servers.shared.runtimes.DEVICES
DEVICE_VAR = "INFBENCH_DEVICE"
CALL_STYLES = ("predict", "predict_on_batch", "call")
DEFAULT_MAX_IMAGES = 128
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_PIXELS = 128_000_000
DEFAULT_MAX_INFLIGHT_PIXELS = 80_000_000
# Request target and header block, each at most this many bytes (h11's own default too).
MAX_HEADER_BYTES = 16 * 1024


class HypercornLimits:
    """Hypercorn's header limits: `hypercorn -c python:servers.shared.settings.HypercornLimits ...`.

    Hypercorn has no command-line flag for these; its config loader reads the attributes of
    the object named after `python:` (flags given on the command line still take precedence).
    """

    h11_max_incomplete_size = MAX_HEADER_BYTES
    h2_max_header_list_size = MAX_HEADER_BYTES


class SettingsError(ValueError):
    """A missing or malformed INFBENCH_* variable; the message starts with its name."""


@dataclass(frozen=True)
class Settings:
    """What the app modules need to know, validated."""

    model_path: str
    endpoint: str = "sync"
    thread_limit: int | None = None
    max_images: int = DEFAULT_MAX_IMAGES
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    call: str = "predict"
    input_size: int | None = None
    trim_each: bool = False
    pad_batch: int = 0
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    max_inflight_pixels: int = DEFAULT_MAX_INFLIGHT_PIXELS
    device: str = "cpu"


# ---------------------------------------------------------------------------------------------
# Reading one variable: the helpers every server's settings use (servers.queue.common and
# servers.scoring.common too), so that a bad value is refused, and worded, the same everywhere.
# An unset or blank variable takes the default.


def env_choice(env: Mapping[str, str], name: str, choices: Sequence[str], default: str) -> str:
    """One of `choices`."""
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


@overload
def env_int(env: Mapping[str, str], name: str, default: int) -> int: ...
@overload
def env_int(env: Mapping[str, str], name: str, default: None = None) -> int | None: ...
def env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    """A positive integer."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise SettingsError(f"{name}: expected a positive integer, got {raw!r}")
    return value


def env_float(env: Mapping[str, str], name: str, default: float,
              what: str = "a positive number") -> float:
    """A positive finite number; `what` words the expectation in the error."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"{name}: expected {what}, got {raw!r}")
    return value


def env_device(env: Mapping[str, str]) -> str:
    """INFBENCH_DEVICE: where the model runs (cpu | cuda)."""
    return env_choice(env, DEVICE_VAR, DEVICES, "cpu")


def env_path(env: Mapping[str, str], name: str, required: str) -> str:
    """A file or directory that must exist; `required` ends the message when it is unset."""
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(f"{name}: required {required}")
    if not Path(value).exists():
        raise SettingsError(f"{name}: no such file or directory: {value}")
    return value


def env_dir(env: Mapping[str, str], name: str) -> Path | None:
    """A folder to write into, created if need be (None when unset)."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    folder = Path(raw)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SettingsError(f"{name}: cannot create {raw}: {exc.strerror}") from None
    # Creating a file in a folder takes both write and search permission.
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SettingsError(f"{name}: {raw} is not writable")
    return folder


# ---------------------------------------------------------------------------------------------
# The Redis connection pool of the services that talk to Redis from many requests at once (the
# queue APIs, the async scoring API): one variable and one 503 message for all of them.

REDIS_MAX_CONNECTIONS_VAR = "INFBENCH_REDIS_MAX_CONNECTIONS"
# redis-py's own default is 100 per pool, and the async queue API holds one connection per
# request in flight for its whole BLPOP wait: 200 Locust users meant 503s from the pool, not a
# measurement. 1000 is above any load our profiles drive at one process, and ten API processes
# at 1000 each still stay below redis-server's default maxclients (10000). Each connection is
# a file descriptor, next to the request's own socket: keep the pool under half of `ulimit -n`.
DEFAULT_REDIS_MAX_CONNECTIONS = 1000


def env_redis_max_connections(env: Mapping[str, str]) -> int:
    """The most Redis connections one process's pool may open at once."""
    return env_int(env, REDIS_MAX_CONNECTIONS_VAR, DEFAULT_REDIS_MAX_CONNECTIONS)


def redis_pool_exhausted(limit: int) -> str:
    """The 503's message when every connection of the pool is in use (redis-py's
    MaxConnectionsError says only "Too many connections", which reads like a Redis fault)."""
    return (f"Redis connection pool exhausted: all {limit} connections of this process are in "
            f"use ({REDIS_MAX_CONNECTIONS_VAR}={limit})")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Validate the INFBENCH_* variables (from `env`, default os.environ)."""
    env = os.environ if env is None else env
    return Settings(
        model_path=env_path(env, "INFBENCH_MODEL_PATH",
                            "(a .keras/.h5 file, SavedModel dir, .onnx or .pt file)"),
        endpoint=env_choice(env, "INFBENCH_ENDPOINT", ENDPOINTS, "sync"),
        thread_limit=env_int(env, "INFBENCH_THREAD_LIMIT"),
        max_images=env_int(env, "INFBENCH_MAX_IMAGES", DEFAULT_MAX_IMAGES),
        max_body_bytes=env_int(env, "INFBENCH_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        call=env_choice(env, "INFBENCH_CALL", CALL_STYLES, "predict"),
        input_size=env_int(env, "INFBENCH_INPUT_SIZE"),
        trim_each=env_choice(env, "INFBENCH_TRIM_EACH", ("0", "1"), "0") == "1",
        pad_batch=env_int(env, "INFBENCH_PAD_BATCH") or 0,
        max_request_pixels=env_int(env, "INFBENCH_MAX_REQUEST_PIXELS",
                                   DEFAULT_MAX_REQUEST_PIXELS),
        max_inflight_pixels=env_int(env, "INFBENCH_MAX_INFLIGHT_PIXELS",
                                    DEFAULT_MAX_INFLIGHT_PIXELS),
        device=env_device(env),
    )
