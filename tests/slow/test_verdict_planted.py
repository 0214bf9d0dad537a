"""Planted behaviour through the whole path: a server that leaks Python objects on purpose (kept
two calls deep in a helper module, made by json's decoder), one that leaks NumPy arrays, one
that leaks native memory (malloc without free) and a healthy one, each run as a custom-command
variant with the probes, three cycles of load. Each must get its verdict from the harness, from
the files alone, and a leak of Python objects its culprit: the type that grew and the line of
the server's own code that keeps it (the culprit window, after the judged cycles)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.paths import ROOT
from tests.fixtures.synth import TINY_MODEL

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EXPERIMENTS = """
[study]
variants = ["planted-leak", "planted-numpy", "planted-native", "planted-healthy"]
profile = "leakcheck"
model = "tiny"

""" + TINY_MODEL + """
[profiles.leakcheck]
users = 4
spawn_rate = 4
steps = [{ batch = 1, seconds = 3 }]
cycles = 4  # at most: each verdict here is settled after 3 (settle = true, the default)
rest = 3
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 3
wait = [0.0, 0.02]

[variants.planted-leak]
server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
probes = true
env = { PLANTED_LEAK = "1000" }

[variants.planted-numpy]
server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
env = { PLANTED_NUMPY_KB = "64" }

[variants.planted-native]
server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
# Through libc's strdup, which heaptrack's attach sees (ctypes' dlsym'd malloc it cannot).
env = { PLANTED_NATIVE_KB = "64", PLANTED_NATIVE_VIA = "strdup" }

[variants.planted-healthy]
server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.planted_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
env = { PLANTED_LEAK = "0" }
# no `probes = true` here: the run's --probes (make ... PROBES=1) turns them on
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("planted")
    exp = base / "experiments.toml"
    exp.write_text(EXPERIMENTS)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(base / "results"),
                          "--experiments", str(exp), "run", "--probes"], cwd=ROOT,
                         capture_output=True, text=True, timeout=540)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    (run_dir,) = [p for p in (base / "results").iterdir() if p.is_dir() and not p.is_symlink()]
    return run_dir


def summary(run_dir: Path, variant: str) -> dict[str, Any]:
    return dict(json.loads((run_dir / variant / "summary.json").read_text()))


def line_of(path: Path, text: str) -> str:
    """`tests/fixtures/<file>:<line>` of the line holding `text`."""
    (n,) = [i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line]
    return f"tests/fixtures/{path.name}:{n}"


FIXTURES = ROOT / "tests" / "fixtures"


def test_leaking_server_is_a_leak_of_python_objects(planted: Path) -> None:
    v = summary(planted, "planted-leak")["verdict"]
    assert v["verdict"] == "leak", v
    assert v["where"] == "python objects"
    # The culprit: the strings, by type; by line, the helper's call into json (its frames
    # folded), reached from the helper that keeps them and the app's handler.
    top = v["culprit"]["types"][0]
    assert top["type"] == "str" and top["objects_per_cycle"] > 1000, v["culprit"]
    win = v["culprit"]["window"]
    assert win["processes"] == win["opened_in"] == 1 and win["frames"] == 32, win
    line = win["lines"][0]
    helpers = FIXTURES / "planted_helpers.py"
    assert line["where"] == line_of(helpers, "return json.loads(text)"), win
    assert line["at"].startswith("json/decoder.py:") and line["blocks"] > 100, line
    assert line["stack"][:3] == [line["where"], line_of(helpers, "_journal.append("),
                                 line_of(FIXTURES / "planted_app.py", "remember(_served")]
    assert "`str` " in v["headline"] and line["where"] in v["headline"]


def test_numpy_arrays_are_named_by_type_and_line(planted: Path) -> None:
    v = summary(planted, "planted-numpy")["verdict"]
    assert (v["verdict"], v["where"]) == ("leak", "python objects"), v["reason"]
    top = v["culprit"]["types"][0]
    assert top["type"] == "numpy.ndarray" and top["mb_per_cycle"] > 1, v["culprit"]
    line = v["culprit"]["window"]["lines"][0]
    assert line["where"] == line_of(FIXTURES / "planted_app.py", "numpy.ones(NUMPY_BYTES"), line
    assert line["at"].startswith("numpy/") and line["kept_mb"] > 0.5, line
    assert len(v["per_cycle"]) == 3 and v["settled"]["after_cycles"] == 3, v["settled"]
    assert v["headline"].startswith("leak (python objects): `numpy.ndarray` +")
    assert v["python_heap"]["grows_every_cycle"]
    assert v["growth_per_cycle_mb"] > v["noise_mb"]
    assert [c["cycle"] for c in v["per_cycle"]] == [1, 2, 3]  # settled: the 4th not run
    assert v["settled"]["after_cycles"] == 3 and v["settled"]["of"] == 4, v["settled"]
    assert v["settled"]["reason"] == "leak (python objects) at 3 cycles"
    assert 0 < v["settled"]["time_to_verdict_s"] < 300
    assert all(c["complete"] and c["requests"] > 0 for c in v["per_cycle"])


def test_native_leak_is_a_leak_of_native_allocations(planted: Path) -> None:
    v = summary(planted, "planted-native")["verdict"]
    assert v["verdict"] == "leak", v
    assert v["where"] == "native allocations"
    assert not v["python_heap"]["grows_every_cycle"]
    # 64 KiB a request: malloc's in-use memory explains the growth.
    assert v["malloc_in_use_growth_mb"] >= 0.5 * v["growth_after_warmup_mb"] > 0
    # The culprit: no tracemalloc window (the census climbed in no cycle), but heaptrack
    # attached to the server for one more step names the native stack that kept the bytes.
    c = v["culprit"]
    assert c["window"] is None and c["native"]["errors"] == [], c
    top = c["native"]["stacks"][0]
    assert "strdup" in top["function"] and top["library"].startswith("libc.so"), c["native"]
    assert top["blocks"] > 50 and top["mb"] >= 0.9 * top["blocks"] * 64 / 1024, top
    assert "strdup" in v["headline"], v["headline"]
    assert v["settled"]["reason"] == "leak (native allocations) at 3 cycles", v["settled"]
    assert (planted / "planted-native" / "native").is_dir()


def test_healthy_server_is_a_plateau(planted: Path) -> None:
    v = summary(planted, "planted-healthy")["verdict"]
    assert v["verdict"] == "plateau", v
    assert abs(v["growth_last_cycle_mb"]) <= v["noise_mb"]
    # Settled once two cycles after warm-up stayed within the noise; else it runs all four.
    if len(v["per_cycle"]) == 3:
        assert v["settled"]["reason"].startswith("plateau: the last two cycles moved")
    else:
        assert len(v["per_cycle"]) == 4 and v["settled"] is None, v


def test_probes_and_trim_are_recorded(planted: Path) -> None:
    for variant in ("planted-leak", "planted-numpy", "planted-native", "planted-healthy"):
        d = planted / variant
        files = list(d.glob("probes-*.jsonl"))
        assert len(files) == 1
        rows = [json.loads(line) for line in files[0].read_text().splitlines()]
        samples = [r for r in rows if "event" not in r]
        assert len(samples) >= 15  # one a second over ~25 s
        assert {r["allocator"] for r in samples} == {"glibc"}
        assert all(r["malloc"]["in_use"] > 0 for r in samples)
        trims = [r for r in rows if r.get("event") == "trim"]
        assert len(trims) == 1 and trims[0]["rss_after_mb"] <= trims[0]["rss_before_mb"] + 1
        ph = json.loads((d / "phases.json").read_text())
        kinds = [p["kind"] for p in ph["phases"]]
        cycles = len(summary(planted, variant)["verdict"]["per_cycle"])
        assert kinds.count("rest") == cycles and "trim" in kinds
        # The culprit window after everything else, only where the census climbed.
        after = kinds[kinds.index("trim") + 1:]
        climbed = variant in ("planted-leak", "planted-numpy", "planted-native")
        assert after == (["window", "window_drain", "window_rest"] if climbed else []), kinds
        if climbed and variant != "planted-native":  # heaptrack's window asks no probe
            assert ph["window"]["opened"]["unanswered"] == ph["window"]["closed"]["unanswered"] \
                == 0, ph["window"]
        assert (d / "trim.request").exists()
    md = (planted / "summary.md").read_text()
    assert "settled after 3 of 4 cycles (leak (python objects) at 3 cycles)" in md
    assert "## Leak, allocator retention or plateau" in md
    assert "**leak** (python objects)" in md and "**plateau**" in md
