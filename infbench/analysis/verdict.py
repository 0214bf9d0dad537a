"""Leak, allocator retention or plateau: a verdict per variant from a cycled profile.

A profile with `cycles = N` runs the same sweep N times, each followed by a rest. Memory is
read at the end of each rest (`post_rest_mb`: median of mprof's MEM over its last
REST_TAIL_S), when the load has gone and the server is idle, so that what is compared is what
the server *keeps*, not what it is using. The first cycle is warm-up (model tracing, caches,
thread pools, the allocator's first arenas) and is never counted against the server.

The rules, in order (thresholds are module constants and are written into summary.json):

0. no verdict    the profile runs its sweep once (no `cycles`): there is nothing to compare,
                 which is not a failed diagnosis (NO_VERDICT; summary.json 1-3 said
                 "inconclusive", infbench/results/readers.py migrates them).
1. inconclusive  fewer than MIN_CYCLES complete cycles, or a rest without samples.
2. leak (python objects), first, whatever RSS says: the heap census (exact bytes of the live
                 Python objects at each rest) grew in every cycle after warm-up by more than
                 its own noise (CENSUS_NOISE_MB, or PY_NOISE_FRACTION of it if larger). The
                 census's noise is far below RSS's, so a slow leak (4 KB a request) that RSS
                 cannot tell from noise in a few cycles is still seen. Likewise malloc's
                 memory in use (probes or debugger), an exact count too: when it grows in
                 every cycle by more than IN_USE_NOISE_MB (or NOISE_FRACTION of it), the
                 climb goes on to rule 4 (a native leak too slow for RSS's noise).
   The trend of post-rest memory over *all* cycles after warm-up is judged, not the last
   step alone: a **steady climb** is every cycle up, a least-squares slope whose 95%
   confidence interval excludes zero, a total above the noise, and a last cycle that grew at
   least STEADY_LAST_FRACTION of the mean (not slowing down to a level). A steady climb goes on to
   rule 4 even when each single step is within the noise.
2b. plateau      no steady climb, and the last cycle's change in post-rest memory is within the
                 noise (NOISE_MB, or NOISE_FRACTION of the post-warm-up figure if larger):
                 memory stopped growing once the working set was reached.
3. allocator retention, when the growth is not a steady climb (below) but what went up in
                 the last cycle is the allocator's free memory (at least EXPLAINS of it) while
                 memory in use and the Python heap's bytes did not move so; else
   inconclusive  the mean change is within the noise, or some cycle after warm-up fell by
                 more than the noise while others grew, or the last STEADY_CYCLES cycles did
                 not each grow and by more than the noise on average (one jump after
                 warm-up, then little: a slow warm-up as much as a leak): not a steady
                 climb, not yet flat.
4. still growing after warm-up (last and mean change above the noise, no cycle falling by
   more than it, the last STEADY_CYCLES cycles all growing); then, from the server probes
   (servers/shared/probes.py, injected into any Python server) and glibc's totals read from
   outside (infbench/measure/outside.py, any process):
   leak (python objects)
                 the Python heap in bytes grew by at least EXPLAINS of the RSS growth: the
                 probes' heap census at each rest (gc-reachable objects, by sys.getsizeof),
                 or tracemalloc when it runs (opt-in); or the heap grew in bytes in every
                 cycle and so did its object count (many small objects: tracemalloc's own
                 tables are malloc'd, the census's ids are not counted); or, counted in blocks
                 only, grew in every cycle by more than PY_NOISE_FRACTION.
   leak (native allocations)
                 the allocator's memory *in use* (glibc's uordblks + mmapped chunks) grew by at
                 least EXPLAINS of it, and either the Python heap was measured in bytes and
                 neither its bytes nor its object count did, or no process of the variant is
                 Python.
   leak (kind unknown)
                 memory in use grew so, in a Python process whose heap was not measured in
                 bytes (one 64 KB bytes object is one block, so a leak of big Python objects
                 and a native leak look alike), or whose objects grew in number but not in
                 bytes: the verdict does not guess.
   allocator retention
                 memory in use did not grow that much, while the allocator's *free* memory
                 grew by at least EXPLAINS of the RSS growth, or malloc_trim(0) at the end gave
                 back at least EXPLAINS of it: freed memory kept by the allocator.
   inconclusive  growing, but nothing read the allocator (no probes, no debugger, or another
                 allocator than glibc serves malloc): a leak cannot be told from retention by
                 RSS alone; the growth figures are still reported.

A plateau is not always a healthy one: when the allocator holds more than RETAINED_MB free at
the last rest, or malloc_trim(0) gives back more than that at the end, the verdict says so
(`headline`: "plateau — 95 MB is allocator retention (malloc_trim gave back 88 MB)"); so does
an inconclusive verdict (a level that went up and down), since that is often what moves.
"""

from __future__ import annotations

import bisect
import collections
import itertools
import statistics
from pathlib import Path
from typing import Any

from infbench.analysis import culprit
from infbench.results.schemas import MIN_CYCLES, NO_CYCLES, NO_VERDICT, runs_once
from infbench.results.variant import VariantFiles, files_of

NOISE_MB = 8.0
NOISE_FRACTION = 0.01
PY_NOISE_FRACTION = 0.01
PY_NOISE_BLOCKS = 2000
EXPLAINS = 0.5
REST_TAIL_S = 3.0
STEADY_CYCLES = 2
RETAINED_MB = 32.0
TOP_SITES = 10
SITE_FLOOR_MB = 0.1
STEADY_LAST_FRACTION = 0.5
CENSUS_NOISE_MB = 0.5  # the heap census at rest, cycle to cycle: a request's buffers, a log line
# malloc's memory in use at rest, cycle to cycle: the larger of this and NOISE_FRACTION of it
# (TensorFlow servers here moved by -2.5 to +3.6 MB of ~405 MB from rest to rest).
IN_USE_NOISE_MB = 1.0
# Student's t at 97.5% for the slope's 95% interval, by degrees of freedom (points - 2).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26,
        10: 2.23, 15: 2.13, 20: 2.09, 30: 2.04}

THRESHOLDS = {
    "min_cycles": MIN_CYCLES, "noise_mb": NOISE_MB, "noise_fraction": NOISE_FRACTION,
    "py_noise_fraction": PY_NOISE_FRACTION, "py_noise_blocks": PY_NOISE_BLOCKS,
    "explains": EXPLAINS, "rest_tail_s": REST_TAIL_S, "steady_cycles": STEADY_CYCLES,
    "retained_mb": RETAINED_MB, "census_noise_mb": CENSUS_NOISE_MB,
    "steady_last_fraction": STEADY_LAST_FRACTION, "in_use_noise_mb": IN_USE_NOISE_MB,
    "in_use_noise_fraction": NOISE_FRACTION,
}


def _deltas(values: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(values)]


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def _t975(df: int) -> float:
    return next(T975[k] for k in sorted(T975, reverse=True) if k <= df) if df >= 1 else 0.0


def trend(values: list[float]) -> dict[str, Any]:
    """The least-squares slope of a series per cycle, its 95% confidence interval, and whether
    every step went up. With two points there is no interval (`ci_mb` None)."""
    d = _deltas(values)
    out: dict[str, Any] = {"slope_mb": None, "ci_mb": None, "every_cycle_up": bool(d) and
                           all(x > 0 for x in d)}
    n = len(values)
    if n < 2:
        return out
    xs = list(range(n))
    slope, intercept = statistics.linear_regression(xs, values)
    out["slope_mb"] = _r(slope, 3)
    if n >= 3:
        resid = [y - (intercept + slope * x) for x, y in zip(xs, values, strict=True)]
        sxx = sum((x - (n - 1) / 2) ** 2 for x in xs)
        se = (sum(r * r for r in resid) / (n - 2) / sxx) ** 0.5
        out["ci_mb"] = _r(_t975(n - 2) * se, 3)
    return out


def _steady(t: dict[str, Any], deltas: list[float], growth: float, noise: float) -> bool:
    """A steady climb: up in every cycle, a slope whose interval excludes zero, in all more than
    the noise (a creep of a few pages is not a leak), and not slowing down: the last cycle grew
    by at least STEADY_LAST_FRACTION of the mean (a leak keeps its rate per request; a working
    set being reached does not: seen with Hypercorn, +41, +84, +9 MB, then flat)."""
    lower = None if t["slope_mb"] is None or t["ci_mb"] is None else t["slope_mb"] - t["ci_mb"]
    return (bool(t["every_cycle_up"]) and lower is not None and lower > 0 and growth > noise
            and deltas[-1] >= STEADY_LAST_FRACTION * statistics.fmean(deltas))


def census_floor(census: list[float]) -> float:
    return max(CENSUS_NOISE_MB, PY_NOISE_FRACTION * census[0]) if census else CENSUS_NOISE_MB


def census_climbs(census: list[float]) -> bool:
    """The heap census (bytes) grew in every cycle after warm-up by more than its noise."""
    d = _deltas(census)
    return bool(d) and all(x > census_floor(census) for x in d)


def in_use_floor(in_use: list[float]) -> float:
    return max(IN_USE_NOISE_MB, NOISE_FRACTION * in_use[0]) if in_use else IN_USE_NOISE_MB


def _in_use_climbs(in_use: list[float]) -> bool:
    """malloc's memory in use grew in every cycle after warm-up by more than its noise: an exact
    count, like the census, so a native leak too slow for RSS's noise is still seen (seen in CI:
    64 KiB a request on a starved machine, +6.3 MB in the last cycle, called a plateau)."""
    d = _deltas(in_use)
    return bool(d) and all(x > in_use_floor(in_use) for x in d)


def settled(v: dict[str, Any]) -> str | None:
    """Why more cycles would not change this verdict (a profile with `settle` stops), or None:
    a leak (each of its rules asks for growth in every cycle after warm-up, or a slope whose
    interval excludes zero); a plateau whose last two cycles each moved by no more than the
    noise, with no exact count (census, malloc in use) climbing; allocator retention reached
    by a steady climb. Inconclusive, and anything reached on one step, goes on cycling."""
    d = _deltas([float(x) for x in v.get("post_rest_mb") or []])
    noise = float(v.get("noise_mb") or NOISE_MB)
    kind = v.get("verdict")
    if kind == "leak":
        return f"leak ({v.get('where')}) at {len(d) + 1} cycles"
    if kind == "plateau" and len(d) >= 2 and all(abs(x) <= noise for x in d[-2:]):
        return (f"plateau: the last two cycles moved {d[-2]:+.1f} and {d[-1]:+.1f} MB, within "
                f"the noise of {noise:.1f} MB")
    if kind == "allocator retention" and (v.get("trend") or {}).get("steady_climb"):
        return "allocator retention on a steady climb"
    return None


def headline(v: dict[str, Any]) -> str:
    """The verdict in one line: `leak (python objects)`, `plateau — 95 MB is allocator
    retention (malloc_trim gave back 88 MB)`, ..."""
    text = str(v.get("verdict", "inconclusive"))
    if v.get("where"):
        text += f" ({v['where']})"
    named = culprit.top_line(v.get("culprit")) if v.get("verdict") == "leak" else ""
    if named:
        text += f": {named}"
    r = v.get("retention") or {}
    free, trim = r.get("free_mb"), r.get("trim_freed_mb")
    gave = f"malloc_trim gave back {trim:.0f} MB" if trim is not None else ""
    if free is not None and free >= RETAINED_MB:
        text += f" — {free:.0f} MB is allocator retention" + (f" ({gave})" if gave else "")
    elif trim is not None and trim >= RETAINED_MB:
        text += f" — {gave}: allocator retention"
    return text


def no_verdict(cycles: int) -> dict[str, Any]:
    """What a profile without cycles gets instead of a verdict."""
    return {"verdict": NO_VERDICT, "reason": NO_CYCLES, "cycles": cycles,
            "thresholds": THRESHOLDS, "headline": NO_VERDICT}


def no_cycles(rows: list[dict[str, Any]]) -> bool:
    """Every variant (summary.json rows) ran a profile without cycles: no verdict to give,
    which is not a failed one."""
    return bool(rows) and all((r.get("verdict") or {}).get("verdict") == NO_VERDICT
                              for r in rows)


def decide(cycles: list[dict[str, Any]], trim_freed_mb: float | None = None,
           python: bool | None = None, profile_cycles: int | None = None) -> dict[str, Any]:
    """The verdict from per-cycle figures; `profile_cycles` 1 (a profile that runs its sweep
    once) is no verdict at all (None: the profile is not known).

    Each cycle: {"cycle", "complete", "requests", "post_rest_mb"} and, where read,
    "py_blocks", "py_census_mb" and "py_census_objects" (the heap census after the rest),
    "py_traced_mb" (tracemalloc), "malloc_in_use_mb", "malloc_free_mb" (None where not
    read). `trim_freed_mb`: what malloc_trim(0) gave back at the end, summed over
    the server's processes (None if not tried). `python`: whether a process of the variant is
    a Python interpreter (None: not known).
    """
    if profile_cycles == 1:
        return no_verdict(len(cycles))
    out = _decide(cycles, trim_freed_mb, python)
    if out["verdict"] in ("plateau", "inconclusive") and "post_rest_mb" in out:
        _retention(out, cycles[-1].get("malloc_free_mb"), trim_freed_mb)
    out["headline"] = headline(out)
    return out


def _retention(out: dict[str, Any], free: float | None, trim: float | None) -> None:
    """A plateau (or a level that goes up and down) is not always healthy: say how much of it
    is memory glibc keeps, when that is more than RETAINED_MB."""
    if not ((free is not None and free >= RETAINED_MB) or (trim is not None
                                                           and trim >= RETAINED_MB)):
        return
    out["retention"] = {"free_mb": _r(free), "trim_freed_mb": _r(trim),
                        "threshold_mb": RETAINED_MB}
    held = [f"the allocator held {free:.1f} MB free at the last rest" if free is not None
            else "", f"malloc_trim(0) gave back {trim:.1f} MB at the end" if trim is not None
            else ""]
    out["reason"] += ("; but " if out["verdict"] == "plateau" else "; ") + \
        " and ".join(h for h in held if h) + \
        f" (over {RETAINED_MB:.0f} MB): memory the server freed and glibc kept"


def _decide(cycles: list[dict[str, Any]], trim_freed_mb: float | None,
            python: bool | None) -> dict[str, Any]:
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
    census = _series(done, "py_census_mb")
    in_use = _series(done, "malloc_in_use_mb")
    rss_trend = trend(rss)
    steady = _steady(rss_trend, d, growth, noise)
    rss_trend["steady_climb"] = steady
    out.update({
        "post_rest_mb": [_r(x) for x in rss],
        "growth_per_cycle_mb": _r(statistics.fmean(d)),
        "growth_last_cycle_mb": _r(d[-1]),
        "growth_after_warmup_mb": _r(growth),
        "growth_per_1000_requests_mb": _r(growth / requests * 1000, 2) if requests else None,
        "requests_after_warmup": requests,
        "noise_mb": _r(noise),
        "trim_freed_mb": _r(trim_freed_mb),
        "trend": rss_trend,
        "detection_limit": _detection_limit(noise, census, in_use, requests, len(d)),
    })
    # A heap census (or malloc's memory in use) that climbs in every cycle is a leak at any size
    # above its own noise: it takes the place of a steady climb of RSS, which a slow leak does
    # not reach in a few cycles.
    py_climbs = census_climbs(census)
    exact_climbs = py_climbs or _in_use_climbs(in_use)
    steady = steady or exact_climbs
    if d[-1] <= noise and not steady:
        out["verdict"] = "plateau"
        how = (f"fell {-d[-1]:.1f} MB" if d[-1] < -noise else
               f"changed by {d[-1]:+.1f} MB, within the noise of {noise:.1f} MB,")
        out["reason"] = (f"post-rest memory {how} in the last cycle: it stopped growing "
                         f"(a climb under {noise:.1f} MB over {len(d)} cycles is below what "
                         "RSS can tell" + (
                             "; neither the heap census nor malloc's memory in use grew in "
                             "every cycle)" if census and in_use else
                             "; the heap census did not grow in every cycle)" if census else
                             "; the probes' heap census, probes = true, sees smaller ones)"))
        return out
    held = _last_cycle_retention(done, d[-1])
    if held and not steady and (statistics.fmean(d) <= noise or min(d) < -noise
                                or min(d[-STEADY_CYCLES:]) <= 0
                                or statistics.fmean(d[-STEADY_CYCLES:]) <= noise):
        # Not a steady climb, but what went up in the last cycle is free memory glibc kept:
        # that is retention, whether or not it goes on (a new thread's arena adds its holes).
        out["verdict"] = "allocator retention"
        out["reason"] = held
        return out
    if statistics.fmean(d) <= noise and not steady:
        out["verdict"] = "inconclusive"
        out["reason"] = (f"grew {d[-1]:+.1f} MB in the last cycle but {statistics.fmean(d):+.1f}"
                         f" MB a cycle on average (noise {noise:.1f} MB): run more cycles")
        return out
    moved = f"post-rest memory moved {', '.join(f'{x:+.0f}' for x in d)} MB from cycle to cycle"
    if min(d) < -noise and not exact_climbs:
        # Growth overall, but some cycle gave back more than the noise: that is not the steady
        # climb of a leak, nor yet a plateau.
        out["verdict"] = "inconclusive"
        out["reason"] = (f"{moved}: up and down by more than the noise of {noise:.1f} MB; run "
                         "more cycles")
        return out
    recent = d[-STEADY_CYCLES:]
    if not steady and (min(recent) <= 0 or statistics.fmean(recent) <= noise):
        # A leak keeps growing; a jump right after warm-up and then little is as much a slow
        # warm-up. (Seen: Gunicorn 1,840 -> 2,034 -> 2,018 -> 2,067 MB.)
        out["verdict"] = "inconclusive"
        out["reason"] = (f"{moved}: the last {len(recent)} did not each grow, by more than the "
                         f"noise of {noise:.1f} MB on average; not a steady climb yet: run "
                         "more cycles")
        return out
    _attribute(out, done, d, growth, census, in_use, py_climbs, trim_freed_mb, python)
    return out


def _attribute(out: dict[str, Any], done: list[dict[str, Any]], d: list[float], growth: float,
               census: list[float], in_use: list[float], py_climbs: bool,
               trim_freed_mb: float | None, python: bool | None) -> None:
    """A steady climb, attributed: a leak of Python objects, of native allocations or of a
    kind unknown; allocator retention; or inconclusive with what could not be read."""
    py = _python_growth(done)
    free = _series(done, "malloc_free_mb")
    out["python_heap"] = py
    if in_use:
        out["malloc_in_use_growth_mb"] = _r(in_use[-1] - in_use[0])
    if free:
        out["malloc_free_growth_mb"] = _r(free[-1] - free[0])
    grew = f"post-rest memory grew {growth:+.1f} MB over {len(d)} cycles after warm-up " \
           f"({statistics.fmean(d):+.1f} MB a cycle)"
    bytes_measured = py is not None and py["measure"] in BYTES_MEASURES
    objects_grew = bool(py and py.get("objects_grow_every_cycle"))
    in_use_grew = bool(in_use) and in_use[-1] - in_use[0] >= EXPLAINS * growth
    # A census that climbs by less than the growth is not the growth's cause when glibc's free
    # memory explains the growth: that is retention, with a small drift of objects beside it
    # (seen: Gunicorn thread churn, census +0.7 MB a cycle, free memory +75 MB).
    free_explains = bool(free) and free[-1] - free[0] >= EXPLAINS * growth
    if (py and (py["explains"] if bytes_measured else py["grows_every_cycle"])) or (
            py_climbs and not free_explains):
        assert py is not None  # the census is one of its measures
        out["verdict"] = "leak"
        out["where"] = "python objects"
        how = ("grew in bytes and in objects in every cycle"
               if bytes_measured and objects_grew and py["growth_mb"] < EXPLAINS * growth else
               f"grew {py['growth_mb']:+.1f} MB, at least {EXPLAINS:.0%} of it"
               if bytes_measured and py["explains"] else
               "grew in every cycle after warm-up, "
               f"{', '.join(f'{x:+.2f}' for x in _deltas(census))} MB, above its noise of "
               f"{census_floor(census):.2f} MB" if py_climbs else "grew in every cycle")
        out["reason"] = f"{grew}; the Python heap {how} ({py['summary']})"
    elif in_use_grew and ((bytes_measured and not objects_grew) or python is False):
        out["verdict"] = "leak"
        out["where"] = "native allocations"
        why = (f"and the Python heap did not, in bytes or in objects ({py['summary']})"
               if py and bytes_measured else "and no process of it is Python")
        out["reason"] = (f"{grew}; memory in use by malloc grew {in_use[-1] - in_use[0]:+.1f} "
                         f"MB, at least {EXPLAINS:.0%} of it, {why}")
    elif in_use_grew:
        out["verdict"] = "leak"
        out["where"] = "kind unknown"
        counted = (f"the Python objects grew in number in every cycle, not in bytes "
                   f"({py['summary']})" if py and bytes_measured else
                   f"the Python heap is counted in objects, not bytes ({py['summary']})"
                   if py else "the Python heap was not measured")
        out["reason"] = (f"{grew}; memory in use by malloc grew {in_use[-1] - in_use[0]:+.1f} "
                         f"MB, at least {EXPLAINS:.0%} of it, but {counted}: big Python objects "
                         "and native memory look alike (the probes, probes = true, count the "
                         "heap's bytes at each rest)")
    elif free and free[-1] - free[0] >= EXPLAINS * growth:
        out["verdict"] = "allocator retention"
        out["reason"] = (f"{grew}; the allocator's free memory grew {free[-1] - free[0]:+.1f} "
                         f"MB (at least {EXPLAINS:.0%} of it) while memory in use did not")
    elif trim_freed_mb is not None and trim_freed_mb >= EXPLAINS * growth:
        out["verdict"] = "allocator retention"
        out["reason"] = (f"{grew}; malloc_trim(0) at the end gave back {trim_freed_mb:.1f} MB "
                         f"(at least {EXPLAINS:.0%} of it)")
    elif not in_use and not py:
        out["reason"] = (f"{grew}; nothing read the allocator (no server probes, no debugger, "
                         "or another allocator than glibc): a leak cannot be told from "
                         "allocator retention")
    else:
        out["reason"] = (f"{grew}; neither the Python heap, malloc's memory in use nor its "
                         "free memory explains it (another allocator, or memory outside malloc)")


def _detection_limit(noise: float, census: list[float], in_use: list[float], requests: int,
                     cycles: int) -> dict[str, Any]:
    """The smallest growth each source can tell, over this run's cycles after warm-up: RSS
    needs more than the noise in all; the heap census and malloc's memory in use more than
    their noise in every cycle."""
    out: dict[str, Any] = {"rss_mb": _r(noise), "rss_mb_per_1000_requests":
                           _r(noise / requests * 1000, 3) if requests else None}
    for name, series, floor_of in (("census", census, census_floor),
                                   ("malloc_in_use", in_use, in_use_floor)):
        if series:
            floor = floor_of(series)
            out[f"{name}_mb_per_cycle"] = _r(floor, 2)
            out[f"{name}_mb_per_1000_requests"] = (_r(floor / (requests / cycles) * 1000, 3)
                                                   if requests and cycles else None)
    return out


def _last_cycle_retention(done: list[dict[str, Any]], grew: float) -> str | None:
    """The reason, if the last cycle's growth is the allocator's free memory: free grew by at
    least EXPLAINS of it while memory in use and the Python heap's bytes (where measured)
    did not."""
    free = _series(done, "malloc_free_mb")
    in_use = _series(done, "malloc_in_use_mb")
    if len(free) < 2 or len(in_use) < 2 or grew <= 0:
        return None
    free_d, used_d = free[-1] - free[-2], in_use[-1] - in_use[-2]
    py = _series(done, "py_census_mb") or _series(done, "py_traced_mb")
    py_d = py[-1] - py[-2] if len(py) >= 2 else 0.0
    if free_d < EXPLAINS * grew or used_d >= EXPLAINS * grew or py_d >= EXPLAINS * grew:
        return None
    return (f"post-rest memory grew {grew:+.1f} MB in the last cycle, not a steady climb; of it "
            f"the allocator's free memory grew {free_d:+.1f} MB (at least {EXPLAINS:.0%}) while "
            f"memory in use moved {used_d:+.1f} MB: freed memory kept by glibc")


def _series(cycles: list[dict[str, Any]], key: str) -> list[float]:
    """The values of `key` at the end of each cycle's rest, if every cycle has one."""
    vals = [c.get(key) for c in cycles]
    return [float(v) for v in vals if v is not None] if None not in vals else []


BYTES_MEASURES = ("census_mb", "tracemalloc_mb")


def _objects_grow(counts: list[float]) -> bool:
    """The object count climbed in every cycle, by more than the noise."""
    d = _deltas(counts)
    return bool(d) and all(x > max(PY_NOISE_BLOCKS, PY_NOISE_FRACTION * counts[0]) for x in d)


def _python_growth(cycles: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The Python heap's growth: in bytes by the census (else tracemalloc), with the object
    count (allocated blocks, or the census's objects) beside it; or in blocks alone."""
    census = _series(cycles, "py_census_mb")
    counted = _series(cycles, "py_census_objects")
    traced = _series(cycles, "py_traced_mb")
    blocks = _series(cycles, "py_blocks")
    rss = [float(c["post_rest_mb"]) for c in cycles]
    # Many small objects: their count climbs too. tracemalloc's own tables (a trace per live
    # object) are malloc'd, so with it the traced bytes can explain less than half of the
    # growth while malloc's in-use memory seems to explain it (seen: 1,000 small strings a
    # request, traced +46 of +114 MB, blocks +300,000 a cycle).
    objects = _objects_grow(blocks) or _objects_grow(counted)
    notes = []
    if census:
        notes.append(f"census {census[0]:.1f} -> {census[-1]:.1f} MB"
                     + (f" in {int(counted[0]):,} -> {int(counted[-1]):,} objects"
                        if counted else ""))
    if traced:
        notes.append(f"tracemalloc {traced[0]:.1f} -> {traced[-1]:.1f} MB")
    if blocks:
        notes.append(f"allocated blocks {int(blocks[0]):,} -> {int(blocks[-1]):,}")
    summary = ", ".join(notes)

    def in_bytes(series: list[float]) -> tuple[bool, bool, float]:
        d = _deltas(series)
        floor = max(0.5, PY_NOISE_FRACTION * series[0])
        every = bool(d) and all(x > floor for x in d)
        growth = series[-1] - series[0]
        explains = growth > 0 and (growth >= EXPLAINS * (rss[-1] - rss[0]) or (every and objects))
        return every, explains, growth

    for measure, series in (("census_mb", census), ("tracemalloc_mb", traced)):
        if series:
            every, explains, growth = in_bytes(series)
            if measure == "census_mb" and traced:  # either measure of the bytes may name it
                explains = explains or in_bytes(traced)[1]
            return {"measure": measure, "values": [_r(x, 2) for x in series],
                    "grows_every_cycle": every, "growth_mb": _r(growth),
                    "explains": explains, "objects_grow_every_cycle": objects,
                    "summary": summary}
    if blocks:
        d = _deltas(blocks)
        floor = max(PY_NOISE_BLOCKS, PY_NOISE_FRACTION * blocks[0])
        return {"measure": "py_blocks", "values": [int(x) for x in blocks],
                "grows_every_cycle": bool(d) and all(x > floor for x in d),
                "summary": summary}
    return None


# -------------------------------------------------------------------------------------------
# From the files of a variant folder to the per-cycle figures `decide` takes.


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


CENSUS_ALIVE_S = 5.0  # a process that sampled this close to a rest's end was alive at it


def census_totals(events: list[dict[str, Any]], cycle: int,
                  samples: dict[int, list[dict[str, Any]]], t: float) -> dict[str, float | None]:
    """The heap census after a cycle's rest, summed over the probed processes alive at its end
    (None if one of them did not answer: a sum without it would fall; {} if none did)."""
    mine = {int(e.get("pid", 0)): e for e in events
            if e.get("event") == "census" and e.get("cycle") == cycle}
    if not mine:
        return {}
    alive = {pid for pid, rows in samples.items()
             if any(t - CENSUS_ALIVE_S <= r["t"] <= t for r in rows)}
    if not alive <= set(mine):
        return {"py_census_mb": None, "py_census_objects": None}
    return {"py_census_mb": sum(float(e["py_bytes_mb"]) for e in mine.values()),
            "py_census_objects": sum(int(e.get("objects") or 0) for e in mine.values())}


def outside_totals(rows: list[dict[str, Any]], cycle: int,
                   skip: set[int]) -> dict[str, float | None]:
    """glibc's totals read from outside after a cycle's rest, summed over the processes the
    probes did not cover ({} if none was read; None where one of them could not be)."""
    mine = [r for r in rows if r.get("event") == "malloc" and r.get("cycle") == cycle
            and r.get("pid") not in skip]
    if not mine:
        return {}
    if any(not r.get("malloc") for r in mine):
        return {"malloc_in_use_mb": None, "malloc_free_mb": None}
    return {"malloc_in_use_mb": sum(r["malloc"]["in_use"] + r["malloc"]["mmap"] for r in mine),
            "malloc_free_mb": sum(r["malloc"]["free"] for r in mine)}


def cycle_figures(phase_list: list[dict[str, Any]], mem: list[tuple[float, float]],
                  steps: list[dict[str, Any]],
                  samples: dict[int, list[dict[str, Any]]],
                  outside_rows: list[dict[str, Any]] | None = None,
                  events: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One entry per cycle: requests, complete, and the figures at the end of its rest (the
    `rest` phase, or without one the pause after the cycle's last step): the probes' (their
    samples, and the heap census taken just after the rest), and for the processes without
    one, glibc's totals read from outside."""
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
            inside = probe_totals(samples, t1)
            entry.update({k: _r(v, 2) for k, v in inside.items()})
            entry.update({k: v if k.endswith("objects") else _r(v, 2)
                          for k, v in census_totals(events or [], c, samples, t1).items()})
            out_of = outside_totals(outside_rows or [], c, set(samples))
            for key in ("malloc_in_use_mb", "malloc_free_mb"):
                parts = [d[key] for d in (inside, out_of) if key in d]
                if parts:
                    entry[key] = None if None in parts else _r(sum(p for p in parts
                                                                    if p is not None), 2)
        out.append(entry)
    return out


def census_pause(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    """How the heap census went: at how many rests, and the longest pause it took."""
    rows = [e for e in events if e.get("event") == "census"]
    if not rows:
        return None
    return {"rests": len({e.get("cycle") for e in rows if e.get("cycle")}),  # 0: warm-up's
            "processes": len({e.get("pid") for e in rows}),
            "max_took_s": max(float(e.get("took_s") or 0) for e in rows),
            "max_objects": max(int(e.get("objects") or 0) for e in rows)}


def kept_at(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where the live Python memory allocated after warm-up is (the probes' `sites` events at
    the end), summed by site over the processes, largest first."""
    kept: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for e in events:
        if e.get("event") == "sites" and e.get("based"):
            for site in e.get("top") or []:
                kept[site["where"]][0] += float(site.get("kept_mb") or 0)
                kept[site["where"]][1] += float(site.get("blocks") or 0)
    total = sum(mb for mb, _ in kept.values())
    floor = max(SITE_FLOOR_MB, 0.01 * total)  # a request's buffers, a log line: not the leak
    top = sorted(kept.items(), key=lambda kv: -kv[1][0])[:TOP_SITES]
    return [{"where": w, "kept_mb": round(mb, 2), "blocks": int(n)} for w, (mb, n) in top
            if mb >= floor]


def from_files(variant_dir: Path | VariantFiles, phase_list: list[dict[str, Any]],
               mem: list[tuple[float, float]], steps: list[dict[str, Any]],
               profile_cycles: int | None = None) -> dict[str, Any]:
    """The verdict of one variant folder, with the cycle figures it was decided from."""
    v = files_of(variant_dir)
    by_pid, events = v.probes
    rows = v.outside
    cycles = cycle_figures(phase_list, mem, steps, by_pid, rows, events)
    trims = [e for e in events if e.get("event") == "trim"]
    trims += [r for r in rows if r.get("event") == "trim" and "error" not in r]
    freed = sum(float(t.get("freed_mb") or 0) for t in trims) if trims else None
    read = [r for r in rows if "error" not in r]
    python = True if by_pid else (any(r.get("python") for r in read) if read else None)
    once = runs_once(profile_cycles, len(cycles), bool(steps))
    out = decide(cycles, freed, python, 1 if once else profile_cycles)
    out["per_cycle"] = cycles
    vias = sorted({str(r.get("via")) for rows_ in by_pid.values() for r in rows_[:1]
                   if r.get("via")})
    out["probes"] = {"processes": len(by_pid),
                     "allocators": sorted({r.get("allocator", "?") for rows in by_pid.values()
                                           for r in rows}),
                     "injected": "hook" in vias, "started_by": vias,
                     "tracemalloc": "from start-up" if any(
                         "tracemalloc_mb" in rows_[0] for rows_ in by_pid.values())
                     else "after warm-up" if any("tracemalloc_mb" in rows_[-1]
                                                 for rows_ in by_pid.values()) else None,
                     "census": census_pause(events),
                     "trims": [t for t in trims if t.get("via") != "gdb"]} if by_pid else None
    if rows:
        pauses = [float(r["pause_s"]) for r in read if r.get("pause_s") is not None]
        out["outside"] = {
            "processes": len({r["pid"] for r in rows}), "reads": len(read),
            "max_pause_s": max(pauses) if pauses else None,
            "errors": sorted({str(r["error"]) for r in rows if "error" in r}),
            "trims": [r for r in rows if r.get("event") == "trim"]}
    if out["verdict"] == "leak" and out.get("where") != "native allocations":
        out["kept_at"] = kept_at(events)
    # What leaks, by type and line: for a leak, or wherever the culprit window named lines.
    # The culprit window's native stacks and `settled` are in phases.json (read, and cached,
    # by the caller already; a folder without one is a caller's synthetic case).
    window_info = None
    if (v.dir / "phases.json").exists():
        window_info, out["settled"] = v.phases.get("window"), v.phases.get("settled")
    found = culprit.of(events, window_info)
    named = found is not None and (out["verdict"] == "leak" or bool(
        (found.get("window") or {}).get("lines")) or bool((found.get("native") or {}).get(
            "stacks")))
    out["culprit"] = found if named else None
    if out["verdict"] == "allocator retention" or out.get("retention"):
        out["arenas"] = culprit.arenas(events, freed)  # which arenas hold it, what would apply
    out["headline"] = headline(out)
    return out


# -------------------------------------------------------------------------------------------
# The differential hypothesis (`diagnose`): the same variant under glibc and under jemalloc.


def differential(glibc: dict[str, Any], other: dict[str, Any],
                 allocator: str = "jemalloc") -> dict[str, Any]:
    """Growth that vanishes under another allocator was glibc keeping freed memory; growth
    that stays (per 1,000 requests: the two runs rarely serve as many) is kept by the program
    (a leak). From the two verdicts' figures alone."""
    g, o = glibc.get("growth_after_warmup_mb"), other.get("growth_after_warmup_mb")
    out: dict[str, Any] = {"glibc_growth_mb": g, f"{allocator}_growth_mb": o,
                           "hypothesis": "inconclusive"}
    if g is None or o is None:
        out["reason"] = "one of the two runs has too few complete cycles to compare"
        return out
    noise = max(float(glibc.get("noise_mb") or NOISE_MB), float(other.get("noise_mb") or NOISE_MB))
    said = f"post-rest memory grew {g:+.1f} MB under glibc and {o:+.1f} MB under {allocator}"
    rates = [x.get("growth_per_1000_requests_mb") for x in (glibc, other)]
    if None not in rates:
        said += f" ({rates[0]:+.1f} and {rates[1]:+.1f} MB per 1,000 requests)"
    if g <= noise:
        level = [(x.get("post_rest_mb") or [None])[-1] for x in (glibc, other)]
        out["hypothesis"] = "plateau"
        out["reason"] = f"{said}: no growth under glibc (noise {noise:.1f} MB) to explain"
        if None not in level:
            above = float(level[0]) - float(level[1])
            out["glibc_above_mb"] = _r(above)
            out["reason"] += (f"; at the last rest glibc held {above:+.1f} MB against "
                              f"{allocator} (what it keeps once warm: see its verdict's "
                              "retention)")
    elif o <= noise:
        out["hypothesis"] = "allocator retention"
        out["reason"] = f"{said}: it vanishes under {allocator}, so glibc kept freed memory"
    elif _kept_share(glibc, other) >= EXPLAINS:
        out["hypothesis"] = "leak"
        out["reason"] = f"{said}: it stays under {allocator}, so the program keeps it"
    else:
        out["hypothesis"] = "leak and allocator retention"
        out["reason"] = (f"{said}: {allocator} keeps less than {EXPLAINS:.0%} of it; part is "
                         "glibc's retention, part is kept by the program")
    out["headline"] = f"{out['hypothesis']} ({said})"
    return out


def _kept_share(glibc: dict[str, Any], other: dict[str, Any]) -> float:
    """How much of glibc's growth the other allocator shows too: per 1,000 requests where
    both runs counted them (the two runs rarely serve as many), else per run."""
    rates = [x.get("growth_per_1000_requests_mb") for x in (glibc, other)]
    if None in rates or not rates[0]:
        rates = [x.get("growth_after_warmup_mb") for x in (glibc, other)]
    return float(rates[1] or 0) / float(rates[0] or 1)
