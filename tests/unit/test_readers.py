"""The reader layer: the committed reference runs are the version-1 fixtures; a file from a
newer infbench is one line naming the file and the version."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import summary
from infbench.modes.sweep import RUN_SCHEMA
from infbench.report import compare
from infbench.results import readers, samples, schemas, store

ROOT = Path(__file__).resolve().parents[2]
REF = ROOT / "results" / "reference"
REF_CYCLES = ROOT / "results" / "reference-cycles"
VARIANT = REF / "starlette-uvicorn"


def test_reference_runs_are_version_1() -> None:
    # If someone rewrites the committed runs, these stop being version-1 fixtures.
    for run in (REF, REF_CYCLES):
        assert json.loads((run / "run.json").read_text())["schema"] == 1
        for vd in run.glob("*/summary.json"):
            assert json.loads(vd.read_text())["schema"] == 1
            assert json.loads((vd.parent / "phases.json").read_text())["schema"] == 1


def test_run_json_1_is_migrated() -> None:
    info = readers.run_json(REF)
    assert info["schema"] == RUN_SCHEMA == 2 and info["migrated_from"] == 1
    assert info["harness"] is None and info["error"] is None and info["current"] is None
    assert info["run_id"] == "20261123-093943-seed-d0d560" and info["status"] == "complete"
    assert len(info["variants"]) == 6
    assert store.harness_alive(info["harness"])  # unknown writer: not taken for dead


def test_summary_json_1_is_migrated() -> None:
    s = readers.summary_json(VARIANT)
    assert s["schema"] == schemas.SUMMARY_SCHEMA == 9 and s["migrated_from"] == 1
    assert s["cpu_io"] is None  # 6 added it: not measured before
    assert s["wire"] is None
    assert s["machine_limit"] is None and all(st["limit"] is None for st in s["steps"])  # 8
    assert all(st["stable"] is None and st["open_loop"] is False for st in s["steps"])
    assert s["services"] is None and s["split"] is None and s["events"] == []
    assert s["faults"] == 0
    assert [st["status"] for st in s["steps"]] == ["complete"] * 4
    assert s["memory_mb"]["start"] == 602.5 and s["steps"][0]["rps"] == 15.74
    # A single sweep: "inconclusive" then, "no verdict" now; a cycled run's verdict as it was.
    assert json.loads((VARIANT / "summary.json").read_text())["verdict"]["verdict"] == \
        "inconclusive"
    assert s["verdict"]["verdict"] == "no verdict" and s["verdict"]["cycles"] == 0
    assert s["verdict"]["reason"].startswith("this profile has no cycles")
    cyc = readers.summary_json(REF_CYCLES / "starlette-uvicorn")
    assert cyc["verdict"]["verdict"] == "allocator retention"
    assert cyc["breakdown_mb"]["probed"] is True  # kept as it was


@pytest.mark.parametrize(("profile", "cycles", "steps", "said"), [
    ({"name": "ramp-short", "cycles": 1}, 1, True, "no verdict"),
    ({"name": "cycles", "cycles": 4}, 1, True, "inconclusive"),  # a cycled run cut short
    (None, 1, True, "inconclusive"),  # cannot tell: left as it was
    (None, 0, True, "no verdict"),  # steps without cycle numbers: a sweep run once
    (None, 0, False, "inconclusive"),  # nothing ran (a damaged variant)
])
def test_summary_json_3_single_sweeps_say_no_verdict(tmp_path: Path, profile: Any, cycles: int,
                                                      steps: bool, said: str) -> None:
    vd = tmp_path / "v"
    vd.mkdir()
    doc = {"schema": 3, "variant": "v", "memory_mb": {}, "totals": {}, "profile": profile,
           "steps": [{"index": 1}] if steps else [],
           "verdict": {"verdict": "inconclusive", "cycles": cycles, "per_cycle": [],
                       "reason": f"{cycles} complete cycle(s) with a measured rest; need at "
                                 "least 3 (the first is warm-up)"}}
    (vd / "summary.json").write_text(json.dumps(doc))
    s = readers.summary_json(vd)
    assert s["migrated_from"] == 3 and s["verdict"]["verdict"] == said
    assert s["verdict"]["per_cycle"] == [] and s["verdict"]["cycles"] == cycles


def test_phases_json_1_is_migrated_and_analysed_as_before() -> None:
    ph = readers.phases_json(VARIANT)
    assert ph["schema"] == schemas.PHASES_SCHEMA == 4 and ph["migrated_from"] == 1
    assert ph["services"] == {} and ph["events"] == []
    steps = [p for p in ph["phases"] if p["kind"] == "step"]
    assert len(steps) == 4 and all(p["status"] == "complete" for p in steps)
    # The summary rebuilt from the version-1 files matches the one written then.
    old = json.loads((VARIANT / "summary.json").read_text())
    new = summary.summarize_variant(VARIANT)
    assert new["memory_mb"] == old["memory_mb"]
    assert [s["rps"] for s in new["steps"]] == [s["rps"] for s in old["steps"]]


def test_manifest_and_sample_files() -> None:
    m = readers.manifest_json(VARIANT)
    assert m["schema"] == schemas.MANIFEST_SCHEMA == 1 and "migrated_from" not in m
    rows = samples.processes_csv(VARIANT)  # version 1 columns: no cpu_s / service / replica
    assert rows and rows[0]["cpu_s"] == 0.0 and rows[0]["service"] == "server"
    assert rows[0]["pss_mb"] is None and rows[0]["rss_mb"] > 300
    hist = samples.locust_history(VARIANT / "step1-b10_stats_history.csv")
    assert hist[0]["requests"] == 0 and hist[0]["p50_ms"] is None
    assert hist[-1]["requests"] > 0
    assert all(a["t"] <= b["t"] for a, b in itertools.pairwise(hist))
    assert samples.locust_stats(VARIANT / "step1-b10_stats.csv")["rps"] == pytest.approx(15.74,
                                                                                        abs=0.01)
    mp = samples.parse_mprof(VARIANT / "mprofile.dat")
    assert len(mp.mem) > 1000 and mp.bad_lines == 0
    by_pid, trims = samples.read_probes(REF_CYCLES / "starlette-uvicorn")
    assert by_pid and trims and all(r["t"] for rows in by_pid.values() for r in rows)


def _future(tmp_path: Path, name: str, version: int = 99) -> Path:
    run = tmp_path / "run"
    shutil.copytree(REF, run, ignore=shutil.ignore_patterns("*.png", "*.dat", "processes.csv"))
    path = run / name
    data = json.loads(path.read_text())
    data["schema"] = version
    path.write_text(json.dumps(data))
    return run


@pytest.mark.parametrize(("name", "read"), [
    ("run.json", lambda run: readers.run_json(run)),
    ("starlette-uvicorn/summary.json", lambda run: readers.summary_json(run / "starlette-uvicorn")),
    ("starlette-uvicorn/phases.json", lambda run: readers.phases_json(run / "starlette-uvicorn")),
    ("starlette-uvicorn/manifest.json",
     lambda run: readers.manifest_json(run / "starlette-uvicorn")),
])
def test_a_newer_schema_is_one_line_naming_file_and_version(tmp_path: Path, name: str,
                                                            read: object) -> None:
    run = _future(tmp_path, name)
    with pytest.raises(readers.ReadError) as err:
        read(run)  # type: ignore[operator]
    msg = str(err.value)
    assert "\n" not in msg and str(run / name) in msg and "schema 99 is newer" in msg


def test_bad_versions_and_damage_are_one_line(tmp_path: Path) -> None:
    run = _future(tmp_path, "run.json", version=0)
    with pytest.raises(readers.ReadError, match="no valid schema version"):
        readers.run_json(run)
    (run / "run.json").write_text('{"schema": 1, "run_id": ')
    with pytest.raises(readers.ReadError, match=r"run\.json is not valid JSON"):
        readers.run_json(run)
    (run / "run.json").write_text("[1, 2]")
    with pytest.raises(readers.ReadError, match="not a JSON object"):
        readers.run_json(run)
    bad = tmp_path / "x_stats_history.csv"
    bad.write_text("time,value\n1,2\n")
    with pytest.raises(readers.ReadError, match="not a Locust stats history file"):
        samples.locust_history(bad)
    cmp_file = tmp_path / "compare-a-vs-b.json"
    cmp_file.write_text(json.dumps({"schema": compare.COMPARE_SCHEMA + 1, "variants": []}))
    with pytest.raises(readers.ReadError, match="comparison schema 2 is newer"):
        compare.read_result(cmp_file)


def test_cli_refuses_a_future_summary_in_one_line(tmp_path: Path) -> None:
    run = _future(tmp_path, "starlette-uvicorn/summary.json", version=schemas.SUMMARY_SCHEMA + 1)
    rules = tmp_path / "t.toml"
    rules.write_text('rules = ["failures == 0"]\n')
    done = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path),
                           "check", str(run), "--thresholds", str(rules)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    newer = f"summary.json schema {schemas.SUMMARY_SCHEMA + 1} is newer"
    assert len(lines) == 1 and newer in lines[0]
