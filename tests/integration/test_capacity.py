"""The capacity search on synthetic latency curves: pure functions, known answers."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from infbench.analysis import capacity
from infbench.analysis.capacity import RateProbe, Search
from infbench.paths import ROOT
from infbench.report import plots
from infbench.results import schemas


def queue_curve(cap: float, base_ms: float, batch: int = 1) -> Callable[[float], RateProbe]:
    """An M/M/1-like server: p95 = base / (1 - rate/cap); at or over capacity it serves `cap`,
    the queue grows and the step never settles."""
    def probe(rate: float) -> RateProbe:
        if rate >= cap:
            return RateProbe(rate=rate, rps=cap, p50_ms=base_ms * 50, p95_ms=base_ms * 100,
                         stable=False, batch=batch)
        p95 = base_ms / (1 - rate / cap)
        return RateProbe(rate=rate, rps=rate, p50_ms=p95 / 2, p95_ms=p95, batch=batch)
    return probe


def search(curve: Callable[[float], RateProbe], s: Search) -> list[RateProbe]:
    probes: list[RateProbe] = []
    while (rate := capacity.next_rate(probes, s)) is not None:
        probes.append(curve(rate))
    return probes


@pytest.mark.parametrize("start", [0.5, 3.0, 40.0, 500.0])
def test_the_search_finds_the_rate_where_p95_meets_the_bound(start: float) -> None:
    cap, base, bound = 40.0, 50.0, 200.0
    truth = cap * (1 - base / bound)  # 30 req/s: p95 = 200 ms exactly
    s = Search(p95_ms=bound, start=start, tolerance=0.05, max_probes=20)
    probes = search(queue_curve(cap, base), s)
    a = capacity.answer(probes, s)
    assert a["found"] and a["converged"]
    assert a["p95_ms"] <= bound and a["rate"] <= truth
    assert a["rate"] >= truth / (1 + s.tolerance) ** 2  # within the bracket's width
    assert a["lowest_failing_rate"] > truth and "p95" in a["bounded_by"]
    assert len(probes) <= 12  # doubling then bisection, not a scan


def test_images_per_second_follow_the_batch() -> None:
    s = Search(p95_ms=1000, start=1.0)
    probes = search(queue_curve(10.0, 100.0, batch=8), s)
    a = capacity.answer(probes, s)
    assert a["images_per_s"] == pytest.approx(a["rate"] * 8)  # offered, the exact figure


def test_no_rate_meets_a_bound_below_the_service_time() -> None:
    s = Search(p95_ms=10.0, start=4.0, min_rate=0.1)
    probes = search(queue_curve(40.0, 50.0), s)
    a = capacity.answer(probes, s)
    assert not a["found"] and probes[-1].rate < 2 * s.min_rate
    assert all(p.rate < 4.0 + 1e-9 for p in probes)  # it only went down


def test_failures_over_one_percent_fail_a_probe_however_fast() -> None:
    def flaky(rate: float) -> RateProbe:
        return RateProbe(rate=rate, rps=rate, p50_ms=5, p95_ms=10,
                     failure_rate=0.0 if rate < 20 else 0.05)
    s = Search(p95_ms=100, start=1.0, max_probes=20)
    a = capacity.answer(search(flaky, s), s)
    assert a["found"] and a["converged"] and 20 / 1.05 <= a["rate"] < 20
    assert "failures 5.0%" in a["bounded_by"]


def test_a_limited_load_generator_bounds_the_search_and_says_so() -> None:
    def gen_limited(rate: float) -> RateProbe:
        return RateProbe(rate=rate, rps=rate, p50_ms=5, p95_ms=10, limited=rate > 64)
    s = Search(p95_ms=100, start=2.0)
    a = capacity.answer(search(gen_limited, s), s)
    assert a["found"] and a["bounded_by"] == "limited by the load generator"


def test_a_probe_that_served_less_than_offered_fails() -> None:
    p = RateProbe(rate=10, rps=8.5, p50_ms=5, p95_ms=10)
    ok, why = capacity.probe_passes(p, Search(p95_ms=100))
    assert not ok and why == "served 8.50 of 10.00 req/s"


def test_a_lucky_pass_above_a_failure_does_not_raise_the_answer() -> None:
    s = Search(p95_ms=100, start=1.0, tolerance=0.05)
    probes = [RateProbe(rate=10, rps=10, p50_ms=20, p95_ms=50),
              RateProbe(rate=20, rps=20, p50_ms=90, p95_ms=150),
              RateProbe(rate=40, rps=40, p50_ms=20, p95_ms=60)]  # noise: a pass above a fail
    assert capacity.bracket(probes, s) == (10, 20)
    assert capacity.next_rate(probes, s) == 15
    assert capacity.answer(probes, s)["rate"] == 10


def test_the_search_stops_at_max_probes() -> None:
    s = Search(p95_ms=1e9, start=1.0, max_probes=4)
    probes = search(queue_curve(1e6, 1.0), s)
    assert [p.rate for p in probes] == [1, 2, 4, 8]
    assert capacity.answer(probes, s)["bounded_by"].startswith("no probe failed")


def test_the_document_and_the_plot(tmp_path: Path) -> None:
    s = Search(p95_ms=200, start=5.0)
    probes = search(queue_curve(40.0, 50.0), s)
    doc = capacity.document(probes, s)
    json.dumps(doc)  # JSON-able
    assert doc["schema"] == schemas.CAPACITY_SCHEMA and len(doc["probes"]) == len(probes)
    assert {p["pass"] for p in doc["probes"]} == {True, False}
    png = plots.capacity_plot(probes, s, tmp_path / "capacity.png", "synthetic")
    with Image.open(png) as im:
        assert im.size == (800, 480)


CAPACITY_EXPERIMENTS = """
[models.tiny]
arch = "tiny_cnn"
input_size = 32
classes = 10

[profiles.probe]
rate = 20
arrival = "poisson"
steps = [{ batch = 1, seconds = 5, until_stable = true }]
stable_window_s = 1
baseline = 0.5
pause = 0.5
cooldown = 0.5
drain_timeout = 5
request_timeout = 10

[variants.sleep10]
server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.sleep_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
env = { INFBENCH_SLEEP_MS = "10" }
"""


@pytest.mark.integration
def test_the_capacity_command_writes_its_answer_probes_and_curve(tmp_path: Path) -> None:
    exp = tmp_path / "experiments.toml"
    exp.write_text(CAPACITY_EXPERIMENTS)
    res = subprocess.run([sys.executable, "-m", "infbench", "--experiments", str(exp),
                          "--results", str(tmp_path / "r"), "capacity", "sleep10",
                          "--p95-ms", "2000", "--profile", "probe", "--max-probes", "3"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode in (0, 3), res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = next(p for p in (tmp_path / "r").iterdir() if p.is_dir() and not p.is_symlink())
    doc = json.loads((run_dir / "sleep10" / "capacity.json").read_text())
    probes = doc["probes"]
    # The search from 20 req/s: double after a pass, halve after a failure. A 10 ms server
    # passes 20 req/s on a quiet machine; on a busy one (CI's four workers on two cores) the
    # probe can be judged unstable, and the search must then go down, not up.
    rates = [p["rate"] for p in probes]
    assert rates[0] == 20 and len(probes) <= 3
    assert rates[1] == (40 if probes[0]["pass"] else 10), probes[0]["why"]
    assert all(p["why"] for p in probes) and doc["search"]["p95_ms"] == 2000
    assert doc["answer"]["p95_bound_ms"] == 2000 and "bounded_by" in doc["answer"]
    assert (run_dir / "sleep10" / "capacity.png").stat().st_size > 0
    assert "probe 1: 20 req/s offered" in res.stdout and "results:" in res.stdout
    # Each probe is a step of the run: Locust's files and the report as for any run.
    summary = json.loads((run_dir / "sleep10" / "summary.json").read_text())
    assert [s["open_loop"]["rate"] for s in summary["steps"]] == [p["rate"] for p in probes]
