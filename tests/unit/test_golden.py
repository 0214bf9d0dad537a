"""The committed reference runs, rebuilt by today's report: the same figures they were committed
with, each artifact read once (infbench/results/variant.py). Files in, files out: no servers, no
Redis."""

from __future__ import annotations

import collections
import json
import shutil
import sys
from pathlib import Path
from typing import Any

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
    opened: collections.Counter[str] = collections.Counter()
    counting = [True]

    def hook(event: str, args: tuple[Any, ...]) -> None:
        # An audit hook lasts as long as the process: it counts only while this build runs.
        if counting[0] and event == "open" and isinstance(args[0], str) \
                and args[0].startswith(str(dst)) and args[1] in (None, "r", "rb"):
            opened[str(Path(args[0]).relative_to(dst))] += 1

    sys.addaudithook(hook)
    try:
        build.build(dst)
    finally:
        counting[0] = False
    once = [f"{p.parent.name}/{name}" for p in src.glob("*/phases.json")
            for name in ("phases.json", "processes.csv", "mprofile.dat", "manifest.json")]
    once += [k for k in opened if "/probes-" in k]
    assert len(once) >= 24 and {k: opened[k] for k in once} == dict.fromkeys(once, 1)
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
