"""Did a step settle? Windows of throughput, median latency and memory, and the rule that says.

A fixed-length step reports whatever its window held: a server still warming up, a queue still
growing, memory still climbing. Like perf_analyzer (which wants three measurement windows within
10% of each other before it reports), a step here is cut into windows of `window_s` seconds from
the start of its load to the moment the load stopped (the drain is not measured), and it is

  stable  when the last `count` windows' throughput (requests finished per second) and median
          latency each lie within `tolerance` of their mean - or within what sampling alone
          would move them, when that is wider: a window of n requests counts them with a
          Poisson error of sqrt(n) (2 of those allowed), its median has a 95% confidence
          interval from its own order statistics (the widest of the windows' allowed), and
          latency always passes within LATENCY_FLOOR_MS (the clock's and Locust's resolution).
          So a few requests per window do not read as instability, and a queue that keeps
          growing still does. Windows with fewer than MIN_REQUESTS requests cannot be judged;
  memory flat  when the memory samples over those same windows, fitted with a straight line,
          change by no more than the verdict's noise (max(8 MB, 1%)) across the windows' span.

Windows come from the step's per-request log (`*_requests.csv`, written by the locustfile:
exact medians) or, for runs without one, from Locust's `*_stats_history.csv` (one row a second;
its median is Locust's "current" one, over the last ~10 s, so short windows overlap: said in
`source`).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from infbench.analysis.verdict import NOISE_FRACTION, NOISE_MB
from infbench.config import DEFAULT_WINDOW_S

LATENCY_FLOOR_MS = 1.0
MIN_REQUESTS = 5  # per window, below which the rule does not judge
COUNT_SIGMAS = 2.0
DEFAULT_WINDOWS = 3
DEFAULT_TOLERANCE = 0.10


def within(values: list[float], tolerance: float, floor: float = 0.0) -> bool:
    """All values within `tolerance` (a fraction of their mean), or within `floor` (absolute)
    of their mean. No values, or a mean of 0 without a floor, is not "within"."""
    if not values:
        return False
    mean = sum(values) / len(values)
    if mean <= 0 and floor <= 0:
        return False
    return all(abs(v - mean) <= max(tolerance * mean, floor) for v in values)


def spread(values: list[float]) -> float | None:
    """Largest distance from the mean, as a fraction of the mean (None: no mean to divide by)."""
    if not values:
        return None
    mean = sum(values) / len(values)
    if mean <= 0:
        return None
    return max(abs(v - mean) for v in values) / mean


@dataclass(frozen=True)
class Window:
    t0: float
    t1: float
    requests: int
    failures: int
    rps: float
    p50_ms: float | None
    p95_ms: float | None = None
    p50_ci_ms: float | None = None  # half-width of the median's 95% confidence interval


@dataclass(frozen=True)
class RequestRow:
    """One finished request of a step's log: when it finished (unix s), its latency (ms, from
    the intended send time for open-loop loads), whether it passed, its send lag (ms, open
    loop only)."""

    t_end: float
    latency_ms: float
    ok: bool
    lag_ms: float | None = None
    name: str = ""


def read_requests(path: Path) -> list[RequestRow] | None:
    """A step's `*_requests.csv`, or None if there is none."""
    if not path.exists():
        return None
    rows: list[RequestRow] = []
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            try:
                lag = r.get("lag_ms") or ""
                rows.append(RequestRow(float(r["t_end"]), float(r["latency_ms"]),
                                       r.get("ok") == "1", float(lag) if lag else None,
                                       r.get("name") or ""))
            except (KeyError, TypeError, ValueError):
                continue  # a torn line
    rows.sort(key=lambda x: x.t_end)
    return rows


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0..1) by the nearest-rank rule (what Locust and LoadGen report)."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q * len(s) - 1e-9) - 1))
    return s[k]


def median_ci(values: list[float]) -> float | None:
    """Half-width of a 95% confidence interval of the median, from the order statistics
    n/2 -+ 0.98 sqrt(n) (distribution-free); None under MIN_REQUESTS values."""
    n = len(values)
    if n < MIN_REQUESTS:
        return None
    s = sorted(values)
    half = 0.98 * math.sqrt(n)
    lo = s[max(0, math.floor(n / 2 - half))]
    hi = s[min(n - 1, math.ceil(n / 2 + half))]
    return (hi - lo) / 2


def windows_from_requests(rows: list[RequestRow], t0: float, t1: float,
                          width: float) -> list[Window]:
    """Full windows of `width` seconds from t0 up to t1; a request belongs to the window it
    finished in."""
    out: list[Window] = []
    if width <= 0 or t1 - t0 < width:
        return out
    n = int((t1 - t0 + 1e-9) // width)
    buckets: list[list[RequestRow]] = [[] for _ in range(n)]
    for r in rows:
        k = int((r.t_end - t0) // width)
        if 0 <= k < n:
            buckets[k].append(r)
    for k, b in enumerate(buckets):
        lat = [r.latency_ms for r in b]
        out.append(Window(t0 + k * width, t0 + (k + 1) * width, len(b),
                          sum(1 for r in b if not r.ok), len(b) / width,
                          percentile(lat, 0.5), percentile(lat, 0.95), median_ci(lat)))
    return out


def read_history(path: Path) -> list[dict[str, float]]:
    """Locust's `*_stats_history.csv` Aggregated rows: time, cumulative requests/failures, and
    the current median (ms)."""
    out: list[dict[str, float]] = []
    if not path.exists():
        return out
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("Name") != "Aggregated":
                continue
            try:
                p50 = r.get("50%") or ""
                out.append({"t": float(r["Timestamp"]),
                            "requests": float(r["Total Request Count"]),
                            "failures": float(r["Total Failure Count"]),
                            "p50_ms": float(p50) if p50 not in ("", "N/A") else -1.0})
            except (KeyError, TypeError, ValueError):
                continue
    out.sort(key=lambda x: x["t"])
    return out


def windows_from_history(hist: list[dict[str, float]], t0: float, t1: float,
                         width: float) -> list[Window]:
    """Full windows from Locust's once-a-second cumulative counts: requests = the count at the
    window's end minus the count at its start (the last row at or before each edge)."""
    out: list[Window] = []
    if width <= 0 or t1 - t0 < width or not hist:
        return out

    def at(t: float) -> dict[str, float] | None:
        before = [h for h in hist if h["t"] <= t + 0.5]
        return before[-1] if before else None

    n = int((t1 - t0 + 1e-9) // width)
    for k in range(n):
        a, b = t0 + k * width, t0 + (k + 1) * width
        ha, hb = at(a), at(b)
        if hb is None:
            continue
        req = hb["requests"] - (ha["requests"] if ha else 0.0)
        fail = hb["failures"] - (ha["failures"] if ha else 0.0)
        p50 = hb["p50_ms"] if hb["p50_ms"] >= 0 else None
        out.append(Window(a, b, int(req), int(fail), req / width, p50))
    return out


def judge_windows(windows: list[Window], count: int = DEFAULT_WINDOWS,
          tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """The rule: the last `count` windows' throughput and median within `tolerance`, or within
    their sampling noise where that is wider (see the module's docstring)."""
    last = windows[-count:] if count > 0 else []
    empty = {"rps_spread": None, "p50_spread": None, "rps_allowance": None,
             "p50_allowance_ms": None}
    if len(last) < count or count <= 0:
        return {**empty, "stable": False,
                "reason": f"{len(windows)} full window(s), the rule needs {count}"}
    rps = [w.rps for w in last]
    p50s = [w.p50_ms for w in last]
    if any(p is None for p in p50s) or not any(rps):
        return {**empty, "stable": False, "reason": "a window without finished requests",
                "rps_spread": spread(rps)}
    if min(w.requests for w in last) < MIN_REQUESTS:
        return {**empty, "stable": False, "rps_spread": spread(rps),
                "reason": f"fewer than {MIN_REQUESTS} requests in a window: too few to judge "
                          "(longer windows needed)"}
    lat = [float(p) for p in p50s if p is not None]
    mean_n = sum(w.requests for w in last) / len(last)
    rps_allow = max(tolerance, COUNT_SIGMAS / math.sqrt(mean_n))
    cis = [w.p50_ci_ms for w in last if w.p50_ci_ms is not None]
    lat_floor = max([LATENCY_FLOOR_MS, *cis])
    ok_rps = within(rps, rps_allow)
    ok_lat = within(lat, tolerance, lat_floor)
    rs, ls = spread(rps), spread(lat)
    if ok_rps and ok_lat:
        reason = (f"last {count} windows agree (throughput within {rps_allow:.0%}, p50 within "
                  f"{tolerance:.0%} or {lat_floor:,.1f} ms)")
    else:
        bad = [what for what, ok in (("throughput", ok_rps), ("p50", ok_lat)) if not ok]
        trail = (" → ".join(f"{x:,.0f}" for x in lat) + " ms, "
                 + " → ".join(f"{x:,.1f}" for x in rps) + " req/s")
        reason = (" and ".join(bad) + " moved beyond tolerance and sampling noise over the "
                  f"last {count} windows (p50 {trail})")
    return {"stable": ok_rps and ok_lat, "reason": reason,
            "rps_spread": None if rs is None else round(rs, 3),
            "p50_spread": None if ls is None else round(ls, 3),
            "rps_allowance": round(rps_allow, 3), "p50_allowance_ms": round(lat_floor, 2)}


def last_figures(rows: list[RequestRow], windows: list[Window],
                 count: int) -> dict[str, Any] | None:
    """Throughput, failures and latency over the last `count` windows only: the figures of
    the part of the step that was judged (perf_analyzer reports its stable windows)."""
    last = windows[-count:] if count > 0 else []
    if not last:
        return None
    a, b = last[0].t0, last[-1].t1
    mine = [r for r in rows if a <= r.t_end < b]
    lat = [r.latency_ms for r in mine]
    return {"t0": round(a, 3), "t1": round(b, 3), "requests": len(mine),
            "failures": sum(1 for r in mine if not r.ok),
            "rps": round(len(mine) / (b - a), 3) if b > a else None,
            "p50_ms": percentile(lat, 0.5), "p95_ms": percentile(lat, 0.95),
            "p99_ms": percentile(lat, 0.99)}


def slope(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope (units per second) of (t, value) points; None under 2 distinct t."""
    if len(points) < 2:
        return None
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    if den <= 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / den


def memory_judge(mem: list[tuple[float, float]], windows: list[Window],
                 count: int = DEFAULT_WINDOWS) -> dict[str, Any]:
    """Has memory stopped climbing over the step's last `count` windows? The fitted change
    over their span against the verdict's noise, max(NOISE_MB, NOISE_FRACTION of the level)."""
    last = windows[-count:] if count > 0 else []
    if len(last) < count or count <= 0:
        return {"flat": False, "reason": "too few windows", "slope_mb_per_min": None,
                "change_mb": None}
    a, b = last[0].t0, last[-1].t1
    pts = [(t, m) for t, m in mem if a <= t <= b]
    s = slope(pts)
    if s is None:
        return {"flat": False, "reason": "no memory samples in the windows",
                "slope_mb_per_min": None, "change_mb": None}
    level = statistics.fmean(m for _, m in pts)
    noise = max(NOISE_MB, NOISE_FRACTION * level)
    change = s * (b - a)
    flat = abs(change) <= noise
    return {"flat": flat, "slope_mb_per_min": round(s * 60, 2), "change_mb": round(change, 1),
            "noise_mb": round(noise, 1),
            "reason": f"{change:+.1f} MB over the last {count} windows "
                      f"({'within' if flat else 'beyond'} the noise, {noise:.0f} MB)"}


def step_stability(prefix: Path, t0: float | None, t1: float | None,
                   mem: list[tuple[float, float]], width: float = DEFAULT_WINDOW_S,
                   count: int = DEFAULT_WINDOWS,
                   tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any]:
    """Windows, the stability rule and the memory rule for one step's files."""
    out: dict[str, Any] = {"window_s": width, "windows_needed": count, "tolerance": tolerance}
    if t0 is None or t1 is None:
        return {**out, "stable": False, "reason": "the step has no load window",
                "source": None, "windows": [], "memory": None}
    rows = read_requests(Path(f"{prefix}_requests.csv"))
    last = None
    if rows is not None:
        wins, source = windows_from_requests(rows, t0, t1, width), "requests.csv (exact)"
        last = last_figures(rows, wins, count)
    else:
        wins = windows_from_history(read_history(Path(f"{prefix}_stats_history.csv")), t0, t1,
                                    width)
        source = "stats_history.csv (Locust's ~10 s current median)"
    verdict = judge_windows(wins, count, tolerance)
    return {**out, **verdict, "source": source, "last": last,
            "windows": [{k: (round(v, 3) if isinstance(v, float) else v)
                         for k, v in asdict(w).items()} for w in wins],
            "memory": memory_judge(mem, wins, count)}
