from __future__ import annotations

from pathlib import Path
from typing import Any

from infbench.analysis import summary
from infbench.results import samples
from tests.fixtures.synth import T0, make_variant, write_mprof


def test_parse_mprof_reads_mem_and_children_and_skips_a_torn_last_line(tmp_path: Path) -> None:
    p = tmp_path / "mprofile.dat"
    write_mprof(p, [(T0 + 1, 10.0), (T0, 5.0)], {0: [(T0, 2.0)], 1: [(T0, 3.0)]})
    with p.open("a") as f:
        f.write("MEM 12.5")  # a crash mid-write leaves half a line
    mp = samples.parse_mprof(p)
    assert mp.mem == [(T0, 5.0), (T0 + 1, 10.0)]  # sorted by time
    assert set(mp.children) == {"0", "1"}
    assert mp.bad_lines == 1
    assert mp.cmdline.startswith("python -m uvicorn")


def test_parse_mprof_missing_file_is_empty(tmp_path: Path) -> None:
    assert samples.parse_mprof(tmp_path / "nope.dat").mem == []


def test_memory_figures_follow_the_definitions(tmp_path: Path) -> None:
    d = make_variant(tmp_path)
    s = summary.summarize_variant(d)
    m = s["memory_mb"]
    assert m["start"] == 100.0  # median of the baseline
    assert m["end"] == 200.0  # last sample at the end of the last drain (t=42)
    assert m["peak"] == 200.0
    assert m["after_cooldown"] == 180.0
    assert m["growth"] == 100.0
    assert m["retained"] == 80.0
    assert s["status"] == "complete"
    assert s["startup_s"] == 4.5


def test_step_figures_come_from_locust_csv_and_phases(tmp_path: Path) -> None:
    s = summary.summarize_variant(make_variant(tmp_path))
    s1, s2 = s["steps"]
    assert (s1["batch"], s1["requests"], s1["failures"], s1["cut_off"]) == (2, 48, 1, 2)
    assert (s1["rps"], s1["p50_ms"], s1["p95_ms"]) == (4.8, 120.0, 300.0)
    assert s1["images_per_s"] == 9.4  # the 47 of 48 that succeeded: 4.8 x 47/48 x 2
    assert s1["mem_end_mb"] == 150.0
    assert s2["mem_peak_mb"] == 200.0
    assert s1["complete"] and s2["complete"]
    assert s["totals"] == {"requests": 78, "failures": 1, "cut_off": 2}
    assert s["pauses_server_busy_s"] == [1.5]


def test_interrupted_cooldown_gives_no_after_cooldown_figure(tmp_path: Path) -> None:
    s = summary.summarize_variant(make_variant(tmp_path, status="interrupted",
                                                cut_cooldown=True))
    assert s["memory_mb"]["after_cooldown"] is None
    assert s["memory_mb"]["retained"] is None
    assert s["memory_mb"]["growth"] == 100.0


def test_locust_na_values_are_none(tmp_path: Path) -> None:
    p = tmp_path / "x_stats.csv"
    p.write_text("Type,Name,Request Count,Failure Count,Requests/s,50%,95%\n"
                 ",Aggregated,0,0,0.0,N/A,N/A\n")
    agg = samples.locust_aggregate(p)
    assert agg is not None
    assert agg["requests"] == 0 and agg["p50_ms"] is None and agg["p95_ms"] is None


def test_the_bottleneck_sentence_names_a_full_machine_when_no_one_service_is() -> None:
    split = {"total_ms": 300.0, "model_a_ms": 150.0, "model_b_ms": 145.0, "models_ms": 296.0}

    def services(a: float, b: float) -> dict[str, Any]:
        return {"model_a": {"steps": [{"index": 1, "cpu_pct": a}]},
                "model_b": {"steps": [{"index": 1, "cpu_pct": b}]}}

    full = summary.bottleneck(split, services(75.0, 70.0), 1, cores=1)
    assert "the machine is full" in full and not full.startswith("not saturated")
    idle = summary.bottleneck(split, services(30.0, 20.0), 1, cores=2)
    assert idle.startswith("not saturated") and "machine is full" not in idle
    assert "one after the other" in idle
    one = summary.bottleneck(split, services(95.0, 5.0), 1, cores=2)
    assert not one.startswith("not saturated") and "model_a used 95%" in one
