"""Whether keep-alive requests waited for a delayed ACK, from their times
(infbench/measure/keepalive.py takes them): the figures, and the sentence a run says."""

from __future__ import annotations

import statistics
from typing import Any

STALL_MS = 25.0


FLOOR_MS = 30.0


def figures(times: list[float]) -> dict[str, Any]:
    """first_ms, later_median_ms, and `stalled` when the later ones wait for an ACK."""
    if len(times) < 3:
        return {"requests": len(times), "first_ms": times[0] if times else None,
                "later_median_ms": None, "stalled": False,
                "why": "fewer than 3 answers on one connection (the server closed it)"
                if times else "no answer"}
    first, later = times[0], statistics.median(times[1:])
    stalled = later >= FLOOR_MS and later - first >= STALL_MS
    return {"requests": len(times), "first_ms": round(first, 2),
            "later_median_ms": round(later, 2), "stalled": stalled}


def message(found: dict[str, Any]) -> str:
    return (f"keep-alive requests to the health path took a median "
            f"{found['later_median_ms']:.0f} ms against {found['first_ms']:.0f} ms for the "
            "first on the connection: the signature of Nagle's algorithm meeting the client's "
            "delayed ACK (~40 ms added to every request on a kept-alive connection; Uvicorn "
            "--workers N leaves TCP_NODELAY off: uvicorn#3149; INFBENCH_TCP_NODELAY=1 sets it "
            "in our servers)")
