from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from PIL import Image

from infbench import analysis, report
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
    out = report.build(run_dir)
    assert [r["variant"] for r in out["variants"]] == ["v1", "v2"]
    for v in ("v1", "v2"):
        s = json.loads((run_dir / v / "summary.json").read_text())
        assert s["schema"] == analysis.SUMMARY_SCHEMA and s["memory_mb"]["growth"] == 100.0
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
    report.build(run_dir)
    first = (run_dir / "summary.csv").read_text()
    report.build(run_dir)
    assert (run_dir / "summary.csv").read_text() == first


def test_resolve_run_errors_name_recent_runs(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path)
    assert report.resolve_run(tmp_path, run_dir.name) == run_dir
    with pytest.raises(report.ReportError, match=r"no run 'nope'.*recent: " + run_dir.name):
        report.resolve_run(tmp_path, "nope")
