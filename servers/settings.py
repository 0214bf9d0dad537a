"""Server configuration, read once from the environment when an app module is imported.

The harness configures every variant through these variables, so a bad value must stop the
server at startup with a message naming the variable, never surface later as a 500.

    INFBENCH_MODEL_PATH      (required) .keras/.h5 file or TF SavedModel directory
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
servers.common.PixelBudget for how a request's share is counted.

Request header limits are not variables: MAX_HEADER_BYTES (16 KiB) caps the request target and
the header block, in the app (servers.common) and in the servers' own parsers. The flags that
set the latter, per server, for whatever starts them (the harness's launcher):

    uvicorn    --http h11 --h11-max-incomplete-event-size 16384
    gunicorn   -k uvicorn_worker.UvicornH11Worker   (its --limit-request-* flags do not reach
               an ASGI worker; h11's own default is 16 KiB, and the h11 worker pins h11)
    hypercorn  -c python:servers.settings.HypercornLimits
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ENDPOINTS = ("sync", "async")
CALL_STYLES = ("predict", "predict_on_batch", "call")
DEFAULT_MAX_IMAGES = 128
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_PIXELS = 128_000_000
DEFAULT_MAX_INFLIGHT_PIXELS = 80_000_000
# Request target and header block, each at most this many bytes (h11's own default too).
MAX_HEADER_BYTES = 16 * 1024


class HypercornLimits:
    """Hypercorn's header limits: `hypercorn -c python:servers.settings.HypercornLimits ...`.

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


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    value = env.get(name, "").strip() or default
    if value not in choices:
        raise SettingsError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def _positive(env: Mapping[str, str], name: str, default: int | None) -> int | None:
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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Validate the INFBENCH_* variables (from `env`, default os.environ)."""
    env = os.environ if env is None else env
    model_path = env.get("INFBENCH_MODEL_PATH", "").strip()
    if not model_path:
        raise SettingsError("INFBENCH_MODEL_PATH: required (a .keras/.h5 file or SavedModel dir)")
    if not Path(model_path).exists():
        raise SettingsError(f"INFBENCH_MODEL_PATH: no such file or directory: {model_path}")
    max_images = _positive(env, "INFBENCH_MAX_IMAGES", DEFAULT_MAX_IMAGES)
    max_body = _positive(env, "INFBENCH_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)
    request_pixels = _positive(env, "INFBENCH_MAX_REQUEST_PIXELS", DEFAULT_MAX_REQUEST_PIXELS)
    inflight_pixels = _positive(env, "INFBENCH_MAX_INFLIGHT_PIXELS", DEFAULT_MAX_INFLIGHT_PIXELS)
    # They have defaults.
    assert max_images is not None and max_body is not None
    assert request_pixels is not None and inflight_pixels is not None
    return Settings(
        model_path=model_path,
        endpoint=_choice(env, "INFBENCH_ENDPOINT", ENDPOINTS, "sync"),
        thread_limit=_positive(env, "INFBENCH_THREAD_LIMIT", None),
        max_images=max_images,
        max_body_bytes=max_body,
        call=_choice(env, "INFBENCH_CALL", CALL_STYLES, "predict"),
        input_size=_positive(env, "INFBENCH_INPUT_SIZE", None),
        trim_each=_choice(env, "INFBENCH_TRIM_EACH", ("0", "1"), "0") == "1",
        pad_batch=_positive(env, "INFBENCH_PAD_BATCH", None) or 0,
        max_request_pixels=request_pixels,
        max_inflight_pixels=inflight_pixels,
    )
