"""Open-loop arrival schedules: when each request is meant to be sent, whatever the server does.

A closed-loop user sends its next request only after the last one answered, so a slow server
is sent less and its queue never shows in the latency (coordinated omission). An open-loop load
fixes the send times in advance, from the rate alone; latency is then measured from the
intended send time, so a request that waited behind a slow one counts the wait.

    constant   every 1/rate seconds (wrk2, perf_analyzer's constant request-rate mode)
    poisson    exponential gaps of mean 1/rate from a seeded generator (MLPerf LoadGen's Server
               scenario, perf_analyzer's poisson mode): the bursts a crowd of independent
               clients makes

The schedule is an endless iterator of offsets (seconds from the step's start): a step may end
early (`until_stable`) or late, and the schedule must not care.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

ARRIVALS = ("constant", "poisson")


def arrivals(rate: float, kind: str = "poisson", seed: int = 0) -> Iterator[float]:
    """Offsets in seconds from the start, in order, `rate` per second on average.

    The same (rate, kind, seed) gives the same schedule, so two runs of a profile send the same
    bursts. The first request goes at 0 for `constant`, after one gap for `poisson`.
    """
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    if kind == "constant":
        return (i / rate for i in itertools.count())
    if kind == "poisson":
        return _poisson(rate, random.Random(seed))
    raise ValueError(f"arrival {kind!r} is not one of {', '.join(ARRIVALS)}")


def _poisson(rate: float, rng: random.Random) -> Iterator[float]:
    t = 0.0
    while True:
        t += rng.expovariate(rate)
        yield t


def step_seed(seed: int, index: int) -> int:
    """Each step of a profile gets its own (still fixed) stream of gaps."""
    return seed * 1_000_003 + index
