from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infbench import config
from infbench.paths import ROOT

GOOD = """
[study]
variants = ["a"]
profile = "p"
model = "m"

[models.m]
arch = "tiny_cnn"
input_size = 32

[profiles.p]
users = 2
spawn_rate = 2
steps = [{ batch = 1, seconds = 2 }]

[variants.a]
server = "uvicorn"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "experiments.toml"
    p.write_text(text)
    return p


def test_the_shipped_file_has_the_six_study_hypotheses() -> None:
    exp = config.load(ROOT / "experiments.toml")
    assert len(exp.study_variants) == 6
    v = {n: exp.variant(n) for n in exp.study_variants}
    assert v["starlette-gunicorn"].server == "gunicorn"
    assert v["starlette-hypercorn"].server == "hypercorn"
    assert v["fastapi-uvicorn"].app == "fastapi"
    assert v["starlette-uvicorn-sync-limit1"].thread_limit == 1
    assert (v["starlette-uvicorn-async-limit1"].endpoint,
            v["starlette-uvicorn-async-limit1"].thread_limit) == ("async", 1)
    seed = exp.profile("seed")
    assert [s.batch for s in seed.steps] == [10, 40, 80, 120]
    assert (seed.users, seed.spawn_rate, {s.seconds for s in seed.steps}) == (300, 10, {30})
    assert exp.study_profile == "seed"
    assert {"tiny", "small", "full"} <= set(exp.models)


def test_minimal_file_fills_defaults(tmp_path: Path) -> None:
    exp = config.load(write(tmp_path, GOOD))
    a = exp.variant("a")
    assert (a.app, a.endpoint, a.thread_limit, a.workers) == ("starlette", "sync", 0, 1)
    p = exp.profile("p")
    assert p.steps == (config.Step(batch=1, seconds=2.0),) and p.wait == (0.0, 1.0)
    assert p.planned_seconds() == pytest.approx(10 + 2 + 20 + 15 + 30)
    assert (p.cycles, p.rest, a.probes, a.tracemalloc) == (1, 0.0, False, False)
    assert p.culprit == "auto"


def test_cycles_repeat_the_sweep_with_a_rest(tmp_path: Path) -> None:
    text = GOOD.replace("users = 2", "users = 2\ncycles = 3\nrest = 7")
    p = config.load(write(tmp_path, text)).profile("p")
    assert p.planned_seconds() == pytest.approx(10 + 3 * (2 + 20 + 15) + 3 * 7 + 30)


@pytest.mark.parametrize(("edit", "message"), [
    (('server = "uvicorn"', 'server = "uvicorn"\nthred_limit = 1'),
     r"variants\.a: unknown key 'thred_limit'"),
    (('server = "uvicorn"', 'server = "uvicron"'),
     r"variants\.a\.server: 'uvicron' is not one of"),
    (('users = 2', 'users = "2"'), r"profiles\.p\.users: expected int, got str"),
    (('users = 2', 'users = true'), r"profiles\.p\.users: expected int, got bool"),
    (('users = 2', 'users = 0'), r"profiles\.p\.users: must be > 0"),
    (('{ batch = 1, seconds = 2 }', '{ batch = 1 }'),
     r"profiles\.p\.steps\[0\]: missing required key 'seconds'"),
    (('spawn_rate = 2', 'spawn_rate = 2\nwait = [2, 1]'), r"profiles\.p\.wait: expected"),
    (('variants = ["a"]', 'variants = ["b"]'), r"study\.variants: unknown variant 'b'"),
    (('input_size = 32', ''), r"models\.m: needs either 'path'"),
    (('[variants.a]', '[variant.a]'), r"unknown key 'variant'"),
    (('server = "uvicorn"', 'server = "command"'), r"needs a command list"),
    (('users = 2', 'users = 2\ncycles = 0'), r"profiles\.p\.cycles: must be > 0"),
    (('users = 2', 'users = 2\nrest = -1'), r"profiles\.p\.rest: must be >= 0"),
    (('server = "uvicorn"', 'server = "uvicorn"\nprobes = "yes"'),
     r"variants\.a\.probes: expected bool, got str"),
    (('users = 2', 'users = 2\nculprit = "sometimes"'),
     r"profiles\.p\.culprit: 'sometimes' is not one of auto, always, never"),
])
def test_config_errors_are_one_line_and_name_the_key(tmp_path: Path, edit: tuple[str, str],
                                                     message: str) -> None:
    old, new = edit
    assert old in GOOD
    with pytest.raises(config.ConfigError, match=message) as e:
        config.load(write(tmp_path, GOOD.replace(old, new, 1)))
    assert "\n" not in str(e.value)
    assert str(e.value).startswith(str(tmp_path))


def test_invalid_toml_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(write(tmp_path, "[variants\n"))


def test_unknown_names_list_the_known_ones(tmp_path: Path) -> None:
    exp = config.load(write(tmp_path, GOOD))
    with pytest.raises(config.ConfigError, match=r"unknown variant 'zz' \(known: a\)"):
        exp.variant("zz")
    with pytest.raises(config.ConfigError, match=r"unknown profile"):
        exp.profile("zz")
    with pytest.raises(config.ConfigError, match=r"unknown model"):
        exp.model("zz")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infbench", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args", [
    ("run", "no-such-variant"),
    ("run", "--profile", "no-such-profile"),
    ("run", "starlette-uvicorn", "--model", "no-such-model"),
    ("build", "--runtime", "no-such-runtime"),
])
def test_cli_bad_input_is_one_line_exit_1_and_nothing_starts(tmp_path: Path,
                                                            args: tuple[str, ...]) -> None:
    res = run_cli("--results", str(tmp_path / "results"), *args)
    assert res.returncode == 1, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("infbench: error: ")
    assert not (tmp_path / "results").exists()  # nothing started, nothing written


def test_cli_bad_config_file(tmp_path: Path) -> None:
    bad = write(tmp_path, GOOD.replace('server = "uvicorn"', 'server = 3'))
    res = run_cli("--experiments", str(bad), "list")
    assert res.returncode == 1
    assert "variants.a.server: expected str, got int" in res.stderr
    assert res.stderr.count("\n") == 1


BASED = GOOD + """
[variants.b]
base = "a"
description = "a, with jemalloc"
allocator = "jemalloc"
env = { MALLOC_ARENA_MAX = "2" }

[variants.c]
base = "b"
env = { EXTRA = "1" }

[studies.s]
variants = ["a", "b"]
"""


def test_a_variant_inherits_its_base_and_merges_env(tmp_path: Path) -> None:
    exp = config.load(write(tmp_path, GOOD.replace('server = "uvicorn"',
                                                   'server = "uvicorn"\nenv = { A = "1" }')
                            + BASED.removeprefix(GOOD)))
    b, c = exp.variant("b"), exp.variant("c")
    assert (b.server, b.allocator, b.description) == ("uvicorn", "jemalloc", "a, with jemalloc")
    assert b.env == {"A": "1", "MALLOC_ARENA_MAX": "2"}
    assert c.env == {"A": "1", "MALLOC_ARENA_MAX": "2", "EXTRA": "1"} and c.allocator == "jemalloc"
    assert c.description == ""  # a description is the variant's own
    st = exp.study("s")
    assert st.variants == ("a", "b") and st.profile == "p"


@pytest.mark.parametrize(("edit", "message"), [
    (('base = "a"', 'base = "zz"'), r"variants\.b\.base: unknown variant 'zz'"),
    (('base = "a"', 'base = "c"'),
     r"variants\.[bc]\.base: variants inherit in a circle \(b -> c -> b\)"),
    (('allocator = "jemalloc"', 'allocator = "je"'), r"variants\.b\.allocator: 'je' is not one"),
    (('variants = ["a", "b"]', 'variants = ["a", "x"]'),
     r"studies\.s\.variants: unknown variant 'x'"),
    (('variants = ["a", "b"]', 'variants = ["a"]\nprofile = "q"'),
     r"studies\.s\.profile: unknown profile 'q'"),
])
def test_inheritance_and_study_errors(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in BASED
    with pytest.raises(config.ConfigError, match=message) as e:
        config.load(write(tmp_path, BASED.replace(old, new, 1)))
    assert "\n" not in str(e.value)


def test_the_shipped_allocator_study() -> None:
    exp = config.load(ROOT / "experiments.toml")
    st = exp.study("allocators")
    assert st.profile == "cycles" and exp.profile("cycles").cycles >= 3
    chosen = [exp.variant(n) for n in st.variants]
    assert {v.allocator for v in chosen} == {"glibc", "jemalloc", "mimalloc", "tcmalloc"}
    assert all(v.probes and v.server == "uvicorn" for v in chosen)
    assert exp.variant("alloc-arena2").env["MALLOC_ARENA_MAX"] == "2"
    with pytest.raises(config.ConfigError, match="unknown study 'nope'"):
        exp.study("nope")


def test_the_stability_window_fits_the_step_unless_the_profile_sets_one() -> None:
    short = config.Step(batch=1, seconds=15)
    long = config.Step(batch=1, seconds=300)
    auto = config.Profile(name="p", steps=(short, long))
    assert auto.window_of(short) == 3.75         # three full windows in 15 s, one to spare
    assert auto.window_of(long) == 10.0          # never longer than the default
    assert auto.window_of(config.Step(batch=1, seconds=1)) == 1.0
    fixed = config.Profile(name="p", steps=(short,), stable_window_s=10.0)
    assert fixed.window_of(short) == 10.0        # what the profile says, even if too long


def test_the_old_name_of_trace_runs_trace_with_a_notice(capsys: pytest.CaptureFixture[str]) -> None:
    from infbench.cli import main

    assert main.renamed(["--results", "r", "profile", "v", "--profile", "p"]) == \
        ["--results", "r", "trace", "v", "--profile", "p"]
    assert "`profile` is now `trace`" in capsys.readouterr().err
    assert main.renamed(["run", "--profile", "profile"]) == ["run", "--profile", "profile"]
    assert main.renamed(["--experiments=x.toml", "trace", "v"]) == ["--experiments=x.toml",
                                                                    "trace", "v"]
    assert capsys.readouterr().err == ""
