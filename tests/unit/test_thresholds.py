"""`infbench check`: rules per variant, PASS/FAIL/SKIP, exit codes 0 / 4 / 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infbench import config
from infbench.report import thresholds
from tests.fixtures.runfixtures import make_run

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def run(tmp_path: Path) -> Path:
    # Two variants; memory 100 -> 200 MB (growth 100), p95 400 ms, no failures.
    return make_run(tmp_path / "results", "20260101-000000", seed=1, variants=("v1", "v2"))


def outcomes(run_dir: Path, text: str, tmp_path: Path) -> list[thresholds.Outcome]:
    return thresholds.check(run_dir, thresholds.load(write(tmp_path / "t.toml", text)))


def test_rules_pass_fail_and_say_why(run: Path, tmp_path: Path) -> None:
    out = outcomes(run, """rules = [
        "growth_mb < 150", "growth_mb < 50", "failures == 0", 'status == "complete"',
        'verdict != "leak*"', "p95_ms < 2000", "p95_ms < 300", "rps >= 4",
        { rule = "growth_mb < 10", variants = ["v2"] },
        { rule = "p95_ms < 300", steps = [1] },
    ]""", tmp_path)
    got = [(o.rule.text, o.variant, o.result) for o in out]
    assert got == [
        ("growth_mb < 150", "v1", "PASS"), ("growth_mb < 150", "v2", "PASS"),
        ("growth_mb < 50", "v1", "FAIL"), ("growth_mb < 50", "v2", "FAIL"),
        ("failures == 0", "v1", "PASS"), ("failures == 0", "v2", "PASS"),
        ('status == "complete"', "v1", "PASS"), ('status == "complete"', "v2", "PASS"),
        ('verdict != "leak*"', "v1", "PASS"), ('verdict != "leak*"', "v2", "PASS"),
        ("p95_ms < 2000", "v1", "PASS"), ("p95_ms < 2000", "v2", "PASS"),
        ("p95_ms < 300", "v1", "FAIL"), ("p95_ms < 300", "v2", "FAIL"),
        ("rps >= 4", "v1", "PASS"), ("rps >= 4", "v2", "PASS"),
        ("growth_mb < 10", "v2", "FAIL"),
        ("p95_ms < 300", "v1", "FAIL"), ("p95_ms < 300", "v2", "FAIL"),
    ]
    growth = next(o for o in out if o.rule.text == "growth_mb < 50")
    assert growth.detail.startswith("growth_mb = 10")  # the figure that failed it (~100)
    p95 = next(o for o in out if o.rule.text == "p95_ms < 300" and o.rule.steps is None)
    assert "step 1 (2 img/req): 400" in p95.detail and "step 2 (4 img/req): 400" in p95.detail
    only_first = next(o for o in out if o.rule.steps == (1,))
    assert "step 1" in only_first.detail and "step 2" not in only_first.detail


def test_missing_figures_fail_unless_optional(run: Path, tmp_path: Path) -> None:
    out = outcomes(run, """rules = [
        "efficiency > 0.8",
        { rule = "efficiency > 0.8", optional = true },
        { rule = "failures == 0", variants = ["nope"] },
    ]""", tmp_path)
    assert [(o.result, o.detail) for o in out] == [
        ("FAIL", "no data"), ("FAIL", "no data"),
        ("SKIP", "no data (optional rule)"), ("SKIP", "no data (optional rule)"),
        ("FAIL", "no data: no such variant in this run"),
    ]


def test_efficiency_and_the_limit_are_read_per_step() -> None:
    # Where summary.json keeps them: each step's efficiency and limit tables (a variant-level
    # `efficiency` key never existed, so the rule could only say "no data").
    summary = {"variant": "x", "steps": [
        {"index": 1, "batch": 1, "efficiency": {"efficiency": 1.5}, "limit": {"fraction": 0.32}},
        {"index": 2, "batch": 10, "efficiency": {"efficiency": 0.94},
         "limit": {"fraction": 0.43}},
        {"index": 3, "batch": 40, "efficiency": {"efficiency": None}, "limit": None}]}
    eff = thresholds.evaluate(thresholds.Rule("efficiency > 0.8", "efficiency", ">", 0.8,
                                              optional=True), summary)
    assert eff.result == "PASS" and "step 2 (10 img/req): 0.94" in eff.detail
    assert "1 step(s) without data" in eff.detail
    lim = thresholds.evaluate(thresholds.Rule("limit_fraction >= 0.4", "limit_fraction", ">=",
                                              0.4), summary)
    assert lim.result == "FAIL" and "step 1 (1 img/req): 0.32" in lim.detail


def test_glob_on_text_and_leak_verdict(run: Path, tmp_path: Path) -> None:
    rule = thresholds.Rule('verdict != "leak*"', "verdict", "!=", "leak*")
    leak = {"variant": "x", "verdict": {"verdict": "leak", "where": "python objects"}}
    assert thresholds.evaluate(rule, leak).result == "FAIL"
    plateau = {"variant": "x", "verdict": {"verdict": "plateau"}}
    assert thresholds.evaluate(rule, plateau).result == "PASS"


@pytest.mark.parametrize(("text", "message"), [
    ("rules = [\"growth < 1\"]", "unknown metric 'growth'"),
    ("rules = [\"growth_mb 150\"]", "is not '<metric> <op> <value>'"),
    ("rules = [\"growth_mb <> 1\"]", "the value '> 1' is neither"),
    ("rules = [\"growth_mb < lots\"]", "neither a number nor a quoted text"),
    ("rules = ['status < \"complete\"']", "a text value takes == or != only"),
    ("rules = [{ rule = \"growth_mb < 1\", variant = [\"v1\"] }]", "unknown key 'variant'"),
    ("rules = [{ rule = \"growth_mb < 1\", steps = [1] }]", "per-step metrics only"),
    ("rules = []", "needs rules = "),
    ("rulez = [\"growth_mb < 1\"]", "unknown key 'rulez'"),
    ("rules = [\"growth_mb < 1\"", "not valid TOML"),
])
def test_bad_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(thresholds.ThresholdError) as err:
        thresholds.load(write(tmp_path / "bad.toml", text))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert str(tmp_path / "bad.toml") in str(err.value)


def test_cli_exit_codes(run: Path, tmp_path: Path) -> None:
    results = run.parent
    good = write(tmp_path / "good.toml", 'rules = ["growth_mb < 150", "failures == 0", '
                 '{ rule = "efficiency > 0.8", optional = true }]\n')
    done = cli("--results", results, "check", run.name, "--thresholds", good)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("PASS  ") == 4 and done.stdout.count("SKIP  ") == 2
    assert "FAIL" not in done.stdout.replace("0 FAIL", "")

    failing = write(tmp_path / "failing.toml", 'rules = ["growth_mb < 150", "p95_ms < 300"]\n')
    done = cli("--results", results, "check", run.name, "--thresholds", failing)
    assert done.returncode == thresholds.EXIT_FAILED_THRESHOLD == 4
    assert "FAIL  v1  p95_ms < 300" in done.stdout and "PASS  v1  growth_mb < 150" in done.stdout

    bad = write(tmp_path / "bad.toml", 'rules = ["growth_mb =< 150"]\n')
    done = cli("--results", results, "check", run.name, "--thresholds", bad)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and "bad.toml" in done.stderr



def test_thresholds_table_in_the_experiments_file(run: Path, tmp_path: Path) -> None:
    """Without --thresholds, `check` reads [thresholds] of experiments.toml, which a run's
    config loading accepts (and ignores)."""
    exp = write(tmp_path / "experiments.toml", (ROOT / "experiments.toml").read_text()
                + '\n[thresholds]\nrules = ["peak_mb < 10"]\n')
    config.load(exp)
    out = thresholds.check(run, thresholds.load(exp, table_required=True))
    assert [(o.variant, o.result) for o in out] == [("v1", "FAIL"), ("v2", "FAIL")]
    with pytest.raises(thresholds.ThresholdError, match=r"no \[thresholds\] table"):
        thresholds.load(ROOT / "experiments.toml", table_required=True)


def test_the_shipped_example_file_parses() -> None:
    rules = thresholds.load(ROOT / "examples" / "thresholds.toml")
    assert {r.metric for r in rules} >= {"failures", "growth_mb", "p95_ms", "verdict"}
    assert any(r.optional for r in rules)
