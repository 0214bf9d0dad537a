from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from infbench.analysis import summary
from infbench.report import build, plots
from infbench.results import samples, schemas, store
from tests.fixtures import synth
from tests.fixtures.synth import make_run


def _valid_png(path: Path, min_bytes: int = 10_000) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > min_bytes  # a real plot, not an empty canvas
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def test_report_writes_summaries_tables_and_plots(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    out = build.build(run_dir)
    assert [r["variant"] for r in out["variants"]] == ["v1", "v2"]
    for v in ("v1", "v2"):
        s = json.loads((run_dir / v / "summary.json").read_text())
        assert s["schema"] == schemas.SUMMARY_SCHEMA and s["memory_mb"]["growth"] == 100.0
        w, h = _valid_png(run_dir / v / "memory.png")
        assert 600 <= w <= 2000 and 300 <= h <= 1200
    _valid_png(run_dir / "memory_overlay.png")
    with (run_dir / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["v1", "v2"]
    assert rows[0]["start_mb"] == "100.0" and rows[0]["end_mb"] == "200.0"
    assert rows[0]["s1_b2_requests"] == "48" and rows[0]["s2_b4_p95_ms"] == "500.0"
    md = (run_dir / "summary.md").read_text()
    assert "| v1 | 100 | 200 | +100 | 200 | 180 | 78 | 1 | 2 | complete |" in md
    assert "after API start (MB)" in md and "after test (MB)" in md


def test_report_is_rebuilt_identically(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    build.build(run_dir)
    first = (run_dir / "summary.csv").read_text()
    build.build(run_dir)
    assert (run_dir / "summary.csv").read_text() == first


def test_resolve_run_errors_name_recent_runs(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    assert store.resolve_run(tmp_path, run_dir.name) == run_dir
    with pytest.raises(store.ReportError, match=r"no run 'nope'.*recent: " + run_dir.name):
        store.resolve_run(tmp_path, "nope")


# -- memory plots end where their server stopped running --------------------------------------
STOP = synth.T0 + 52  # the synthetic run's cooldown ends at 52 s: the harness stops the server


def _shutdown_tail(vd: Path, children: bool = False) -> None:
    """What mprof writes after the cooldown: the server shutting down, then 0 MB once it is
    gone (seen in every reference run); with children, their series falling to 0 too."""
    mp = samples.parse_mprof(vd / "mprofile.dat")
    tail = [(STOP + 0.1, 170.0), (STOP + 0.2, 90.0), (STOP + 0.3, 0.0), (STOP + 0.4, 0.0)]
    kids = None
    if children:
        kids = {i: [(t, mb / 2) for t, mb in mp.mem] + [(STOP + 0.1, 40.0), (STOP + 0.2, 0.0)]
                for i in (1, 2)}
    synth.write_mprof(vd / "mprofile.dat", mp.mem + tail, kids)


def _spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """The series each plot is drawn from, as build.build hands them over."""
    seen: dict[str, list[Any]] = {"overlay": [], "variant": []}
    real_overlay, real_variant = plots.overlay_plot, plots.variant_plot

    def overlay(series: list[tuple[str, samples.Mprof]], *a: Any, **kw: Any) -> Path:
        seen["overlay"].append(series)
        return real_overlay(series, *a, **kw)

    def variant(mp: samples.Mprof, *a: Any, **kw: Any) -> Path:
        seen["variant"].append((mp, kw.get("extra", ())))
        return real_variant(mp, *a, **kw)

    monkeypatch.setattr(plots, "overlay_plot", overlay)
    monkeypatch.setattr(plots, "variant_plot", variant)
    return seen


def test_while_running_drops_the_shutdown_and_the_last_zero() -> None:
    s = [(1.0, 10.0), (2.0, 0.0), (3.0, 12.0), (4.0, 11.0), (5.0, 0.0), (6.0, 0.0)]
    assert summary.while_running(s, None) == s[:4]  # a zero inside is a sample: kept
    assert summary.while_running(s, 3.5) == s[:3]
    assert summary.while_running(s, 0.5) == [] and summary.while_running([], 3.0) == []
    ph = {"phases": [{"kind": "setup", "start": 0, "end": 9.0},
                     {"kind": "baseline", "start": 1, "end": 3.0},
                     {"kind": "step", "start": 3, "end": 4.0, "cut_short": True}]}
    assert summary.stop_began(ph) == 4.0
    assert summary.stop_began({"phases": [{"kind": "setup", "start": 0, "end": 9.0}]}) is None


def test_memory_lines_end_at_the_last_sample_of_the_running_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = synth.make_run(tmp_path)
    _shutdown_tail(run_dir / "v1", children=True)
    _shutdown_tail(run_dir / "v2")
    seen = _spy(monkeypatch)
    out = build.build(run_dir)
    (overlay,) = seen["overlay"]
    for name, mp in overlay:  # memory_overlay.png
        assert mp.mem[-1] == (STOP, 180.0), name  # the cooldown's last sample, not 0 MB
        assert all(t <= STOP and mb > 0 for t, mb in mp.mem[-20:])
    v1, _ = seen["variant"][0]  # v1/memory.png: MEM and each child line
    assert v1.mem[-1] == (STOP, 180.0)
    assert {k: c[-1] for k, c in v1.children.items()} == {"1": (STOP, 90.0), "2": (STOP, 90.0)}
    # The raw file and the figures keep every sample: only the drawing ends at the stop.
    raw = samples.parse_mprof(run_dir / "v1" / "mprofile.dat")
    assert raw.mem[-1] == (STOP + 0.4, 0.0)
    row = next(r for r in out["variants"] if r["variant"] == "v1")
    assert row["samples"]["last"] == STOP + 0.4 and row["samples"]["mem"] == len(raw.mem)


def test_a_server_that_died_ends_at_its_last_sample_and_replicas_each_at_theirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = synth.make_run(tmp_path, names=("v1",))
    vd = run_dir / "v1"
    # A topology: two replicas, each with its own mprofile.dat; api-0 died at 25 s (mprof's
    # 0 MB, then nothing), redis-0 ran to the stop and then some.
    ph = json.loads((vd / "phases.json").read_text())
    ph["schema"] = 2
    ph["services"] = {"api-0": {"service": "api"}, "redis-0": {"service": "redis"}}
    ph["events"] = [{"t": synth.T0 + 25.1, "kind": "process_exited", "fault": True}]
    (vd / "phases.json").write_text(json.dumps(ph))
    full = samples.parse_mprof(vd / "mprofile.dat").mem
    for label, series in (("api-0", [x for x in full if x[0] < synth.T0 + 25]
                           + [(synth.T0 + 25.05, 0.0)]),
                          ("redis-0", [(t, 10.0) for t, _ in full]
                           + [(STOP + 0.5, 10.0), (STOP + 0.6, 0.0)])):
        (vd / label).mkdir()
        synth.write_mprof(vd / label / "mprofile.dat", series)
    per = summary.replica_mprofs(vd, ph, running=True)
    assert per["api-0"].mem[-1][0] < synth.T0 + 25 and per["api-0"].mem[-1][1] > 0
    assert per["redis-0"].mem[-1] == (STOP, 10.0)
    seen = _spy(monkeypatch)
    build.build(run_dir)
    (overlay,) = seen["overlay"]
    ((_, summed),) = overlay
    assert summed.mem[-1][0] <= STOP and summed.mem[-1][1] == 10.0  # redis alone, not 0
    _, extra = seen["variant"][0]
    lines = {label: series for label, series, _ in extra if label.startswith("service")}
    assert lines["service api (mprof, 1 replica(s))"][-1][1] > 0
    assert lines["service redis (mprof, 1 replica(s))"][-1] == (STOP, 10.0)
