"""What the three peer services share: their settings from the environment, the model loaded
and warmed as our servers load it, and the top class of each image in the answers.

Imports NumPy and servers.shared.model only (both in every peer's lock), so each peer's
environment runs it unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from servers.shared.model import LoadedModel, forward, load_model


def positive_int_env(name: str, default: int) -> int:
    """A positive integer setting; anything else (unset, empty, 0, text) is the default."""
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def load_warm() -> tuple[LoadedModel, str]:
    """(the model at INFBENCH_MODEL_PATH, the call style INFBENCH_CALL), after one call on a
    zero batch before the first request: the peers' own loaders warm their models so, and a
    trace is not a request's."""
    path = os.environ.get("INFBENCH_MODEL_PATH", "")
    if not path:
        raise RuntimeError("INFBENCH_MODEL_PATH is not set")
    loaded = load_model(path)
    call = os.environ.get("INFBENCH_CALL", "predict_on_batch")
    size, ch = loaded.input_size, loaded.channels
    forward(loaded, np.zeros((1, size, size, ch), np.float32), call)
    return loaded, call


def top_classes(probs: Any) -> list[dict[str, float]]:
    """One {"class", "score"} per image: the most likely class and its probability."""
    top = probs.argmax(axis=1)
    return [{"class": int(c), "score": float(probs[i, c])} for i, c in enumerate(top)]
