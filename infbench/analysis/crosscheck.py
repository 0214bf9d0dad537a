"""A second opinion, judged: our closed loop's figures beside a dedicated tool's (wrk, hey,
h2load) on the same request, connections and seconds, and whether they agree.

Pure: the rounds' figures in, the medians, ratios and verdict out. Our side's figures come from
the step's own per-request log (`*_requests.csv`: every finished request's latency, not Locust's
rounded percentiles), over the load itself (test_start .. test_stopping of `*_counts.json`).

The tolerance, and why: a load generator that is not the limit lets the server set the pace, so
two of them must see the same server. Issue 21 sets the bar for ours: requests/s within 5% of
wrk's, p50 within max(1 ms, 5%). p99 is a tail of a few dozen requests a second of load, so it
moves more between two runs of the same tool: within max(2 ms, 20%).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.analysis.stability import percentile, read_requests


@dataclass(frozen=True)
class Tolerance:
    rps_share: float = 0.05
    p50_share: float = 0.05
    p50_floor_ms: float = 1.0
    p99_share: float = 0.20
    p99_floor_ms: float = 2.0

    def as_dict(self) -> dict[str, float]:
        return {"rps_share": self.rps_share, "p50_share": self.p50_share,
                "p50_floor_ms": self.p50_floor_ms, "p99_share": self.p99_share,
                "p99_floor_ms": self.p99_floor_ms}

    def said(self) -> str:
        return (f"req/s within {self.rps_share:.0%}, p50 within max({self.p50_floor_ms:g} ms, "
                f"{self.p50_share:.0%}), p99 within max({self.p99_floor_ms:g} ms, "
                f"{self.p99_share:.0%}) of the tool's")


TOLERANCE = Tolerance()


def step_figures(prefix: Path, counts: dict[str, Any]) -> dict[str, Any]:
    """Requests/s (successes over the load's span), p50 and p99 (ms, successes) of one step of
    ours, from its per-request log."""
    t0, t1 = counts.get("test_start"), counts.get("test_stopping")
    rows = read_requests(Path(f"{prefix}_requests.csv")) or []
    out: dict[str, Any] = {"requests": len(rows), "ok": 0, "failed": 0, "rps": None,
                           "p50_ms": None, "p99_ms": None}
    if not (t0 and t1 and t1 > t0):
        return out
    inside = [r for r in rows if t0 <= r.t_end <= t1]
    ok = [r.latency_ms for r in inside if r.ok]
    out.update(requests=len(inside), ok=len(ok), failed=len(inside) - len(ok),
               rps=round(len(ok) / (t1 - t0), 2))
    p50, p99 = percentile(ok, 0.5), percentile(ok, 0.99)
    out["p50_ms"] = None if p50 is None else round(p50, 3)
    out["p99_ms"] = None if p99 is None else round(p99, 3)
    return out


def _median(values: list[float | None]) -> float | None:
    have = [v for v in values if v is not None]
    return round(statistics.median(have), 3) if have else None


def medians(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """The median of each figure over the rounds of one side that ran without a fault."""
    good = [r for r in rounds if not r.get("error")]
    return {k: _median([r.get(k) for r in good]) for k in ("rps", "p50_ms", "p99_ms")}


def _within(ours: float | None, tool: float | None, share: float, floor: float = 0.0
            ) -> bool | None:
    if ours is None or tool is None:
        return None
    return abs(ours - tool) <= max(floor, share * abs(tool))


def judge(ours: dict[str, float | None], tool: dict[str, float | None],
          tol: Tolerance = TOLERANCE) -> dict[str, Any]:
    """Ratios (ours / the tool's) and, per figure, whether it is within the tolerance; `agree`
    is True only when all three are (None when a figure is missing on either side)."""
    def ratio(k: str) -> float | None:
        a, b = ours.get(k), tool.get(k)
        return round(a / b, 3) if a is not None and b else None

    within = {
        "rps": _within(ours.get("rps"), tool.get("rps"), tol.rps_share),
        "p50_ms": _within(ours.get("p50_ms"), tool.get("p50_ms"), tol.p50_share,
                          tol.p50_floor_ms),
        "p99_ms": _within(ours.get("p99_ms"), tool.get("p99_ms"), tol.p99_share,
                          tol.p99_floor_ms),
    }
    agree = None if any(v is None for v in within.values()) else all(within.values())
    return {"ratio": {k: ratio(k) for k in ("rps", "p50_ms", "p99_ms")}, "within": within,
            "agree": agree}


def spread(rounds: list[dict[str, Any]]) -> float | None:
    """How far one side's rounds are apart in req/s: (max - min) / median, None under two."""
    rps = [r["rps"] for r in rounds if r.get("rps")]
    mid = _median(list(rps))
    return round((max(rps) - min(rps)) / mid, 3) if len(rps) > 1 and mid else None


def order(rounds: int) -> list[str]:
    """Which side runs when: ABBA over pairs of rounds (tool, ours, ours, tool, tool, ...), so
    that a drift over the run (a warming cache, a neighbour's load) falls on both sides."""
    out: list[str] = []
    for i in range(rounds):
        out += ["tool", "ours"] if i % 2 == 0 else ["ours", "tool"]
    return out
