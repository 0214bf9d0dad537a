"""The capacity search as pure functions of the probes so far: when a probe passes, the next
rate to probe, the answer, and capacity.json (infbench/modes/capacity.py runs the probes).

Like perf_analyzer's latency-threshold search: a probe passes when it is stable, p95 <= the
bound, failures <= 1%, it served what was offered (>= 90%) and the load generator was not the
limit. The rate doubles from the profile's `rate` until a probe fails (halves until one
passes), then bisects between the highest pass and the lowest failure until they are within
`tolerance` of each other. The answer is the highest passing probe's served throughput.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from infbench.results.schemas import CAPACITY_SCHEMA

MAX_FAILURES = 0.01


SERVED_SHARE = 0.90


WINDOW_REQUESTS = 20


@dataclass(frozen=True)
class Search:
    """What the search looks for and how far it goes."""

    p95_ms: float
    start: float = 1.0  # req/s of the first probe
    tolerance: float = 0.05  # stop when the lowest failing rate is within this of the highest pass
    max_probes: int = 10
    min_rate: float = 0.25
    max_failures: float = MAX_FAILURES
    # The most a probe runs (it ends once stable), but never under stable_windows + 1 windows,
    # and a window holds at least WINDOW_REQUESTS requests at the probe's rate.
    probe_seconds: float = 60.0


@dataclass(frozen=True)
class RateProbe:
    """One probe's figures: offered and served requests/s, latency, failures, trust."""

    rate: float
    rps: float | None
    p50_ms: float | None
    p95_ms: float | None
    failure_rate: float = 0.0
    stable: bool = True
    limited: bool = False
    batch: int = 1
    index: int = 0
    requests: int = 0  # how many the figures come from (0: unknown)


def probe_passes(p: RateProbe, s: Search) -> tuple[bool, str]:
    """Does this probe pass, and why not."""
    if p.p95_ms is None or p.rps is None:
        return False, "no request finished"
    if p.limited:
        return False, "limited by the load generator"
    why = []
    if p.p95_ms > s.p95_ms:
        why.append(f"p95 {p.p95_ms:,.0f} ms > {s.p95_ms:g} ms")
    if p.failure_rate > s.max_failures:
        why.append(f"failures {p.failure_rate:.1%} > {s.max_failures:.0%}")
    # Served below offered by more than counting noise (2 sqrt(n)) could explain: a backlog.
    short = max(1 - SERVED_SHARE, 2 / math.sqrt(p.requests) if p.requests else 0.0)
    if p.rps < (1 - short) * p.rate:
        why.append(f"served {p.rps:.2f} of {p.rate:.2f} req/s")
    if not p.stable:
        why.append("not stable")
    return (not why), "; ".join(why) or "pass"


def bracket(probes: list[RateProbe], s: Search) -> tuple[float | None, float | None]:
    """(highest passing rate below the lowest failure, lowest failing rate). A pass above a
    failure (noise) does not move the bracket: the answer stays on the safe side."""
    bad = [p.rate for p in probes if not probe_passes(p, s)[0]]
    hi = min(bad) if bad else None
    ok = [p.rate for p in probes if probe_passes(p, s)[0] and (hi is None or p.rate < hi)]
    return (max(ok) if ok else None), hi


def next_rate(probes: list[RateProbe], s: Search) -> float | None:
    """The next rate to probe, or None when the search is done."""
    if not probes:
        return s.start
    if len(probes) >= s.max_probes:
        return None
    lo, hi = bracket(probes, s)
    if hi is None:
        assert lo is not None
        return lo * 2
    if lo is None:
        nxt = hi / 2
        return nxt if nxt >= s.min_rate else None
    if hi / lo - 1 <= s.tolerance:
        return None
    return (lo + hi) / 2


def answer(probes: list[RateProbe], s: Search) -> dict[str, Any]:
    """The highest passing probe below the lowest failure, with what bounded the search."""
    lo, hi = bracket(probes, s)
    best = next((p for p in probes if p.rate == lo and probe_passes(p, s)[0]), None)
    out: dict[str, Any] = {"p95_bound_ms": s.p95_ms, "found": best is not None,
                           "lowest_failing_rate": hi, "probes": len(probes)}
    if best is not None:
        # The offered rate is the figure: exact, where the served count carries Poisson noise
        # (the pass rule already checked the two agree).
        out.update({"rate": best.rate, "rps": best.rps,
                    "images_per_s": round(best.rate * best.batch, 2),
                    "p50_ms": best.p50_ms, "p95_ms": best.p95_ms, "batch": best.batch})
    if hi is not None:
        worst = next(p for p in probes if p.rate == hi)
        out["bounded_by"] = probe_passes(worst, s)[1]
        out["converged"] = lo is not None and hi / lo - 1 <= s.tolerance
    else:
        out["bounded_by"] = "no probe failed (max_probes reached)"
        out["converged"] = False
    return out


def probe_from_step(st: dict[str, Any], rate: float) -> RateProbe:
    """A RateProbe from one step of summary.step_figures + trust.annotate: the figures of its
    judged (last) windows when the step has a request log, else of the whole step."""
    fig = (st.get("stability") or {}).get("last") or st
    req, fail = fig.get("requests") or 0, fig.get("failures") or 0
    return RateProbe(rate=rate, rps=fig.get("rps"), p50_ms=fig.get("p50_ms"),
                 p95_ms=fig.get("p95_ms"), failure_rate=(fail / req) if req else 0.0,
                 stable=bool(st.get("stable")), limited=bool(st.get("limited_by_loadgen")),
                 batch=int(st.get("batch") or 1), index=int(st.get("index") or 0),
                 requests=int(req))


def probe_window(rate: float, window_s: float, windows: int, s: Search) -> tuple[float, float]:
    """(window seconds, most seconds) of a probe at `rate`: windows long enough to hold
    WINDOW_REQUESTS requests, and room for the stability rule's windows plus two (Locust's
    run time also counts its own start)."""
    w = max(window_s, WINDOW_REQUESTS / rate)
    return w, max(s.probe_seconds, (windows + 2) * w)


def document(probes: list[RateProbe], s: Search) -> dict[str, Any]:
    return {"schema": CAPACITY_SCHEMA, "search": dataclasses.asdict(s),
            "answer": answer(probes, s),
            "probes": [{**dataclasses.asdict(p), "pass": probe_passes(p, s)[0],
                        "why": probe_passes(p, s)[1]} for p in probes],
            "definitions": {
                "pass": f"stable, p95 <= bound, failures <= {s.max_failures:.0%}, served >= "
                        f"{SERVED_SHARE:.0%} of the offered rate, load generator not limited",
                "rate": "offered requests/s (open loop, the profile's arrival process)",
                "rps": "requests/s served (Locust's Aggregated row)",
                "latency": "from each request's intended send time"}}
