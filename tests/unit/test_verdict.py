"""The verdict rules on small synthetic cycle figures: each verdict, inconclusive, and no verdict
for a profile without cycles (and how that reads in every output)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import verdict
from infbench.report import build, markdown
from infbench.results import schemas
from tests.fixtures import synth


def cycles(rss: list[float], **series: list[float | None]) -> list[dict[str, Any]]:
    out = []
    for i, mb in enumerate(rss):
        c: dict[str, Any] = {"cycle": i + 1, "complete": True, "requests": 500,
                             "post_rest_mb": mb}
        for key, values in series.items():
            c[key] = values[i]
        out.append(c)
    return out


def test_plateau_after_warmup() -> None:
    # Big warm-up growth, then flat: the working set was reached.
    v = verdict.decide(cycles([900, 1150, 1153, 1152]))
    assert v["verdict"] == "plateau"
    assert v["growth_last_cycle_mb"] == -1.0 and v["noise_mb"] == pytest.approx(9.0)
    assert "stopped growing" in v["reason"]


def test_plateau_reached_in_the_last_cycle() -> None:
    v = verdict.decide(cycles([600, 700, 760, 763]))
    assert v["verdict"] == "plateau"


def test_python_leak() -> None:
    v = verdict.decide(cycles([600, 650, 700, 750], py_blocks=[1e5, 2e5, 3e5, 4e5],
                              malloc_in_use_mb=[300, 350, 400, 450],
                              malloc_free_mb=[20, 20, 21, 20]))
    assert v["verdict"] == "leak" and v["where"] == "python objects"
    assert v["growth_per_cycle_mb"] == 50.0
    assert v["growth_per_1000_requests_mb"] == pytest.approx(150 / 1500 * 1000)
    assert v["python_heap"]["measure"] == "py_blocks"


def test_python_leak_by_tracemalloc_wins_over_blocks() -> None:
    v = verdict.decide(cycles([600, 640, 680], py_blocks=[1e5, 1e5, 1e5],
                              py_traced_mb=[10, 50, 90]))
    assert v["verdict"] == "leak" and v["python_heap"]["measure"] == "tracemalloc_mb"


def test_native_leak() -> None:
    # The Python heap measured in bytes, flat: what malloc keeps is not Python's.
    v = verdict.decide(cycles([600, 650, 700], py_blocks=[1e5, 1.001e5, 1e5],
                              py_traced_mb=[40, 40.2, 40.1],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["verdict"] == "leak" and v["where"] == "native allocations"
    assert v["headline"] == "leak (native allocations)"


def test_growth_in_use_with_python_counted_in_blocks_only_is_a_leak_of_unknown_kind() -> None:
    # Changed on purpose: a 64 KB bytes object is one block, so without the Python heap in
    # bytes a leak of big Python objects looks like a native one (it was called native).
    v = verdict.decide(cycles([600, 650, 700], py_blocks=[1e5, 1.001e5, 1.002e5],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["verdict"] == "leak" and v["where"] == "kind unknown"
    assert "count the heap's bytes at each rest" in v["reason"]
    assert v["headline"] == "leak (kind unknown)"


def test_big_python_objects_are_named_by_their_bytes() -> None:
    # 64 KB objects: blocks barely move, tracemalloc's bytes explain the growth.
    v = verdict.decide(cycles([600, 650, 700], py_blocks=[1e5, 1.0005e5, 1.001e5],
                              py_traced_mb=[40, 90, 140],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["verdict"] == "leak" and v["where"] == "python objects"
    assert v["python_heap"]["growth_mb"] == 100.0


def test_small_python_growth_does_not_hide_a_native_leak() -> None:
    # tracemalloc grows a little every cycle (a log, a counter): the 100 MB are malloc's.
    v = verdict.decide(cycles([600, 650, 700], py_traced_mb=[40, 41, 42],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["where"] == "native allocations", v


def test_many_small_python_objects_are_named_by_their_count_too() -> None:
    # 1,000 small strings a request: tracemalloc's own tables are malloc'd, so the traced
    # bytes explain under half the growth, but the object count climbs in every cycle.
    v = verdict.decide(cycles([90, 149, 204], py_blocks=[819394, 1138115, 1424762],
                              py_traced_mb=[0.03, 24.25, 46.28],
                              malloc_in_use_mb=[11.7, 46.7, 79.0], malloc_free_mb=[5, 6, 5]))
    assert v["verdict"] == "leak" and v["where"] == "python objects", v
    assert "in bytes and in objects" in v["reason"]
    # A native leak beside a small, steady Python growth (blocks under the noise) stays native.
    n = verdict.decide(cycles([90, 149, 204], py_blocks=[819394, 820000, 820500],
                              py_traced_mb=[1.0, 2.0, 3.0],
                              malloc_in_use_mb=[11.7, 66.7, 121.0], malloc_free_mb=[5, 6, 5]))
    assert n["where"] == "native allocations", n


def test_big_python_objects_are_named_by_the_census_without_tracemalloc() -> None:
    # 64 KB bytes objects: one block each, so the blocks barely move; the census at each rest
    # counts their bytes.
    v = verdict.decide(cycles([600, 650, 700], py_blocks=[1e5, 1.0008e5, 1.0016e5],
                              py_census_mb=[30, 80, 131], py_census_objects=[2e5, 2.008e5, 2.016e5],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["headline"] == "leak (python objects)", v
    assert v["python_heap"]["measure"] == "census_mb" and v["python_heap"]["growth_mb"] == 101.0
    assert "census 30.0 -> 131.0 MB in 200,000 -> 201,600 objects" in v["reason"]


def test_census_flat_in_bytes_and_objects_with_malloc_growing_is_a_native_leak() -> None:
    v = verdict.decide(cycles([600, 650, 700], py_blocks=[1e5, 1.0003e5, 1.0001e5],
                              py_census_mb=[30, 30.4, 30.2], py_census_objects=[2e5, 2e5, 2e5],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["headline"] == "leak (native allocations)", v
    assert "the Python heap did not, in bytes or in objects (census" in v["reason"]


def test_objects_growing_in_number_but_not_in_bytes_is_not_called_native() -> None:
    # The census's bytes do not explain the growth but its object count climbs every cycle:
    # something it cannot size (an object whose __sizeof__ leaves out what it holds).
    v = verdict.decide(cycles([600, 650, 700], py_census_mb=[30, 30.3, 30.6],
                              py_census_objects=[2e5, 2.5e5, 3e5],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["headline"] == "leak (kind unknown)", v
    assert "grew in number in every cycle, not in bytes" in v["reason"]


def test_many_small_objects_by_the_census() -> None:
    # Small strings: pymalloc's arenas are not malloc's, so the census's bytes may fall short
    # of the RSS growth, while they and the object count climb in every cycle.
    v = verdict.decide(cycles([90, 149, 204], py_blocks=[819394, 1138115, 1424762],
                              py_census_mb=[20, 43, 66],
                              malloc_in_use_mb=[11.7, 12.0, 12.1], malloc_free_mb=[5, 6, 5]))
    assert v["headline"] == "leak (python objects)", v
    assert "in bytes and in objects" in v["reason"]


def test_the_census_or_tracemalloc_may_name_python_objects() -> None:
    # tracemalloc (opt-in) sees an allocation the census cannot reach (held only from C).
    v = verdict.decide(cycles([600, 650, 700], py_census_mb=[30, 30.2, 30.1],
                              py_traced_mb=[40, 90, 140],
                              malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21]))
    assert v["headline"] == "leak (python objects)", v
    assert v["python_heap"]["measure"] == "census_mb" and "tracemalloc 40.0" in v["reason"]


def probe_rows(pid: int, t0: float, t1: float) -> list[dict[str, Any]]:
    return [{"t": t, "pid": pid, "py_blocks": 1000, "malloc": None}
            for t in range(int(t0), int(t1) + 1)]


def test_census_lines_give_each_cycle_its_python_bytes() -> None:
    # Two processes (a Gunicorn master and a worker) alive through three cycles, each writing
    # a census line after each rest; a worker that died in cycle 1 is not waited for.
    phases = []
    for c in (1, 2, 3):
        base = 100.0 * c
        phases += [{"kind": "step", "cycle": c, "start": base, "end": base + 40},
                   {"kind": "rest", "cycle": c, "start": base + 40, "end": base + 60},
                   {"kind": "census", "cycle": c, "start": base + 60, "end": base + 62}]
    mem = [(float(t), 500.0) for t in range(100, 400)]
    steps = [{"cycle": c, "requests": 100, "complete": True} for c in (1, 2, 3)]
    samples = {1: probe_rows(1, 100, 380), 2: probe_rows(2, 100, 380),
               3: probe_rows(3, 100, 130)}
    events = [{"t": 100.0 * c + 61, "pid": pid, "event": "census", "cycle": c,
               "py_bytes_mb": mb, "objects": 1000 * c, "took_s": 0.2}
              for c in (1, 2, 3) for pid, mb in ((1, 5.0), (2, 10.0 * c))]
    got = verdict.cycle_figures(phases, mem, steps, samples, [], events)
    assert [c["py_census_mb"] for c in got] == [15.0, 25.0, 35.0]
    assert [c["py_census_objects"] for c in got] == [2000, 4000, 6000]
    # A live process that did not answer: the sum would fall, so the cycle has none.
    got = verdict.cycle_figures(phases, mem, steps, samples, [],
                                [e for e in events if (e["pid"], e["cycle"]) != (2, 3)])
    assert got[2]["py_census_mb"] is None and got[1]["py_census_mb"] == 25.0
    assert verdict.census_pause(events) == {"rests": 3, "processes": 2, "max_took_s": 0.2,
                                            "max_objects": 3000}


def test_from_outside_only() -> None:
    # No probes: glibc's totals read by a debugger. A Python process cannot be judged further;
    # a process that is not Python has no Python heap to keep anything in.
    c = cycles([600, 650, 700], malloc_in_use_mb=[300, 350, 400], malloc_free_mb=[20, 22, 21])
    assert verdict.decide(c, python=True)["where"] == "kind unknown"
    assert verdict.decide(c, python=None)["where"] == "kind unknown"
    assert verdict.decide(c, python=False)["where"] == "native allocations"
    c = cycles([600, 700, 800], malloc_in_use_mb=[300, 302, 301], malloc_free_mb=[50, 140, 240])
    assert verdict.decide(c, python=True)["verdict"] == "allocator retention"


def test_plateau_that_holds_allocator_memory_says_so() -> None:
    v = verdict.decide(cycles([600, 700, 702, 701], malloc_free_mb=[60, 95, 96, 95]),
                       trim_freed_mb=88.0)
    assert v["verdict"] == "plateau"
    assert v["headline"] == "plateau — 95 MB is allocator retention (malloc_trim gave back 88 MB)"
    assert v["retention"]["free_mb"] == 95.0 and "glibc kept" in v["reason"]
    # Trim alone (free memory not read)
    v = verdict.decide(cycles([600, 700, 702, 701]), trim_freed_mb=88.0)
    assert v["headline"] == "plateau — malloc_trim gave back 88 MB: allocator retention"


def test_plateau_with_little_allocator_memory_is_plain() -> None:
    v = verdict.decide(cycles([600, 700, 702, 701], malloc_free_mb=[5, 6, 6, 7]),
                       trim_freed_mb=4.0)
    assert v["headline"] == "plateau" and "retention" not in v
    assert verdict.decide(cycles([600, 700, 702, 701]))["headline"] == "plateau"


def test_allocator_retention_by_free_lists() -> None:
    v = verdict.decide(cycles([600, 700, 800], py_blocks=[1e5, 1e5, 1e5],
                              malloc_in_use_mb=[300, 302, 301], malloc_free_mb=[50, 140, 240]))
    assert v["verdict"] == "allocator retention"
    assert v["malloc_free_growth_mb"] == 190.0


def test_allocator_retention_by_trim() -> None:
    # Free-list figures unavailable (e.g. not sampled), but trim gave most of it back.
    v = verdict.decide(cycles([600, 700, 800], py_blocks=[1e5, 1e5, 1e5]), trim_freed_mb=150.0)
    assert v["verdict"] == "allocator retention" and "malloc_trim" in v["reason"]


def test_growing_without_probes_is_inconclusive() -> None:
    v = verdict.decide(cycles([600, 700, 800, 900]))
    assert v["verdict"] == "inconclusive"
    assert "probes" in v["reason"] and v["growth_per_cycle_mb"] == 100.0


def test_growth_nothing_explains_is_inconclusive() -> None:
    v = verdict.decide(cycles([600, 700, 800], py_blocks=[1e5, 1e5, 1e5],
                              malloc_in_use_mb=[300, 305, 310], malloc_free_mb=[20, 21, 20]),
                       trim_freed_mb=2.0)
    assert v["verdict"] == "inconclusive" and "neither" in v["reason"]


@pytest.mark.parametrize("rss", [[600], [600, 700]])
@pytest.mark.parametrize("profile_cycles", [None, 2, 4])
def test_too_few_cycles(rss: list[float], profile_cycles: int | None) -> None:
    # A cycled profile (or one not known) that measured too few: a diagnosis not yet made.
    v = verdict.decide(cycles(rss), profile_cycles=profile_cycles)
    assert v["verdict"] == "inconclusive" and "need at least 3" in v["reason"]


@pytest.mark.parametrize("rss", [[], [600]])
def test_a_profile_without_cycles_has_no_verdict(rss: list[float]) -> None:
    # Not "inconclusive": nothing was there to judge, which is not a failed diagnosis.
    v = verdict.decide(cycles(rss), profile_cycles=1)
    assert v["verdict"] == v["headline"] == schemas.NO_VERDICT == "no verdict"
    assert v["reason"].startswith("this profile has no cycles (it runs its sweep once)")
    assert "need at least" not in v["reason"] and v["cycles"] == len(rss)


@pytest.mark.parametrize(("profile_cycles", "counted", "steps", "once"), [
    (1, 1, True, True), (1, 0, False, True),  # the profile says so
    (4, 0, True, False), (4, 1, True, False),
    (None, 0, True, True),  # unknown profile, steps without cycle numbers: a sweep run once
    (None, 1, True, False),  # could be a cycled run cut short in its first cycle
    (None, 0, False, False),  # nothing ran: nothing to say
])
def test_which_runs_ran_once(profile_cycles: int | None, counted: int, steps: bool,
                             once: bool) -> None:
    assert schemas.runs_once(profile_cycles, counted, steps) is once


def test_a_single_sweep_says_no_verdict_everywhere(tmp_path: Path) -> None:
    """summary.json, summary.md, report.html and the console: "no verdict", not a failed one."""
    run_dir = synth.make_run(tmp_path)
    for name in ("v1", "v2"):
        (run_dir / name / "manifest.json").write_text(json.dumps(
            {"schema": 1, "config": {"profile": {"name": "smoke", "cycles": 1}}}))
    summary = build.build(run_dir)
    for name in ("v1", "v2"):
        v = json.loads((run_dir / name / "summary.json").read_text())["verdict"]
        assert v["verdict"] == "no verdict" and "this profile has no cycles" in v["reason"]
    md = (run_dir / "summary.md").read_text()
    assert "No verdict: this profile has no cycles (it runs its sweep once)." in md
    assert "inconclusive" not in md and "need at least" not in md
    html = (run_dir / "report.html").read_text()
    assert html.count("<b>no verdict</b>") == 4  # each variant's row and its own section
    assert html.count("this profile has no cycles (it runs its sweep once)") == 2
    assert "inconclusive" not in html and "need at least" not in html
    lines = markdown.verdict_lines(summary)
    assert lines == ["", "no verdict: " + schemas.NO_CYCLES]
    # A cycled profile cut short keeps its "inconclusive" (too few cycles measured).
    for name in ("v1", "v2"):
        (run_dir / name / "manifest.json").write_text(json.dumps(
            {"schema": 1, "config": {"profile": {"name": "cycles", "cycles": 4}}}))
    summary = build.build(run_dir)
    assert {r["verdict"]["verdict"] for r in summary["variants"]} == {"inconclusive"}
    assert "No verdict: this profile has no cycles" not in (run_dir / "summary.md").read_text()
    assert markdown.verdict_lines(summary) == []


def test_an_interrupted_cycle_is_never_judged() -> None:
    c = cycles([600, 700, 800, 900])
    c[-1]["complete"] = False
    assert verdict.decide(c)["verdict"] == "inconclusive"
    c = cycles([600, 700, 800])
    c[1]["post_rest_mb"] = None  # a rest without samples
    assert verdict.decide(c)["verdict"] == "inconclusive"


def test_noisy_but_flat_on_average_is_inconclusive() -> None:
    v = verdict.decide(cycles([600, 590, 612, 598, 611]))
    assert v["verdict"] == "inconclusive" and "more cycles" in v["reason"]


def test_up_and_down_is_inconclusive_not_a_leak() -> None:
    # Seen with fixed malloc thresholds: 893 -> 867 -> 890 -> 946 MB, malloc in use noisy.
    v = verdict.decide(cycles([893, 867, 890, 946], py_blocks=[1e6] * 4,
                              malloc_in_use_mb=[300, 420, 380, 428],
                              malloc_free_mb=[50, 40, 60, 50]))
    assert v["verdict"] == "inconclusive" and "up and down" in v["reason"]


def test_one_jump_after_warmup_then_little_is_not_a_leak() -> None:
    # Seen with Gunicorn: 1,840 -> 2,034 -> 2,018 -> 2,067 MB, malloc in use up by 196 MB.
    v = verdict.decide(cycles([1840, 2034, 2018, 2067], py_blocks=[1e6] * 4,
                              malloc_in_use_mb=[600, 780, 770, 796],
                              malloc_free_mb=[300, 310, 300, 305]))
    assert v["verdict"] == "inconclusive" and "not a steady climb" in v["reason"], v
    # The same climb, growing in each of the last two cycles, is judged.
    v = verdict.decide(cycles([1840, 2034, 2060, 2100], py_blocks=[1e6] * 4,
                              py_traced_mb=[90, 91, 90, 92],
                              malloc_in_use_mb=[600, 780, 800, 840],
                              malloc_free_mb=[300, 310, 300, 305]))
    assert v["verdict"] == "leak" and v["where"] == "native allocations", v


def test_differential_hypothesis_under_another_allocator() -> None:
    grows = verdict.decide(cycles([600, 700, 800]))
    flat = verdict.decide(cycles([600, 602, 601]))
    assert verdict.differential(grows, flat)["hypothesis"] == "allocator retention"
    assert verdict.differential(grows, grows)["hypothesis"] == "leak"
    half = verdict.decide(cycles([600, 640, 670]))
    assert verdict.differential(grows, half)["hypothesis"] == "leak and allocator retention"
    d = verdict.differential(flat, verdict.decide(cycles([500, 510, 509])))
    assert d["hypothesis"] == "plateau" and d["glibc_above_mb"] == 92.0
    short = verdict.decide(cycles([600, 700]))
    d = verdict.differential(grows, short)
    assert d["hypothesis"] == "inconclusive" and "too few" in d["reason"]


def test_kept_at_sums_sites_over_processes_and_drops_the_crumbs() -> None:
    def sites(pid: int, *top: tuple[str, float, int]) -> dict[str, Any]:
        return {"event": "sites", "pid": pid, "based": True,
                "top": [{"where": w, "kept_mb": mb, "blocks": n} for w, mb, n in top]}

    events = [sites(1, ("app.py:66", 20.0, 300), ("json/encoder.py:258", 0.01, 40)),
              sites(2, ("app.py:66", 19.5, 290), ("cache.py:9", 3.0, 10)),
              {"event": "trim", "pid": 1, "freed_mb": 2.0}]
    assert verdict.kept_at(events) == [
        {"where": "app.py:66", "kept_mb": 39.5, "blocks": 590},
        {"where": "cache.py:9", "kept_mb": 3.0, "blocks": 10}]
    assert verdict.kept_at([{**sites(1, ("app.py:66", 5.0, 1)), "based": False}]) == []


def test_up_and_down_with_allocator_memory_says_so() -> None:
    # Seen from outside with thread churn: 106 -> 97 -> 113 MB, glibc holding ~80 MB free.
    v = verdict.decide(cycles([106, 97, 113], malloc_in_use_mb=[6.5, 7, 7],
                              malloc_free_mb=[74, 65, 81]), trim_freed_mb=80.2, python=True)
    # What moved in the last cycle is free memory glibc kept: retention, said as such.
    assert v["verdict"] == "allocator retention"
    assert "free memory grew +16.0 MB" in v["reason"]
    # With memory in use moving instead, the level that went up and down is inconclusive,
    # and the headline still says what the allocator holds.
    v = verdict.decide(cycles([106, 97, 113], malloc_in_use_mb=[6.5, 7, 23],
                              malloc_free_mb=[74, 65, 65]), trim_freed_mb=80.2, python=True)
    assert v["verdict"] == "inconclusive"
    assert v["headline"] == ("inconclusive — 65 MB is allocator retention "
                             "(malloc_trim gave back 80 MB)")
    # Too few cycles: nothing to say about a level.
    v = verdict.decide(cycles([106, 97]), trim_freed_mb=80.2)
    assert v["headline"] == "inconclusive" and "retention" not in v


def test_differential_compares_growth_per_request() -> None:
    # Seen: jemalloc's run served a third of the requests; per 1,000 requests the native leak
    # grew as much under both (glibc +117 MB in 1,247 requests, jemalloc +41 MB in 441).
    grows = verdict.decide(cycles([91, 148, 208]))
    grows["growth_per_1000_requests_mb"] = 94.0
    fewer = verdict.decide(cycles([61, 75, 103]))
    fewer["growth_per_1000_requests_mb"] = 93.9
    assert verdict.differential(grows, fewer)["hypothesis"] == "leak"


def _churn(rss: list[float], free: list[float], in_use: list[float],
           census: list[float]) -> list[dict[str, Any]]:
    return [{"cycle": i + 1, "complete": True, "requests": 200, "post_rest_mb": r,
             "malloc_free_mb": f, "malloc_in_use_mb": u, "py_census_mb": c,
             "py_census_objects": 66000 + i} for i, (r, f, u, c)
            in enumerate(zip(rss, free, in_use, census, strict=True))]


def test_a_last_jump_of_free_memory_is_retention_not_inconclusive() -> None:
    # Seen under load: a thread arena's holes added in the last cycle only (mean within the
    # noise), all of it free memory glibc kept; in use and the Python heap flat.
    v = verdict.decide(_churn([97.5, 98.3, 109.7], [65.6, 65.8, 77.1], [6.6, 7.2, 7.24],
                              [11.65, 12.23, 12.24]), trim_freed_mb=75.5)
    assert v["verdict"] == "allocator retention", v["reason"]
    assert "free memory grew +11.3 MB" in v["reason"]


def test_a_last_jump_that_is_memory_in_use_stays_inconclusive() -> None:
    v = verdict.decide(_churn([97.5, 98.3, 109.7], [65.6, 65.8, 66.0], [6.6, 7.2, 18.4],
                              [11.65, 12.23, 12.24]))
    assert v["verdict"] == "inconclusive"
    # Changed on purpose: the Python heap (census) grew in every cycle, above its noise: that
    # is a leak of Python objects at any size (it was inconclusive, judged by RSS's last step).
    v = verdict.decide(_churn([97.5, 98.3, 109.7], [65.6, 65.8, 77.1], [6.6, 7.2, 7.2],
                              [11.6, 12.2, 23.5]))
    assert v["verdict"] == "leak" and v["where"] == "python objects", v["reason"]


# -- slow leaks: the trend over all cycles, and the heap census's exact bytes ------------------
# Seen on an untouched server keeping 4 KB a request: post-rest 32 -> 34 -> 36 -> 39 MB (3.99 MB
# per 1,000 requests) was called a plateau, judged on the last step against the 8 MB noise.
SLOW_RSS = [32.0, 34.0, 36.0, 39.0]


def test_a_slow_python_leak_is_a_leak_by_the_heap_census() -> None:
    v = verdict.decide(cycles(SLOW_RSS, py_census_mb=[20.0, 22.0, 24.1, 26.1],
                              py_census_objects=[50000, 50600, 51200, 51800]))
    assert v["verdict"] == "leak" and v["where"] == "python objects", v["reason"]
    assert "the Python heap grew +6.1 MB" in v["reason"]
    limit = v["detection_limit"]
    assert limit["rss_mb"] == 8.0 and limit["census_mb_per_cycle"] == 0.5
    # 500 requests a cycle: the census tells 1 MB per 1,000 requests, RSS 5.3 over 1,500.
    assert limit["census_mb_per_1000_requests"] == 1.0
    assert limit["rss_mb_per_1000_requests"] == pytest.approx(8 / 1500 * 1000, abs=0.001)


def test_the_same_rss_without_the_census_is_a_plateau_that_says_what_rss_cannot_see() -> None:
    v = verdict.decide(cycles(SLOW_RSS))
    assert v["verdict"] == "plateau"
    assert "below what RSS can tell" in v["reason"] and "census" in v["reason"]
    assert v["trend"]["every_cycle_up"] and not v["trend"]["steady_climb"]  # 7 MB: under 8


def test_a_census_that_does_not_climb_every_cycle_is_no_leak() -> None:
    # A cache that filled in the first cycle after warm-up and then stayed: a plateau.
    v = verdict.decide(cycles([900, 1150, 1153, 1152], py_census_mb=[40.0, 55.0, 55.2, 55.1]))
    assert v["verdict"] == "plateau"
    v = verdict.decide(cycles([600, 700, 702, 701], py_census_mb=[40.0, 40.3, 40.6, 40.8]))
    assert v["verdict"] == "plateau"  # up every cycle, but by less than the census's noise


def test_a_steady_climb_under_the_noise_each_cycle_is_judged_not_a_plateau() -> None:
    # +7 MB a cycle: each step within the 8 MB noise, 21 MB in all, a slope far from zero.
    rss = [500.0, 507.0, 514.0, 521.0]
    v = verdict.decide(cycles(rss))
    assert v["verdict"] == "inconclusive" and "nothing read the allocator" in v["reason"]
    assert v["trend"]["steady_climb"] and v["trend"]["slope_mb"] == 7.0
    v = verdict.decide(cycles(rss, py_census_mb=[30.0, 30.1, 30.0, 30.2],
                              py_census_objects=[50000, 50010, 50000, 50020],
                              malloc_in_use_mb=[300.0, 307.0, 314.0, 321.0],
                              malloc_free_mb=[20.0, 20.0, 21.0, 20.0]))
    assert v["verdict"] == "leak" and v["where"] == "native allocations", v["reason"]


def test_a_climb_that_slows_to_a_level_is_no_steady_climb() -> None:
    # The reference run's Hypercorn: +41, +84, +9 MB, all of it glibc's free memory: a plateau
    # (that says it is retention), as it was judged before the trend rule.
    v = verdict.decide(cycles([969.1, 1010.5, 1093.9, 1102.9],
                              malloc_free_mb=[297.4, 360.1, 377.1, 409.8],
                              malloc_in_use_mb=[273.6, 275.3, 271.6, 276.6]))
    assert v["verdict"] == "plateau" and not v["trend"]["steady_climb"], v["reason"]
    assert v["headline"].startswith("plateau — 410 MB is allocator retention")


def test_noise_around_a_level_is_no_steady_climb() -> None:
    t = verdict.trend([500.0, 502.0, 501.0, 503.0])
    assert t["slope_mb"] == 0.8 and t["ci_mb"] is not None and t["slope_mb"] - t["ci_mb"] < 0
    assert not t["every_cycle_up"]
    t = verdict.trend([32.0, 34.0, 36.0, 39.0])
    assert t["every_cycle_up"] and t["slope_mb"] - t["ci_mb"] > 0
    assert verdict.trend([1.0, 2.0])["ci_mb"] is None  # two points: no interval


# -- malloc's memory in use: an exact count like the census, for native leaks -----------------
def test_a_slow_native_leak_is_a_leak_by_malloc_in_use() -> None:
    # Seen in CI: 64 KiB a request on a starved machine, the last cycle +6.3 MB (under the 8 MB
    # noise), the Python heap flat: it was called a plateau.
    v = verdict.decide(cycles([81.6, 100.3, 106.6], py_census_mb=[3.1, 3.1, 3.1],
                              py_census_objects=[30000, 30010, 30005],
                              malloc_in_use_mb=[56.2, 75.0, 81.3],
                              malloc_free_mb=[1.0, 1.1, 1.0]))
    assert v["verdict"] == "leak" and v["where"] == "native allocations", v["reason"]
    assert v["detection_limit"]["malloc_in_use_mb_per_cycle"] == 1.0


def test_malloc_in_use_wobbling_at_rest_is_no_leak() -> None:
    # The reference TensorFlow servers: in use -2.5, +2.4, +3.6 MB of ~405 MB (a floor of 1%),
    # and +2.4, +3.6 alone is still under it.
    v = verdict.decide(cycles([898.6, 900.0, 901.0, 902.0],
                              malloc_in_use_mb=[405.5, 403.0, 405.4, 409.0]))
    assert v["verdict"] == "plateau", v["reason"]
    v = verdict.decide(cycles([898.6, 900.0, 901.0], malloc_in_use_mb=[403.0, 405.4, 409.0]))
    assert v["verdict"] == "plateau", v["reason"]
    assert "nor malloc's memory in use grew in every cycle" not in v["reason"]  # no census


# -- settled: a profile with `settle` stops cycling once more cycles would not change it ------
def test_a_leak_is_settled_at_once() -> None:
    v = verdict.decide(cycles(SLOW_RSS[:3], py_census_mb=[20.0, 22.0, 24.1],
                              py_census_objects=[50000, 50600, 51200]))
    assert verdict.settled(v) == "leak (python objects) at 3 cycles"


def test_a_plateau_is_settled_after_two_cycles_within_the_noise() -> None:
    assert verdict.settled(verdict.decide(cycles([900, 903, 901]))).startswith(
        "plateau: the last two cycles moved +3.0 and -2.0 MB")
    # Reached in the last cycle only (a jump of 60 MB, then 3): not yet.
    v = verdict.decide(cycles([600, 700, 703]))
    assert v["verdict"] == "plateau" and verdict.settled(v) is None


def test_inconclusive_and_one_step_retention_go_on_cycling() -> None:
    assert verdict.settled(verdict.decide(cycles([600, 650, 620]))) is None
    v = verdict.decide(_churn([97.5, 98.3, 109.7], [65.6, 65.8, 77.1], [6.6, 7.2, 7.24],
                              [11.65, 12.23, 12.24]), trim_freed_mb=75.5)
    assert v["verdict"] == "allocator retention" and verdict.settled(v) is None
