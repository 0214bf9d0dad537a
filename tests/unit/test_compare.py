"""`infbench compare`: a planted difference is found, noise is not, other setups are refused."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.report import compare
from tests.fixtures.runfixtures import MACHINE, make_run

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def rows_of(result: dict[str, Any], variant: str = "v1") -> dict[tuple[str, Any], Any]:
    v = next(x for x in result["variants"] if x["variant"] == variant)
    return {(r["metric"], r["step"]): r for r in v["rows"]}


def test_mann_whitney_exact_and_normal() -> None:
    # Fully separated 5 vs 5: exact two-sided p = 2 / C(10, 5).
    p, method = compare.mann_whitney([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert method == "exact" and p == pytest.approx(2 / 252)
    # Fully separated 10 vs 10 is past the exact limit: normal approximation with the
    # continuity correction, z = (50 - 0.5) / sqrt(10 * 10 * 21 / 12).
    p, method = compare.mann_whitney(list(range(10)), list(range(10, 20)))
    z = 49.5 / math.sqrt(175)
    assert method == "normal" and p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-9)
    # Identical samples, all tied: no evidence at all.
    assert compare.mann_whitney([3.0] * 4, [3.0] * 4)[0] == pytest.approx(1.0)
    # Both methods agree on an interleaved case near the limit.
    rng = random.Random(0)
    a, b = [rng.random() for _ in range(7)], [rng.random() + 0.2 for _ in range(7)]
    exact, _ = compare.mann_whitney(a, b)
    ties = 0
    n1 = n2 = 7
    u = sum(compare.midranks(a + b)[:7]) - 28
    z = (abs(u - 24.5) - 0.5) / math.sqrt(n1 * n2 * (n1 + n2 + 1 - ties) / 12)
    assert exact == pytest.approx(math.erfc(z / math.sqrt(2)), abs=0.03)


def test_mann_whitney_is_calibrated_and_has_power() -> None:
    """Same distribution: about ALPHA of the tests say significant (not more); a shift of one
    standard deviation: most do. Both the exact (6 vs 6) and the normal (9 vs 9) paths."""
    rng = random.Random(11)
    for n in (6, 9):
        null = shifted = 0
        for _ in range(300):
            a = [rng.gauss(0, 1) for _ in range(n)]
            b = [rng.gauss(0, 1) for _ in range(n)]
            c = [rng.gauss(1.5, 1) for _ in range(n)]
            null += compare.mann_whitney(a, b)[0] < compare.ALPHA
            shifted += compare.mann_whitney(a, c)[0] < compare.ALPHA
        assert null / 300 <= 0.08, (n, null)
        assert shifted / 300 >= 0.5, (n, shifted)


def test_windows_count_requests_per_window() -> None:
    rows = [{"t": 100.0 + s, "users": 4 if s else 0, "requests": 6 * s, "p50_ms": 100.0 + s,
             "p95_ms": 200.0} for s in range(0, 13)]
    samples, width = compare.windows(rows)
    assert width == 1.0  # 11 s of load / 6 windows: whole seconds
    assert [w["rps"] for w in samples] == [6.0] * 11
    samples, width = compare.windows(rows, width=5.0)
    assert [w["rps"] for w in samples] == [6.0, 6.0]
    assert samples[0]["p50_ms"] == 104.0  # median of the rows inside (102..106 s)


def test_judge_says_not_significant_within_noise() -> None:
    rng = random.Random(7)
    a = [100 + rng.gauss(0, 10) for _ in range(8)]
    b = [100 + rng.gauss(0, 10) for _ in range(8)]
    row = compare.compare_metric("p50", "ms", 100.0, 110.0, a, b, 5.0, False, "5%")
    assert row["significant"] is False and row["p"] >= compare.ALPHA
    assert row["says"].startswith("not significant (p = ")
    row = compare.compare_metric("p50", "ms", 100.0, 103.0, a, b, 5.0, False, "5%")
    assert row["significant"] is False and row["p"] is None  # below the minimum effect
    assert "below the minimum effect" in row["says"]
    row = compare.compare_metric("p50", "ms", 100.0, 130.0, a[:2], b[:2], 5.0, False, "5%")
    assert row["significant"] is None and "too few samples" in row["says"]


def test_planted_difference_is_detected(tmp_path: Path) -> None:
    a = make_run(tmp_path, "20260101-000000", seed=1)
    b = make_run(tmp_path, "20260102-000000", seed=2, rps=3.5, p50=300, p95=600, extra_mb=100)
    result = compare.compare_runs(a, b)
    rows = rows_of(result)
    for step in (1, 2):
        for metric in ("req/s", "p50", "p95"):
            r = rows[(metric, step)]
            assert r["significant"] is True and r["says"].startswith("worse"), r
            assert r["p"] < compare.ALPHA and r["n_a"] >= 6 and r["n_b"] >= 6
        assert rows[("req/s", step)]["delta"] < 0 and rows[("p50", step)]["delta"] > 0
    for metric in ("memory after test", "memory after cooldown", "memory growth"):
        r = rows[(metric, None)]
        assert r["significant"] is True and r["says"].startswith("worse")
        assert 90 <= r["delta"] <= 110  # the planted +100 MB
    # And the other way round, the same differences are improvements.
    back = rows_of(compare.compare_runs(b, a))
    assert back[("req/s", 1)]["says"].startswith("better")
    assert back[("memory growth", None)]["says"].startswith("better")


def test_noise_only_is_not_significant(tmp_path: Path) -> None:
    a = make_run(tmp_path, "20260101-000000", seed=1, noise=0.2)
    # Same load, other noise; Locust's summary p50 set 8% higher (above the minimum effect)
    # while its per-second figures come from the same distribution: the test must say noise.
    b = make_run(tmp_path, "20260102-000000", seed=3, noise=0.2, p50_reported=216.0)
    result = compare.compare_runs(a, b)
    rows = rows_of(result)
    assert not any(r["significant"] for r in rows.values()), rows
    for step in (1, 2):
        p50 = rows[("p50", step)]
        assert p50["pct"] == pytest.approx(8.0) and p50["p"] is not None
        assert p50["says"].startswith("not significant (p = ")
    assert rows[("memory growth", None)]["says"].startswith("not significant (below")
    assert compare.headline(result).startswith("No significant difference")
    md = compare.markdown(result)
    assert "not significant" in md and "**worse" not in md and "**better" not in md


def test_cli_writes_files_refuses_other_setups_and_force_works(tmp_path: Path) -> None:
    a = make_run(tmp_path, "20260101-000000", seed=1)
    b = make_run(tmp_path, "20260102-000000", seed=2, rps=3.5)
    done = cli("--results", tmp_path, "compare", a.name, b.name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"# infbench compare: {a.name} (A) → {b.name} (B)")
    assert "**worse (p = " in done.stdout
    written = json.loads((b / f"compare-{a.name}-vs-{b.name}.json").read_text())
    assert written["schema"] == compare.COMPARE_SCHEMA and written["forced"] is False
    assert (b / f"compare-{a.name}-vs-{b.name}.md").read_text() in done.stdout

    other = make_run(tmp_path, "20260103-000000", seed=3, profile="quick",
                     machine={**MACHINE, "cpus": 4}, run_hash="def456")
    refused = cli("--results", tmp_path, "compare", a.name, other.name)
    assert refused.returncode == 1 and refused.stdout == ""
    err = refused.stderr.strip().splitlines()
    assert len(err) == 1, refused.stderr
    assert "not comparable" in err[0] and "profile 'smoke' vs 'quick'" in err[0]
    assert "machine cpus 2 vs 4" in err[0] and "--force" in err[0]
    assert not list(other.glob("compare-*"))

    out = tmp_path / "elsewhere"
    forced = cli("--results", tmp_path, "compare", a.name, other.name, "--force",
                 "--out", out)
    assert forced.returncode == 0, forced.stderr
    assert "compared with --force although they differ" in forced.stdout
    saved = json.loads((out / f"compare-{a.name}-vs-{other.name}.json").read_text())
    assert saved["forced"] is True and any("profile" in d for d in saved["differences"])


def test_same_names_but_another_profile_definition_are_refused(tmp_path: Path) -> None:
    a = make_run(tmp_path, "20260101-000000", seed=1)
    b = make_run(tmp_path, "20260102-000000", seed=2, run_hash="0f0f0f")
    with pytest.raises(compare.CompareError, match=r"run id hash abc123 vs 0f0f0f"):
        compare.compare_runs(a, b)


def test_compare_reads_version_1_reference_runs() -> None:
    ref = ROOT / "results" / "reference"
    result = compare.compare_runs(ref, ref)
    rows = rows_of(result, "starlette-uvicorn")
    assert rows[("req/s", 1)]["a"] == rows[("req/s", 1)]["b"] == 15.74
    assert rows[("memory after test", None)]["a"] == 2517.0
    assert not any(r["significant"] for v in result["variants"] for r in v["rows"])
