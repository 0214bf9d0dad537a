"""The committed reference runs, rebuilt by today's report: the same figures they were committed
with. Files in, files out: no servers, no Redis."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from infbench.paths import ROOT
from infbench.report import build
from infbench.results import readers, schemas


@pytest.mark.parametrize("ref", ["reference", "reference-cycles"])
def test_the_reference_runs_rebuild_to_the_same_figures(tmp_path: Path, ref: str) -> None:
    """The six study hypotheses, their committed version-1 files through today's report: the
    same memory, load and verdict figures as the committed summaries, read as today's reader
    reads them (a version-1 single sweep's "inconclusive" is migrated to "no verdict")."""
    src = ROOT / "results" / ref
    dst = tmp_path / ref
    shutil.copytree(src, dst)
    build.build(dst)
    for committed in src.glob("*/summary.json"):
        old = readers.summary_json(committed.parent)
        new = json.loads((dst / committed.parent.name / "summary.json").read_text())
        assert new["memory_mb"] == old["memory_mb"], committed
        assert new["totals"] == old["totals"]
        keys = ("index", "batch", "requests", "failures", "rps", "p50_ms", "p95_ms",
                "mem_end_mb")
        assert [{k: s[k] for k in keys} for s in new["steps"]] == \
            [{k: s[k] for k in keys} for s in old["steps"]]
        assert new["verdict"]["verdict"] == old["verdict"]["verdict"]
        assert json.loads(committed.read_text())["verdict"]["verdict"] == (
            "inconclusive" if new["verdict"]["verdict"] == schemas.NO_VERDICT
            else new["verdict"]["verdict"])  # what the reference files themselves say
