"""The model alone, measured before the load: the reference for serving efficiency.

The harness never imports TensorFlow, so the measurement runs in a child process
(`python -m servers.image.model_alone`, in its own process group like every child) with the
variant's model file and call style and the profile's batch sizes, before the variant's
services start (the machine is quiet then). It writes `<variant>/model_alone.json`, which the
analysis turns into each step's serving efficiency (infbench/analysis/trust.py) and the
machine's limit (infbench/analysis/limit.py).

A profile asks for it with `model_alone = true` (or `infbench run --model-alone`).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infbench.config import Profile, Variant
from infbench.config.servers import SERVER_KINDS
from infbench.launch import proc
from infbench.paths import ROOT
from infbench.results.files import write_json

SECONDS_PER_FIGURE = 3.0
TIMEOUT_S = 900.0


def call_style(v: Variant) -> tuple[str, str]:
    """The call style the variant's server uses, and where that came from."""
    svc = v.entry_service
    if SERVER_KINDS[svc.server].runs_app:
        return svc.call, f"service {svc.name!r} (INFBENCH_CALL)"
    return "predict_on_batch", "not one of our servers: Keras' fastest call, as a bound"


def argv(model_path: Path, images: Path, batches: list[int], call: str, out: Path,
         seconds: float = SECONDS_PER_FIGURE, device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "servers.image.model_alone", "--model", str(model_path),
            "--images", str(images), "--batches", ",".join(map(str, batches)), "--call", call,
            "--seconds", f"{seconds:g}", "--device", device, "--out", str(out)]


def measure(v: Variant, model_path: Path, profile: Profile, images: Path, out_dir: Path,
            say: Callable[[str], None] = print,
            seconds: float = SECONDS_PER_FIGURE) -> dict[str, Any] | None:
    """Run the child and return model_alone.json's content (None, said, if it failed)."""
    batches = sorted({s.batch for s in profile.steps})
    call, why = call_style(v)
    out = out_dir / "model_alone.json"
    say(f"  model alone: {model_path.name}, call {call}, batches "
        f"{', '.join(map(str, batches))} (~{3 * seconds * len(batches) + 10:.0f} s)")
    group = proc.Group(argv(model_path, images, batches, call, out, seconds,
                            v.entry_service.device),
                       log_path=out_dir / "model_alone.log", cwd=ROOT)
    deadline = time.monotonic() + TIMEOUT_S
    try:
        while group.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        code = group.stop(grace=2.0)
    try:
        doc: dict[str, Any] = json.loads(out.read_text())
    except (OSError, ValueError):
        say(f"  model alone failed (exit code {code}); see model_alone.log: "
            f"{proc.tail(out_dir / 'model_alone.log', 2)[-200:]}")
        return None
    doc["call_from"] = why
    write_json(out, doc)
    return doc
