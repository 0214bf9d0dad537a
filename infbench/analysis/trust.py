"""How far to trust each step's figures: did it settle, was the load generator the limit, did
an open-loop load send what it was asked to, and how close did serving come to the model alone.

Pure functions over a variant folder's files (phases.json, manifest.json, the step's
`*_requests.csv` / `*_stats_history.csv`, `*_loadgen.csv`, `*_counts.json`, and
`model_alone.json` when the run measured the model alone); `annotate` adds to each step of
analysis.step_figures:

  stable, stability    the stability rule over the step's windows (infbench/analysis/stability.py)
  memory_flat          memory stopped climbing over those windows (None: no windows)
  loadgen              Locust's CPU and run-queue wait (infbench/measure/loadgen.py) and
  limited_by_loadgen   whether it was the limit
  open_loop            offered rate, achieved send rate, in-flight cap hits, requests never
                       sent, send lag (None for a closed-loop step)
  efficiency           served images/s / decode+model-alone images/s at the step's batch
  notes                one line for each of the above that should change how the step is read
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from infbench.analysis import loadgen, stability
from infbench.config import DEFAULT_WINDOW_S, auto_window
from infbench.results import readers
from infbench.results.variant import VariantFiles, files_of

# Open-loop: an achieved send rate below this share of the offered one is said out loud.
SEND_RATE_SHORTFALL = 0.95
# Open-loop: a p99 send lag above this (ms) means the generator could not keep its schedule.
LAG_P99_MS = 10.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def window_settings(variant_dir: Path | VariantFiles, counts: dict[str, Any] | None = None,
                    index: int | None = None) -> tuple[float, int, float]:
    """The stability window, count and tolerance a step ran with: what its Locust recorded
    (`*_counts.json`; a capacity probe sizes its own), else the profile's (manifest.json),
    else the defaults."""
    m = files_of(variant_dir).json("manifest.json") or {}
    prof = (m.get("config") or {}).get("profile") or {}
    c = counts or {}

    def pick(key: str, default: float) -> float:
        return float(c.get(key) or prof.get(key) or default)

    windows = int(pick("stable_windows", stability.DEFAULT_WINDOWS))
    default = DEFAULT_WINDOW_S
    steps = prof.get("steps") or []
    if index is not None and 0 < index <= len(steps) and isinstance(steps[index - 1], dict):
        seconds = steps[index - 1].get("seconds")
        if isinstance(seconds, int | float) and seconds > 0:  # as config.Profile.window_of
            default = auto_window(float(seconds), windows)
    return (pick("stable_window_s", default), windows,
            pick("stable_tolerance", stability.DEFAULT_TOLERANCE))


def open_loop_figures(counts: dict[str, Any] | None, t_stop: float | None) -> dict[str, Any] | None:
    """What an open-loop step asked for and what it sent (None for a closed-loop step)."""
    ol = (counts or {}).get("open_loop")
    if not isinstance(ol, dict):
        return None
    start = ol.get("schedule_start")
    span = (t_stop - start) if isinstance(start, int | float) and t_stop else None
    sent = int(ol.get("sent") or 0)
    achieved = sent / span if span and span > 0 else None
    lag = ol.get("lag_ms") or {}
    out = {"rate": ol.get("rate"), "arrival": ol.get("arrival"), "seed": ol.get("seed"),
           "max_in_flight": ol.get("max_in_flight"), "scheduled": ol.get("scheduled"),
           "sent": sent, "span_s": None if span is None else round(span, 3),
           "send_rate": None if achieved is None else round(achieved, 3),
           "in_flight_max": ol.get("in_flight_max"), "cap_hits": ol.get("cap_hits"),
           "cap_wait_s": round(float(ol.get("cap_wait_s") or 0.0), 3),
           "not_sent": ol.get("not_sent"), "retried": ol.get("retried"),
           "lag_p50_ms": _round(lag.get("p50")), "lag_p99_ms": _round(lag.get("p99")),
           "lag_max_ms": _round(lag.get("max"))}
    return out


def _round(x: Any, nd: int = 2) -> float | None:
    return round(float(x), nd) if isinstance(x, int | float) else None


def open_loop_notes(ol: dict[str, Any]) -> list[str]:
    notes = []
    if ol.get("cap_hits"):
        notes.append(f"in-flight cap ({ol['max_in_flight']}) hit {ol['cap_hits']} times: "
                     f"requests waited {ol['cap_wait_s']:.1f} s in all for a slot (in their "
                     "latency)")
    if ol.get("not_sent"):
        notes.append(f"{ol['not_sent']} scheduled requests were never sent (held by the "
                     "in-flight cap when the step ended)")
    rate, achieved, span = ol.get("rate"), ol.get("send_rate"), ol.get("span_s")
    if rate and achieved is not None and span:
        # A Poisson schedule's count over the span varies by sqrt(expected) by itself.
        expected = rate * span
        noise = 3 * math.sqrt(expected) if ol.get("arrival") == "poisson" else 1.0
        if ol["sent"] < SEND_RATE_SHORTFALL * expected and ol["sent"] < expected - noise:
            notes.append(f"sent {achieved:.1f} req/s of the {rate:g} asked for")
    if (ol.get("lag_p99_ms") or 0.0) > LAG_P99_MS:
        notes.append(f"send lag p99 {ol['lag_p99_ms']:.0f} ms: the generator fell behind "
                     "its schedule")
    return notes


def model_alone(variant_dir: Path | VariantFiles) -> dict[str, Any] | None:
    """model_alone.json, migrated (None: not measured); one that cannot be read is said, as
    `{"error": ..., "batches": []}`, and gives no efficiency and no limit."""
    try:
        return readers.model_alone_json(files_of(variant_dir).dir)
    except readers.ReadError as e:
        return {"error": str(e), "batches": []}


def efficiency(images_per_s: float | None, batch: int | None,
               alone: dict[str, Any] | None) -> dict[str, Any] | None:
    """Served images/s over the decode+model-alone images/s at the same batch: how much of
    what the model (with Pillow's decoding) can do on this machine the server delivers."""
    if alone is None or images_per_s is None or not batch:
        return None
    by_batch = {int(b["batch"]): b for b in alone.get("batches", [])
                if isinstance(b, dict) and "batch" in b}
    ref = by_batch.get(int(batch))
    if ref is None:
        return None
    full = ref.get("decode_model_images_per_s")
    model = ref.get("model_images_per_s")
    out: dict[str, Any] = {"decode_model_images_per_s": full, "model_images_per_s": model,
                           "served_images_per_s": images_per_s}
    out["efficiency"] = round(images_per_s / full, 3) if full else None
    out["vs_model_only"] = round(images_per_s / model, 3) if model else None
    return out


def annotate(variant_dir: Path | VariantFiles, steps: list[dict[str, Any]],
             phase_list: list[dict[str, Any]], mem: list[tuple[float, float]]) -> None:
    """Add the trust figures to each step of analysis.step_figures (in place)."""
    v = files_of(variant_dir)
    ends = {p.get("index"): p for p in phase_list if p.get("kind") == "step"}
    alone = model_alone(v)
    for st in steps:
        i, batch = st["index"], st["batch"]
        prefix = v.dir / f"step{i}-b{batch}"
        phase = ends.get(i, {})
        counts = _read_json(Path(f"{prefix}_counts.json"))
        width, count, tol = window_settings(v, counts, i)
        t0 = st.get("t_start")
        t_stop = (counts or {}).get("test_stopping") or phase.get("end")
        stab = stability.step_stability(prefix, t0, t_stop, mem, width, count, tol)
        gen = loadgen.figures(Path(f"{prefix}_loadgen.csv"), t0, t_stop)
        ol = open_loop_figures(counts, t_stop)
        eff = efficiency(st.get("images_per_s"), batch, alone)
        notes: list[str] = []
        if not stab["stable"]:
            notes.append(f"not stable: {stab['reason']}")
        mem_flat = stab["memory"]["flat"] if stab.get("memory") and \
            stab["memory"].get("slope_mb_per_min") is not None else None
        if mem_flat is False:
            notes.append(f"memory still moving: {stab['memory']['reason']}")
        if gen and gen["limited"]:
            notes.append(gen["note"])
        if ol:
            notes += open_loop_notes(ol)
        st.update({"stable": bool(stab["stable"]), "stability": stab, "memory_flat": mem_flat,
                   "loadgen": gen, "limited_by_loadgen": bool(gen and gen["limited"]),
                   "open_loop": ol, "efficiency": eff, "notes": notes})
