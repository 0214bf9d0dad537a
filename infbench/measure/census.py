"""The heap census at each rest: ask the probed processes to count the Python heap's bytes
(servers/shared/probes.py, `census-<cycle>.request`) and wait until each has answered.

After the rest, not during it: the verdict reads memory over the rest's last seconds, and the
census allocates while it walks (a list of the tracked objects, a set of ids). The load waits
for it, so that it never runs under load nor counts a request's objects; the wait is the
run's `census` phase, and each process's own pause is its `took_s`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REQUEST = "census-{cycle}.request"  # the contract with servers/shared/probes.py
WAIT_S = 60.0  # a TensorFlow server's census takes seconds; a hung one is not waited for
ALIVE_S = 3.0  # a probe file written this recently is a live process's (one line a second)
POLL_S = 0.2


def _answered(path: Path, offset: int, match: Callable[[dict[str, Any]], bool],
              needle: str) -> bool:
    with contextlib.suppress(OSError), path.open() as f:
        f.seek(offset)
        for line in f:
            if needle in line:
                with contextlib.suppress(json.JSONDecodeError):
                    if match(json.loads(line)):
                        return True
    return False


def ask_probes(dirs: list[Path], request: str, event: str, check: Callable[[], None],
               touch: Callable[[Path], None], wait: float = WAIT_S,
               match: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
    """Create `request` in each probe folder and wait until every live probe (a file written
    in the last ALIVE_S) has written an `event` line after it (one that `match` accepts), or
    `wait` seconds; `check` is called while waiting (the harness's are-the-servers-alive)."""
    now = time.time()
    live: dict[Path, int] = {}
    for d in dirs:
        for f in d.glob("probes-*.jsonl"):
            with contextlib.suppress(OSError):
                st = f.stat()
                if now - st.st_mtime <= ALIVE_S:
                    live[f] = st.st_size
    for d in dirs:
        touch(d / request)

    def accepts(row: dict[str, Any]) -> bool:
        return row.get("event") == event and (match is None or match(row))

    start = time.monotonic()
    pending = list(live)
    while pending and time.monotonic() - start < wait:
        check()
        time.sleep(POLL_S)
        pending = [f for f in pending if not _answered(f, live[f], accepts, f'"{event}"')]
    return {"processes": len(live), "unanswered": len(pending),
            "waited_s": round(time.monotonic() - start, 2)}


def ask(dirs: list[Path], cycle: int, check: Callable[[], None],
        touch: Callable[[Path], None], wait: float = WAIT_S) -> dict[str, Any]:
    """Request the census in each probe folder and wait for every live probe's answer."""
    return ask_probes(dirs, REQUEST.format(cycle=cycle), "census", check, touch, wait,
                      match=lambda row: row.get("cycle") == cycle)
