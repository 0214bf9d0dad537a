"""Leak, allocator retention or plateau: a verdict per variant from a cycled profile.

A profile with `cycles = N` runs the same sweep N times, each followed by a rest. Memory is
read at the end of each rest (`post_rest_mb`: median of mprof's MEM over its last
REST_TAIL_S), when the load has gone and the server is idle, so that what is compared is what
the server *keeps*, not what it is using. The first cycle is warm-up (model tracing, caches,
thread pools, the allocator's first arenas) and is never counted against the server.

The rules, in order (thresholds are module constants and are written into summary.json):

1. inconclusive  fewer than MIN_CYCLES complete cycles, or a rest without samples.
2. plateau       the last cycle's change in post-rest memory is within the noise
                 (NOISE_MB, or NOISE_FRACTION of the post-warm-up figure if larger):
                 memory stopped growing once the working set was reached.
3. inconclusive  the mean change is within the noise, or some cycle after warm-up fell by
                 more than the noise while others grew, or the last STEADY_CYCLES cycles did
                 not each grow and by more than the noise on average (one jump after
                 warm-up, then little: a slow warm-up as much as a leak): not a steady
                 climb, not yet flat.
4. still growing after warm-up (last and mean change above the noise, no cycle falling by
   more than it, the last STEADY_CYCLES cycles all growing); then
   with the server probes (servers/probes.py):
   leak          the Python heap (allocated blocks, or tracemalloc's bytes) grew in every
                 cycle after warm-up by more than PY_NOISE_FRACTION, or the allocator's
                 memory *in use* (glibc's uordblks + mmapped chunks) grew by at least
                 EXPLAINS of the RSS growth: objects are being kept.
   allocator retention
                 memory in use did not grow that much, while the allocator's *free* memory
                 grew by at least EXPLAINS of the RSS growth, or malloc_trim(0) at the end gave
                 back at least EXPLAINS of it: freed memory kept by the allocator.
   inconclusive  growing, but the probes were off (or another allocator than glibc serves
                 malloc, whose statistics are not read): a leak cannot be told from retention
                 by RSS alone; the growth figures are still reported.
"""

from __future__ import annotations

import bisect
import itertools
import json
import statistics
from pathlib import Path
from typing import Any

MIN_CYCLES = 3
NOISE_MB = 8.0
NOISE_FRACTION = 0.01
PY_NOISE_FRACTION = 0.01
PY_NOISE_BLOCKS = 2000
EXPLAINS = 0.5
REST_TAIL_S = 3.0
STEADY_CYCLES = 2

THRESHOLDS = {
    "min_cycles": MIN_CYCLES, "noise_mb": NOISE_MB, "noise_fraction": NOISE_FRACTION,
    "py_noise_fraction": PY_NOISE_FRACTION, "py_noise_blocks": PY_NOISE_BLOCKS,
    "explains": EXPLAINS, "rest_tail_s": REST_TAIL_S, "steady_cycles": STEADY_CYCLES,
}


def _deltas(values: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(values)]


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def decide(cycles: list[dict[str, Any]], trim_freed_mb: float | None = None) -> dict[str, Any]:
    """The verdict from per-cycle figures.

    Each cycle: {"cycle", "complete", "requests", "post_rest_mb"} and, with probes,
    "py_blocks", "py_traced_mb" (tracemalloc, optional), "malloc_in_use_mb",
    "malloc_free_mb" (None where not read). `trim_freed_mb`: what malloc_trim(0) gave back
    at the end, summed over the server's processes (None if not tried).
    """
    out: dict[str, Any] = {"verdict": "inconclusive", "reason": "", "cycles": len(cycles),
                           "thresholds": THRESHOLDS}
    done = [c for c in cycles if c.get("complete") and c.get("post_rest_mb") is not None]
    if len(done) < MIN_CYCLES or len(done) != len(cycles):
        out["reason"] = (f"{len(done)} complete cycle(s) with a measured rest; need at least "
                         f"{MIN_CYCLES} (the first is warm-up)")
        return out
    # rss[0], the end of the first cycle's rest, is the end of warm-up: every change from
    # there on is the server's.
    rss = [c["post_rest_mb"] for c in done]
    d = _deltas(rss)
    noise = max(NOISE_MB, NOISE_FRACTION * rss[0])
    requests = sum(int(c.get("requests") or 0) for c in done[1:])
    growth = rss[-1] - rss[0]
    out.update({
        "post_rest_mb": [_r(x) for x in rss],
        "growth_per_cycle_mb": _r(statistics.fmean(d)),
        "growth_last_cycle_mb": _r(d[-1]),
        "growth_after_warmup_mb": _r(growth),
        "growth_per_1000_requests_mb": _r(growth / requests * 1000, 2) if requests else None,
        "requests_after_warmup": requests,
        "noise_mb": _r(noise),
        "trim_freed_mb": _r(trim_freed_mb),
    })
    if d[-1] <= noise:
        out["verdict"] = "plateau"
        how = (f"fell {-d[-1]:.1f} MB" if d[-1] < -noise else
               f"changed by {d[-1]:+.1f} MB, within the noise of {noise:.1f} MB,")
        out["reason"] = f"post-rest memory {how} in the last cycle: it stopped growing"
        return out
    if statistics.fmean(d) <= noise:
        out["verdict"] = "inconclusive"
        out["reason"] = (f"grew {d[-1]:+.1f} MB in the last cycle but {statistics.fmean(d):+.1f}"
                         f" MB a cycle on average (noise {noise:.1f} MB): run more cycles")
        return out
    moved = f"post-rest memory moved {', '.join(f'{x:+.0f}' for x in d)} MB from cycle to cycle"
    if min(d) < -noise:
        # Growth overall, but some cycle gave back more than the noise: that is not the steady
        # climb of a leak, nor yet a plateau.
        out["verdict"] = "inconclusive"
        out["reason"] = (f"{moved}: up and down by more than the noise of {noise:.1f} MB; run "
                         "more cycles")
        return out
    recent = d[-STEADY_CYCLES:]
    if min(recent) <= 0 or statistics.fmean(recent) <= noise:
        # A leak keeps growing; a jump right after warm-up and then little is as much a slow
        # warm-up. (Seen: Gunicorn 1,840 -> 2,034 -> 2,018 -> 2,067 MB.)
        out["verdict"] = "inconclusive"
        out["reason"] = (f"{moved}: the last {len(recent)} did not each grow, by more than the "
                         f"noise of {noise:.1f} MB on average; not a steady climb yet: run "
                         "more cycles")
        return out

    py = _python_growth(done)
    in_use = _series(done, "malloc_in_use_mb")
    free = _series(done, "malloc_free_mb")
    out["python_heap"] = py
    if in_use:
        out["malloc_in_use_growth_mb"] = _r(in_use[-1] - in_use[0])
    if free:
        out["malloc_free_growth_mb"] = _r(free[-1] - free[0])
    grew = f"post-rest memory grew {growth:+.1f} MB over {len(d)} cycles after warm-up " \
           f"({statistics.fmean(d):+.1f} MB a cycle)"
    if py and py["grows_every_cycle"]:
        out["verdict"] = "leak"
        out["where"] = "python objects"
        out["reason"] = f"{grew}; the Python heap grew in every cycle ({py['summary']})"
    elif in_use and in_use[-1] - in_use[0] >= EXPLAINS * growth:
        out["verdict"] = "leak"
        out["where"] = "native allocations"
        out["reason"] = (f"{grew}; memory in use by malloc grew {in_use[-1] - in_use[0]:+.1f} "
                         f"MB, at least {EXPLAINS:.0%} of it, and the Python heap did not")
    elif free and free[-1] - free[0] >= EXPLAINS * growth:
        out["verdict"] = "allocator retention"
        out["reason"] = (f"{grew}; the allocator's free memory grew {free[-1] - free[0]:+.1f} "
                         f"MB (at least {EXPLAINS:.0%} of it) while memory in use did not")
    elif trim_freed_mb is not None and trim_freed_mb >= EXPLAINS * growth:
        out["verdict"] = "allocator retention"
        out["reason"] = (f"{grew}; malloc_trim(0) at the end gave back {trim_freed_mb:.1f} MB "
                         f"(at least {EXPLAINS:.0%} of it)")
    elif not in_use and not py:
        out["reason"] = (f"{grew}; without the server probes (probes = true) a leak cannot be "
                         "told from allocator retention")
    else:
        out["reason"] = (f"{grew}; neither the Python heap, malloc's memory in use nor its "
                         "free memory explains it (another allocator, or memory outside malloc)")
    return out


def _series(cycles: list[dict[str, Any]], key: str) -> list[float]:
    """The values of `key` at the end of each cycle's rest, if every cycle has one."""
    vals = [c.get(key) for c in cycles]
    return [float(v) for v in vals if v is not None] if None not in vals else []


def _python_growth(cycles: list[dict[str, Any]]) -> dict[str, Any] | None:
    traced = _series(cycles, "py_traced_mb")
    blocks = _series(cycles, "py_blocks")
    if traced:
        d = _deltas(traced)
        floor = max(0.5, PY_NOISE_FRACTION * traced[0])
        return {"measure": "tracemalloc_mb", "values": [_r(x, 2) for x in traced],
                "grows_every_cycle": bool(d) and all(x > floor for x in d),
                "summary": f"tracemalloc {traced[0]:.1f} -> {traced[-1]:.1f} MB"}
    if blocks:
        d = _deltas(blocks)
        floor = max(PY_NOISE_BLOCKS, PY_NOISE_FRACTION * blocks[0])
        return {"measure": "py_blocks", "values": [int(x) for x in blocks],
                "grows_every_cycle": bool(d) and all(x > floor for x in d),
                "summary": f"allocated blocks {int(blocks[0]):,} -> {int(blocks[-1]):,}"}
    return None


# -------------------------------------------------------------------------------------------
# From the files of a variant folder to the per-cycle figures `decide` takes.


def read_probes(variant_dir: Path) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
    """probes-<pid>.jsonl files: samples by pid (in time order) and trim events."""
    samples: dict[int, list[dict[str, Any]]] = {}
    trims: list[dict[str, Any]] = []
    for path in sorted(variant_dir.rglob("probes-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed server
            if not isinstance(row, dict) or "t" not in row:
                continue
            if row.get("event") == "trim":
                trims.append(row)
            else:
                samples.setdefault(int(row.get("pid", 0)), []).append(row)
    for rows in samples.values():
        rows.sort(key=lambda r: r["t"])
    return samples, trims


def probe_totals(samples: dict[int, list[dict[str, Any]]], t: float) -> dict[str, float | None]:
    """Each process's last probe sample at or before t, summed over processes."""
    # Rows are in time order (read_probes sorts them): bisect, since the breakdown asks once
    # a second over the whole run.
    at = [bisect.bisect_right(rows, t, key=lambda r: r["t"]) for rows in samples.values()]
    rows = [r[i - 1] for r, i in zip(samples.values(), at, strict=True) if i]
    if not rows:
        return {}

    def total(get: Any) -> float | None:
        vals = [get(r) for r in rows]
        return None if any(v is None for v in vals) else float(sum(vals))

    return {
        "py_blocks": total(lambda r: r.get("py_blocks")),
        "py_traced_mb": total(lambda r: r.get("tracemalloc_mb")),
        "malloc_in_use_mb": total(lambda r: None if not r.get("malloc")
                                  else r["malloc"]["in_use"] + r["malloc"]["mmap"]),
        "malloc_free_mb": total(lambda r: None if not r.get("malloc") else r["malloc"]["free"]),
    }


def cycle_figures(phase_list: list[dict[str, Any]], mem: list[tuple[float, float]],
                  steps: list[dict[str, Any]],
                  samples: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One entry per cycle: requests, complete, and the figures at the end of its rest (the
    `rest` phase, or without one the pause after the cycle's last step)."""
    cycles = sorted({int(p["cycle"]) for p in phase_list if p.get("kind") == "step"
                     and p.get("cycle") is not None})
    out = []
    for c in cycles:
        mine = [s for s in steps if s.get("cycle") == c]
        ends = [p for p in phase_list if p.get("cycle") == c and p.get("kind") == "rest"] or \
            [p for p in phase_list if p.get("cycle") == c and p.get("kind") == "pause"]
        end = ends[-1] if ends else None
        entry: dict[str, Any] = {
            "cycle": c, "requests": sum(int(s.get("requests") or 0) for s in mine),
            "complete": bool(mine) and all(s.get("complete") for s in mine)
            and end is not None and bool(end.get("end")) and not end.get("cut_short"),
            "post_rest_mb": None,
        }
        if end is not None and end.get("end"):
            t1 = end["end"]
            vals = [m for t, m in mem if max(end["start"], t1 - REST_TAIL_S) <= t <= t1]
            entry["post_rest_mb"] = _r(statistics.median(vals)) if vals else None
            entry.update({k: _r(v, 2) for k, v in probe_totals(samples, t1).items()})
        out.append(entry)
    return out


def from_files(variant_dir: Path, phase_list: list[dict[str, Any]],
               mem: list[tuple[float, float]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict of one variant folder, with the cycle figures it was decided from."""
    samples, trims = read_probes(variant_dir)
    cycles = cycle_figures(phase_list, mem, steps, samples)
    freed = sum(float(t.get("freed_mb") or 0) for t in trims) if trims else None
    out = decide(cycles, freed)
    out["per_cycle"] = cycles
    out["probes"] = {"processes": len(samples),
                     "allocators": sorted({r.get("allocator", "?") for rows in samples.values()
                                           for r in rows}),
                     "trims": trims} if samples else None
    return out
