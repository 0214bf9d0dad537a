"""What each server's model did in each step: the batches it formed, how long they waited, how
busy the model was. Read from the model-call lines servers/shared/model.py's `forward` writes
(`<service>-<i>/calls-<pid>.jsonl`, with INFBENCH_MODEL_CALLS=1: the efficiency and stacks
studies' variants set it), ours and the peers' alike, since every server calls `forward`.

Per step, over the calls that started inside the step's load (summary.json "model_calls"):
  calls, calls_per_s          model calls, and a second
  images_per_call             images per call, mean (and `largest`)
  requests_per_call           images per call / images per request: > 1 is batching across
                              requests (our steps send the same number of images each)
  model_ms_p50                one call's time, median
  model_ms_per_image          the model's time over the step / its images
  model_busy                  the share of the step's wall time a call was running, per process
                              that called it (calls that overlap count once: at most 1.0; 1.0:
                              the model never waited for work, so it is what limits; lower: the
                              requests were late, held up in HTTP, decode, the event loop or
                              the batcher)
  calls_at_once               the calls running at once while any ran (their summed time over
                              the busy time): 1.0 for a server that calls the model from one
                              place; a sync app's threadpool runs one per request in flight,
                              which then share the cores, so each call is slower
  wait_ms_p50, wait_max_ms    how long a call's requests waited for it, from being queued
                              (only where the server knows it: our batching app, Ray Serve's
                              replica; None elsewhere)
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

GLOB = "calls-*.jsonl"


def read_calls(variant_dir: Path) -> list[dict[str, Any]]:
    """Every model-call line under the variant's folder, with `_file` (its process's file)."""
    rows: list[dict[str, Any]] = []
    for path in sorted(variant_dir.rglob(GLOB)):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if not isinstance(row, dict) or not all(
                    isinstance(row.get(k), int | float) for k in ("t", "images", "model_ms")):
                continue
            row["_file"] = str(path.relative_to(variant_dir))
            rows.append(row)
    return sorted(rows, key=lambda r: r["t"])


def step_calls(rows: list[dict[str, Any]], t0: float | None, t1: float | None,
               batch: int | None) -> dict[str, Any] | None:
    """The figures above for the calls that started in [t0, t1]; None without any."""
    if t0 is None or t1 is None or t1 <= t0:
        return None
    mine = [r for r in rows if t0 <= r["t"] <= t1]
    if not mine:
        return None
    span = t1 - t0
    images = sum(int(r["images"]) for r in mine)
    model_s = sum(float(r["model_ms"]) for r in mine) / 1000
    processes = len({r["_file"] for r in mine})
    # The calls' time inside the window (a call that crosses an edge counts for its part
    # inside), summed, and as the union of their intervals per process.
    spans: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        a, b = max(t0, r["t"]), min(t1, r["t"] + r["model_ms"] / 1000)
        if b > a:
            spans.setdefault(r["_file"], []).append((a, b))
    inside = sum(b - a for one in spans.values() for a, b in one)
    busy = sum(_union(one) for one in spans.values())
    waits = [float(r["wait_ms"]) for r in mine if isinstance(r.get("wait_ms"), int | float)]
    longest = [float(r["wait_max_ms"]) for r in mine
               if isinstance(r.get("wait_max_ms"), int | float)]
    per_call = images / len(mine)
    return {
        "calls": len(mine), "calls_per_s": round(len(mine) / span, 2),
        "images": images, "images_per_call": round(per_call, 2),
        "largest": max(int(r["images"]) for r in mine),
        "requests_per_call": round(per_call / batch, 2) if batch else None,
        "model_ms_p50": round(statistics.median(float(r["model_ms"]) for r in mine), 2),
        "model_ms_per_image": round(1000 * model_s / images, 3) if images else None,
        "model_busy": round(busy / span / processes, 3),
        "calls_at_once": round(inside / busy, 2) if busy > 0 else None,
        "processes": processes,
        "wait_ms_p50": round(statistics.median(waits), 2) if waits else None,
        "wait_max_ms": round(max(longest), 2) if longest else None,
    }


def _union(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals."""
    total, reach = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b > reach:
            total += b - max(a, reach)
            reach = b
    return total


def figures(variant_dir: Path, steps: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Per step with model-call lines: {"index", "batch", **step_calls}; None if the run has
    none (a server without INFBENCH_MODEL_CALLS)."""
    rows = read_calls(variant_dir)
    if not rows:
        return None
    out = []
    for st in steps:
        found = step_calls(rows, st.get("t_start"), st.get("t_end"), st.get("batch"))
        if found:
            out.append({"index": st["index"], "batch": st.get("batch"), **found})
    return out or None
