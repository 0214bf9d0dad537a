"""Does a keep-alive request wait for a delayed ACK? Checked once, before the load.

A server that writes a response's head and body as two sends with Nagle's algorithm on makes
every request after the first on a keep-alive connection wait for the client's delayed ACK:
~40 ms on Linux, whatever the server does. Uvicorn with `--workers N` hands its workers a
listener that asyncio does not set TCP_NODELAY on (uvicorn#3149; servers/shared/nodelay.py). Locust
keeps its connections alive, so the load measures that stall in every request, and nothing
else in a run would say why.

The check: one connection, `REQUESTS` GETs of the health path one after another. The first
is answered at once (a new connection's first segments are ACKed quickly); if the later ones'
median is `STALL_MS` more than the first's and above `FLOOR_MS` (infbench/analysis/
stall.py), the run says so (a note, not a
fault: it is how the server behaves, and the load measures it).
"""

from __future__ import annotations

import http.client
import time
from typing import Any
from urllib.parse import urlsplit

from infbench.analysis import stall

REQUESTS = 8
TIMEOUT_S = 5.0


def measure(url: str, path: str, requests: int = REQUESTS) -> list[float]:
    """Milliseconds of each GET `path` on one keep-alive connection to `url` (http only)."""
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port or 80, timeout=TIMEOUT_S)
    times: list[float] = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            conn.request("GET", path, headers={"Connection": "keep-alive"})
            resp = conn.getresponse()
            resp.read()
            times.append((time.perf_counter() - started) * 1000.0)
            if resp.will_close:  # the server closes after each answer: nothing to stall
                break
    finally:
        conn.close()
    return times


def check(url: str, path: str) -> dict[str, Any]:
    """measure + judge; an error is reported in the result, never raised."""
    try:
        return stall.figures(measure(url, path))
    except (OSError, http.client.HTTPException) as exc:
        return {"requests": 0, "stalled": False, "error": f"{type(exc).__name__}: {exc}"}


