"""How far to trust a step: the stability rule, memory flattening, the load generator's CPU,
open-loop accounting and serving efficiency, on synthetic files with known answers."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from infbench.analysis import loadgen, stability, summary, trust
from infbench.analysis.stability import RequestRow, Window
from infbench.report import markdown, tables
from infbench.results import samples
from tests.fixtures.synth import T0, make_variant, write_loadgen


def windows(rps: list[float], p50: list[float], width: float = 5.0) -> list[Window]:
    return [Window(T0 + k * width, T0 + (k + 1) * width, int(r * width), 0, r, p)
            for k, (r, p) in enumerate(zip(rps, p50, strict=True))]


def test_three_windows_within_ten_percent_are_stable() -> None:
    v = stability.judge_windows(windows([50, 100, 98, 104], [400, 210, 200, 205]))
    assert v["stable"] is True and v["rps_spread"] < 0.1 and v["p50_spread"] < 0.1


@pytest.mark.parametrize(("rps", "p50", "moved"), [
    ([100, 100, 80], [200, 200, 200], "throughput"),  # throughput still falling
    ([100, 100, 100], [200, 260, 330], "p50"),  # a queue building: latency climbs
    ([100, 80, 100], [200, 300, 200], "throughput and p50"),
])
def test_a_window_out_of_tolerance_is_not_stable_and_says_which(
        rps: list[float], p50: list[float], moved: str) -> None:
    v = stability.judge_windows(windows(rps, p50))
    assert v["stable"] is False and v["reason"].startswith(moved + " moved")


def test_too_few_windows_or_an_empty_one_is_not_stable() -> None:
    assert stability.judge_windows(windows([100, 100], [5, 5]))["stable"] is False
    empty = [*windows([100, 100], [5, 5]), Window(T0 + 10, T0 + 15, 0, 0, 0.0, None)]
    assert stability.judge_windows(empty)["reason"] == "a window without finished requests"
    # A tolerance of 0.2 accepts what 0.1 does not.
    assert stability.judge_windows(windows([100, 100, 85], [5, 5, 5]), 3, 0.2)["stable"] is True


def test_latency_within_the_clock_floor_is_stable() -> None:
    # 2 ms vs 3 ms is 40% apart, but within a millisecond of the mean: resolution, not drift.
    assert stability.judge_windows(windows([100, 100, 100], [2.0, 2.5, 3.0]))["stable"] is True


def test_windows_from_requests_count_completions_and_take_exact_medians() -> None:
    rows = [RequestRow(T0 + 0.1 * k, float(10 + k % 3), True) for k in range(100)]  # 10/s
    rows.append(RequestRow(T0 + 9.95, 500.0, False))
    ws = stability.windows_from_requests(rows, T0, T0 + 10.5, 5.0)
    assert [w.requests for w in ws] == [50, 51] and [w.failures for w in ws] == [0, 1]
    assert ws[0].rps == 10.0 and ws[0].p50_ms == 11.0
    assert stability.windows_from_requests(rows, T0, T0 + 4.0, 5.0) == []  # no full window


def test_windows_from_history_use_cumulative_counts(tmp_path: Path) -> None:
    p = tmp_path / "s_stats_history.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Timestamp", "User Count", "Type", "Name", "50%", "Total Request Count",
                    "Total Failure Count"])
        for k in range(11):
            w.writerow([int(T0) + k, 4, "", "Aggregated", 100 + k, 20 * k, k // 5])
    ws = stability.windows_from_history(stability.read_history(p), T0, T0 + 10, 5.0)
    assert [(w.requests, w.failures, w.p50_ms) for w in ws] == [(100, 1, 105.0),
                                                                (100, 1, 110.0)]


def test_memory_is_flat_only_when_the_fit_moves_less_than_the_noise() -> None:
    ws = windows([10, 10, 10], [5, 5, 5])
    flat = [(T0 + k / 10, 500.0 + (k % 2)) for k in range(150)]
    climbing = [(T0 + k / 10, 500.0 + 2 * k / 10) for k in range(150)]  # +2 MB/s
    assert stability.memory_judge(flat, ws)["flat"] is True
    m = stability.memory_judge(climbing, ws)
    assert m["flat"] is False and m["slope_mb_per_min"] == pytest.approx(120.0, rel=0.01)
    # 1% of a 2 GB process is 20 MB: +15 MB over the span is within its noise.
    big = [(T0 + k / 10, 2000.0 + k / 100) for k in range(150)]
    assert stability.memory_judge(big, ws)["flat"] is True


@pytest.mark.parametrize(("cpu", "wait", "limited", "how"), [
    (0.30, 0.02, False, None),
    (0.97, 0.01, True, "busy"),
    (0.10, 0.85, True, "starved"),  # little CPU, but runnable nearly all the time
    # Niced beside a CPU hog (seen in CI): 1.5% of a core, 87% waiting, blocked on the network
    # the rest: under the demand rule, starved by the wait rule.
    (0.015, 0.871, True, "starved"),
    (0.30, 0.45, False, None),  # waiting, but under half the time: not flagged
    (0.05, 0.50, True, "starved"),  # half the time waiting for a CPU
])
def test_the_generator_is_flagged_when_busy_or_starved(tmp_path: Path, cpu: float, wait: float,
                                                       limited: bool, how: str | None) -> None:
    p = tmp_path / "step1-b1_loadgen.csv"
    write_loadgen(p, cpu, wait)
    g = loadgen.figures(p, T0 + 2, T0 + 18)
    assert g is not None
    assert g["cpu_pct"] == pytest.approx(100 * cpu, abs=0.5)
    assert (g["limited"], g["how"]) == (limited, how)
    assert ("limited by the load generator" in g["note"]) == limited
    assert g["per_process"][0]["limited"] == limited
    if how == "starved":
        assert "(starved)" in g["note"] and "waited for a CPU" in g["note"]


def test_a_short_burst_of_generator_cpu_is_caught_by_the_window(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    with p.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(samples.LOADGEN_COLUMNS)
        cpu = 0.0
        for k in range(61):
            t = k / 2
            w.writerow([f"{T0 + t:.3f}", 7, f"{cpu:.3f}", "0"])
            cpu += 0.5 if 10 <= t < 16 else 0.05  # 6 s at a full core, else 10%
    g = loadgen.figures(p, T0, T0 + 30)
    assert g is not None and g["limited"] and g["cpu_pct"] < 40


def test_efficiency_is_served_over_decode_plus_model_at_the_same_batch() -> None:
    alone = {"batches": [{"batch": 10, "decode_model_images_per_s": 200.0,
                          "model_images_per_s": 500.0}]}
    e = trust.efficiency(150.0, 10, alone)
    assert e is not None and e["efficiency"] == 0.75 and e["vs_model_only"] == 0.3
    assert trust.efficiency(150.0, 40, alone) is None  # no reference at that batch
    assert trust.efficiency(None, 10, alone) is None


def test_open_loop_counts_become_figures_and_notes() -> None:
    counts = {"test_stopping": T0 + 10, "open_loop": {
        "rate": 20.0, "arrival": "poisson", "seed": 1, "max_in_flight": 8,
        "schedule_start": T0, "scheduled": 150, "sent": 150, "in_flight_max": 8,
        "cap_hits": 40, "cap_wait_s": 12.5, "not_sent": 6,
        "lag_ms": {"p50": 1.0, "p99": 30.0, "max": 80.0}}}
    ol = trust.open_loop_figures(counts, T0 + 10)
    assert ol is not None and ol["send_rate"] == 15.0
    notes = " | ".join(trust.open_loop_notes(ol))
    assert "cap (8) hit 40 times" in notes and "6 scheduled requests were never sent" in notes
    assert "sent 15.0 req/s of the 20 asked for" in notes and "send lag p99 30 ms" in notes
    assert trust.open_loop_figures({"started": 3}, T0) is None


def test_the_summary_and_the_step_table_say_stable_or_not(tmp_path: Path) -> None:
    d = make_variant(tmp_path)
    # Step 1 (10-20 s): 4 windows of 2 s with a steady 10 req/s at ~100 ms; step 2 has no log.
    with (d / "step1-b2_requests.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t_end", "latency_ms", "ok", "lag_ms", "name"])
        for k in range(100):
            w.writerow([f"{T0 + 10 + 0.1 * k + 0.05:.4f}", 100 + k % 5, 1, "", "x"])
    (d / "manifest.json").write_text(json.dumps({"config": {"profile": {
        "stable_window_s": 2, "stable_windows": 3, "stable_tolerance": 0.1}}}))
    (d / "model_alone.json").write_text(json.dumps({"schema": 1, "batches": [
        {"batch": 2, "decode_model_images_per_s": 19.2, "model_images_per_s": 40.0}]}))
    s = summary.summarize_variant(d)
    one, two = s["steps"]
    assert one["stable"] is True and one["stability"]["source"].startswith("requests.csv")
    assert len(one["stability"]["windows"]) == 5
    assert one["memory_flat"] is False  # the synthetic memory climbs 5 MB/s in every step
    assert one["efficiency"]["efficiency"] == 0.49  # 4.8 req/s x 47/48 served x 2 / 19.2
    assert two["stable"] is False and any("not stable" in n for n in two["notes"])
    table = "\n".join(markdown.lines(tables.steps_table([s])))
    assert "| stable | memory flat |" in table and "| yes | **no** |" in table


def poisson_rows(rate: float, seconds: float, latency: Callable[[float], float],
                 seed: int = 1) -> list[RequestRow]:
    """Requests finishing at Poisson times with the given latency at each time."""
    rng = random.Random(seed)
    t, rows = 0.0, []
    while (t := t + rng.expovariate(rate)) < seconds:
        rows.append(RequestRow(T0 + t, latency(t) * rng.uniform(0.7, 1.5), True))
    return rows


def test_a_few_requests_a_window_are_judged_by_their_noise_not_as_drift() -> None:
    # 4 req/s in 5 s windows: ~20 a window, Poisson counts move +-22% by chance alone.
    steady = poisson_rows(4.0, 30.0, lambda t: 100.0)
    v = stability.judge_windows(stability.windows_from_requests(steady, T0, T0 + 30, 5.0))
    assert v["stable"] is True and v["rps_allowance"] > 0.3
    # The same few requests with a queue growing under them: still not stable.
    growing = poisson_rows(4.0, 30.0, lambda t: 100.0 + 40.0 * t)
    g = stability.judge_windows(stability.windows_from_requests(growing, T0, T0 + 30, 5.0))
    assert g["stable"] is False and g["reason"].startswith("p50 moved")


def test_windows_with_almost_no_requests_cannot_be_judged() -> None:
    sparse = poisson_rows(0.3, 30.0, lambda t: 100.0)
    v = stability.judge_windows(stability.windows_from_requests(sparse, T0, T0 + 30, 5.0))
    assert v["stable"] is False and "too few to judge" in v["reason"]


def test_the_median_interval_narrows_with_more_requests() -> None:
    rng = random.Random(3)
    few = [rng.uniform(50, 150) for _ in range(25)]
    many = [rng.uniform(50, 150) for _ in range(2500)]
    a, b = stability.median_ci(few), stability.median_ci(many)
    assert a is not None and b is not None and b < a / 5
    assert stability.median_ci(few[:3]) is None


def test_without_the_counts_the_window_is_the_one_the_step_ran_with(tmp_path: Path) -> None:
    # A profile without stable_window_s sized each step's windows (config.auto_window); a step
    # whose Locust wrote no counts file is judged with the same window, not the 10 s default.
    (tmp_path / "manifest.json").write_text(json.dumps({"config": {"profile": {
        "stable_window_s": 0.0, "stable_windows": 3,
        "steps": [{"batch": 1, "seconds": 15.0}, {"batch": 1, "seconds": 300.0}]}}}))
    assert trust.window_settings(tmp_path, None, 1)[0] == 3.75
    assert trust.window_settings(tmp_path, None, 2)[0] == 10.0
    assert trust.window_settings(tmp_path, {"stable_window_s": 2.5}, 1)[0] == 2.5
