"""The culprit window: after everything is measured, tracemalloc traces one more step of load
and a rest in each probed process, and what was allocated in it and is still alive is written
by line (servers/shared/probes.py, `window-start.request` and `window.request`).

Outside the judged cycles, so its cost (tracemalloc with WINDOW_FRAMES frames makes a server
several times slower while it traces, and its tables are malloc'd) never reaches the verdict's
figures; and only when it can name something: with `culprit = "auto"` (the default) when the
heap census climbed in every cycle after warm-up, `"always"` in any cycled run with probes,
`"never"` not at all. The folded lines are read by infbench/analysis/culprit.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from infbench.config import Profile, Step
from infbench.measure import census

START_REQUEST = "window-start.request"  # the contract with servers/shared/probes.py
END_REQUEST = "window.request"
LOAD_S = 15.0  # the window's step: the profile's first step, at most this long
START_WAIT_S = 10.0
END_WAIT_S = 120.0  # a snapshot of a few million traces takes a while; a hung one is not waited


def step_of(profile: Profile) -> Step:
    """The window's load: the profile's first step, cut to LOAD_S, never until-stable."""
    first = profile.steps[0]
    return Step(batch=first.batch, seconds=min(first.seconds, LOAD_S), users=first.users,
                spawn_rate=first.spawn_rate, rate=first.rate)


def open_(dirs: list[Path], check: Callable[[], None],
          touch: Callable[[Path], None]) -> dict[str, Any]:
    return census.ask_probes(dirs, START_REQUEST, "window_start", check, touch, START_WAIT_S)


def close(dirs: list[Path], check: Callable[[], None],
          touch: Callable[[Path], None]) -> dict[str, Any]:
    return census.ask_probes(dirs, END_REQUEST, "window", check, touch, END_WAIT_S)
