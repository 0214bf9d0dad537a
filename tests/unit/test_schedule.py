"""Open-loop schedules and their config: the rate, the Poisson statistics, the keys."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from infbench import config
from infbench.config import ConfigError, Profile, Step
from infbench.config.schedule import arrivals, step_seed
from infbench.measure import load


def take(it: object, n: int) -> list[float]:
    return list(itertools.islice(it, n))  # type: ignore[call-overload]


def test_constant_arrivals_are_evenly_spaced_at_the_rate() -> None:
    offsets = take(arrivals(8.0, "constant"), 81)
    assert offsets[0] == 0.0
    assert all(b - a == pytest.approx(1 / 8) for a, b in itertools.pairwise(offsets))
    assert sum(1 for t in offsets if t < 10.0) == 80  # rate x seconds


def test_poisson_arrivals_repeat_with_the_seed_and_differ_without_it() -> None:
    a = take(arrivals(50.0, "poisson", seed=3), 200)
    assert a == take(arrivals(50.0, "poisson", seed=3), 200)
    assert a != take(arrivals(50.0, "poisson", seed=4), 200)
    assert all(x < y for x, y in itertools.pairwise(a))
    assert step_seed(0, 1) != step_seed(0, 2) and step_seed(1, 1) != step_seed(0, 1)


def test_poisson_gaps_are_exponential_with_mean_one_over_rate() -> None:
    rate, n = 40.0, 20_000
    offsets = take(arrivals(rate, "poisson", seed=7), n)
    gaps = [offsets[0], *(b - a for a, b in itertools.pairwise(offsets))]
    mean = sum(gaps) / n
    # The mean of n exponential gaps has a standard error of (1/rate)/sqrt(n): 4 of them.
    assert abs(mean - 1 / rate) < 4 * (1 / rate) / math.sqrt(n)
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / (n - 1))
    assert sd / mean == pytest.approx(1.0, abs=0.05)  # coefficient of variation 1
    # Kolmogorov-Smirnov against 1 - exp(-rate x): D under the 1% critical value 1.63/sqrt(n).
    s = sorted(gaps)
    d = max(max(abs((i + 1) / n - (1 - math.exp(-rate * g))),
                abs(i / n - (1 - math.exp(-rate * g)))) for i, g in enumerate(s))
    assert d < 1.63 / math.sqrt(n)
    # A constant schedule is as far from exponential as it gets: the same test rejects it.
    c = [1 / rate] * n
    dc = max(abs((i + 1) / n - (1 - math.exp(-rate * g))) for i, g in enumerate(c))
    assert dc > 1.63 / math.sqrt(n)


def test_poisson_counts_per_second_have_variance_equal_to_mean() -> None:
    rate, seconds = 30.0, 2_000
    counts = [0] * seconds
    for t in arrivals(rate, "poisson", seed=11):
        if t >= seconds:
            break
        counts[int(t)] += 1
    mean = sum(counts) / seconds
    var = sum((c - mean) ** 2 for c in counts) / (seconds - 1)
    assert mean == pytest.approx(rate, rel=0.02)
    assert var / mean == pytest.approx(1.0, abs=0.15)  # index of dispersion of a Poisson process


@pytest.mark.parametrize(("rate", "kind"), [(0.0, "poisson"), (-1.0, "constant"),
                                            (5.0, "bursty")])
def test_bad_schedules_are_refused(rate: float, kind: str) -> None:
    with pytest.raises(ValueError):
        next(arrivals(rate, kind))


# -- config --------------------------------------------------------------------------------

HEAD = """[models.m]\narch = "tiny_cnn"\ninput_size = 32\n
[variants.a]\nserver = "uvicorn"\n
"""


def profile(tmp_path: Path, body: str) -> Profile:
    p = tmp_path / "e.toml"
    p.write_text(HEAD + "[profiles.p]\n" + body)
    return config.load(p).profile("p")


def test_a_profile_may_give_a_rate_instead_of_users(tmp_path: Path) -> None:
    p = profile(tmp_path, 'rate = 12\narrival = "constant"\nmax_in_flight = 8\n'
                "steps = [{ batch = 1, seconds = 2 }, { batch = 2, seconds = 2, rate = 30 },"
                " { batch = 3, seconds = 2, users = 4, spawn_rate = 4 }]\n")
    assert (p.arrival, p.max_in_flight, p.users) == ("constant", 8, 0)
    assert [p.rate_of(s) for s in p.steps] == [12.0, 30.0, 0.0]  # the last is closed-loop


@pytest.mark.parametrize(("body", "message"), [
    ("steps = [{ batch = 1, seconds = 2 }]\n", r"missing required key 'users' \(or a request "
     r"`rate`"),
    ("users = 2\nsteps = [{ batch = 1, seconds = 2 }]\n", r"missing required key 'spawn_rate'"),
    ("rate = 0\nsteps = [{ batch = 1, seconds = 2 }]\n", r"profiles\.p\.rate: must be > 0"),
    ('rate = 5\narrival = "bursty"\nsteps = [{ batch = 1, seconds = 2 }]\n',
     r"profiles\.p\.arrival: 'bursty' is not one of constant, poisson"),
    ("rate = 5\nmax_in_flight = 0\nsteps = [{ batch = 1, seconds = 2 }]\n",
     r"max_in_flight: must be > 0"),
    ("rate = 5\nsteps = [{ batch = 1, seconds = 2, rate = 3, users = 2 }]\n",
     r"steps\[0\]: a step is open-loop \(rate\) or closed-loop \(users\), not both"),
    ("rate = 5\nsteps = [{ batch = 1, seconds = 2, rate = -3 }]\n",
     r"steps\[0\]\.rate: must be > 0"),
])
def test_open_loop_mistakes_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        profile(tmp_path, body)
    assert "\n" not in str(e.value)


def test_an_open_loop_step_is_one_locust_user_with_the_schedule_in_its_environment(
        tmp_path: Path) -> None:
    p = Profile(name="p", steps=(Step(1, 5.0, rate=25.0), Step(2, 5.0, users=7)), users=3,
                spawn_rate=3.0, arrival="constant", arrival_seed=5, max_in_flight=9)
    argv = load.locust_argv(p, p.steps[0], "http://127.0.0.1:1", tmp_path / "s")
    assert argv[argv.index("--users") + 1] == "1"
    env = load.locust_env(p, p.steps[0], tmp_path, tmp_path / "c.json", index=2)
    assert (env["INFBENCH_RATE"], env["INFBENCH_ARRIVAL"], env["INFBENCH_MAX_IN_FLIGHT"]) == \
        ("25", "constant", "9")
    assert env["INFBENCH_ARRIVAL_SEED"] == str(step_seed(5, 2))
    closed = load.locust_argv(p, p.steps[1], "http://127.0.0.1:1", tmp_path / "s")
    assert closed[closed.index("--users") + 1] == "7"
    assert load.locust_env(p, p.steps[1], tmp_path, tmp_path / "c.json")["INFBENCH_RATE"] == "0"
