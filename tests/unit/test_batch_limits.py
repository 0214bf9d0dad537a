"""A variant says how many items a request may carry (its app's known limit, a fixed
INFBENCH_MAX_IMAGES, a declared max_batch); a profile whose steps send more is a one-line
error before anything starts, on every command that runs a load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infbench import config
from infbench.paths import ROOT

BASE = """
[models.m]
arch = "tiny_cnn"
input_size = 32

[profiles.one]
users = 1
spawn_rate = 1
steps = [{ batch = 1, seconds = 1 }]

[profiles.three]
users = 1
spawn_rate = 1
steps = [{ batch = 1, seconds = 1 }, { batch = 3, seconds = 1 }, { batch = 8, seconds = 1 }]

[variants.img]
server = "uvicorn"
app = "starlette"

[variants.capped]
base = "img"
env = { INFBENCH_MAX_IMAGES = "4" }

[variants.mine]
server = "command"
command = ["{python}", "-m", "my.server", "--port", "{port}"]
max_batch = 2

[variants.q]
entry = "api"
[variants.q.services.redis]
server = "redis"
[variants.q.services.api]
server = "gunicorn"
app = "queue-flask"
depends_on = ["redis"]
"""


def load(tmp_path: Path, text: str = BASE) -> config.Experiments:
    p = tmp_path / "e.toml"
    p.write_text(text)
    return config.load(p)


def test_each_source_of_a_limit(tmp_path: Path) -> None:
    exp = load(tmp_path)
    assert exp.variant("img").entry_service.batch_limit() is None
    assert exp.variant("capped").entry_service.batch_limit() == (
        4, "sets env INFBENCH_MAX_IMAGES = 4")
    assert exp.variant("mine").entry_service.batch_limit() == (2, "declares max_batch = 2")
    assert exp.variant("q").entry_service.batch_limit() == (
        1, "runs app 'queue-flask', which takes one image per request")


def test_a_profile_over_the_limit_is_one_line_naming_the_batches(tmp_path: Path) -> None:
    exp = load(tmp_path)
    three, one = exp.profile("three"), exp.profile("one")
    exp.variant("img").check_profile(three)
    for name in ("capped", "mine", "q"):
        exp.variant(name).check_profile(one)
    with pytest.raises(config.ConfigError) as e:
        exp.variant("q").check_profile(three)
    assert str(e.value) == (
        "variants.q: its entry service 'api' runs app 'queue-flask', which takes one image per "
        "request, but profile 'three' has steps with batch 3, 8; use a profile whose steps send "
        "at most 1")
    with pytest.raises(config.ConfigError, match=r"^variants\.capped: it sets env "
                       r"INFBENCH_MAX_IMAGES = 4, but profile 'three' has steps with batch 8;"):
        exp.variant("capped").check_profile(three)
    with pytest.raises(config.ConfigError, match=r"max_batch = 2, .* batch 3, 8; .* at most 2$"):
        exp.variant("mine").check_profile(three)


def test_the_tightest_limit_is_the_one_said(tmp_path: Path) -> None:
    exp = load(tmp_path, BASE.replace('max_batch = 2', 'max_batch = 2\n'
                                      'env = { INFBENCH_MAX_IMAGES = "1" }'))
    assert exp.variant("mine").entry_service.batch_limit() == (
        1, "sets env INFBENCH_MAX_IMAGES = 1")


@pytest.mark.parametrize(("edit", "message"), [
    (('env = { INFBENCH_MAX_IMAGES = "4" }', 'env = { INFBENCH_MAX_IMAGES = "many" }'),
     r"variants\.capped\.env\.INFBENCH_MAX_IMAGES: expected a positive integer, got 'many'"),
    (('env = { INFBENCH_MAX_IMAGES = "4" }', 'env = { INFBENCH_MAX_IMAGES = "0" }'),
     r"INFBENCH_MAX_IMAGES: expected a positive integer, got '0'"),
    (("max_batch = 2", "max_batch = 0"), r"variants\.mine\.max_batch: must be > 0"),
    (("max_batch = 2", 'max_batch = "2"'), r"variants\.mine\.max_batch: expected int"),
    (('app = "queue-flask"', 'app = "queue-flask"\nmax_batch = 5'),
     r"variants\.q\.services\.api\.max_batch: app 'queue-flask' takes one image per request "
     r"\(max_batch 1 at most\), got 5"),
    (("[variants.q]", '[studies.s]\nvariants = ["img", "q"]\nprofile = "three"\n\n[variants.q]'),
     r"studies\.s: variants\.q: its entry service 'api' runs app 'queue-flask'"),
])
def test_limits_that_cannot_hold_are_config_errors(tmp_path: Path, edit: tuple[str, str],
                                                   message: str) -> None:
    old, new = edit
    assert old in BASE
    with pytest.raises(config.ConfigError, match=message) as e:
        load(tmp_path, BASE.replace(old, new, 1))
    assert "\n" not in str(e.value)


def test_the_shipped_variants_declare_their_limits() -> None:
    exp = config.load(ROOT / "experiments.toml")
    for name, v in exp.variants.items():
        limit = v.entry_service.batch_limit()
        if name.startswith(("queue-", "scoring-")):
            assert limit is not None and limit[0] == 1, name
        elif name == "example-json":
            assert limit == (256, "declares max_batch = 256")
        else:  # the image servers and TF-Serving: INFBENCH_MAX_IMAGES follows the profile
            assert limit is None, name


@pytest.mark.parametrize("args", [
    ("run", "queue-fastapi", "--profile", "smoke", "--model", "tiny"),
    ("run", "--study", "queue-replicas", "--profile", "quick"),
    ("capacity", "scoring-async", "--p95-ms", "100", "--batch", "3"),
    ("diagnose", "queue-flask", "--profile", "cycles"),
])
def test_cli_a_profile_that_does_not_fit_stops_before_anything_starts(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    results = tmp_path / "results"
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(results), *args],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.count("\n") == 1, res.stderr
    assert res.stderr.startswith("infbench: error: variants.") and " per request, but " \
        "profile " in res.stderr, res.stderr
    assert res.stdout == ""  # not even the images or the model were prepared
    assert not results.exists()  # no run folder
