"""The verdict for a server whose code knows nothing of infbench (tests/fixtures/untouched_app.py:
no probe call, nothing imported), run as `server = "command"` under Uvicorn and under Gunicorn
with two workers, through the real CLI on a short cycled profile.

Four planted kinds, each with its verdict end to end: a leak of big Python objects (96 KiB
bytes a request: named by the heap census's bytes at each rest, not by block counts, with
tracemalloc off as by default; once more with `tracemalloc = true`, which also says where the
objects are kept), a native leak (malloc
without free), thread churn that leaves glibc holding freed memory (a plateau that says it is
allocator retention), and a bounded cache (a plain plateau). Two more run without the probes,
so that only a debugger from outside reads glibc: the native leak is a leak whose kind cannot be
told, the churn's retention is what malloc_trim gives back.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from infbench.paths import ROOT
from tests.fixtures.synth import TINY_MODEL

# Twelve variants of ~35 s each, in two runs at once: over the default 300 s of a test.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

UVICORN = ('["{python}", "-m", "uvicorn", "tests.fixtures.untouched_app:app", "--host", "{host}", '
           '"--port", "{port}", "--no-access-log"]')
GUNICORN = ('["{python}", "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", "2", '
            '"-b", "{host}:{port}", "tests.fixtures.untouched_app:app"]')
# 96 KiB a request (under glibc's 128 KiB mmap threshold): a few hundred requests a cycle
# are tens of MB, well over the verdict's noise even on a busy machine.
KINDS = {"pyleak": 'UNTOUCHED_PYLEAK_KB = "96"', "native": 'UNTOUCHED_NATIVE_KB = "96"',
         "churn": 'UNTOUCHED_CHURN = "320"', "cache": 'UNTOUCHED_CACHE = "100"'}
SERVERS = {"uv": UVICORN, "gu": GUNICORN}
PROBED = [f"{kind}-{server}" for kind in KINDS for server in SERVERS]
OUTSIDE = ["native-uv-outside", "churn-uv-outside"]
TRACED = "pyleak-uv-traced"
# The slow leak most real leaks are: 4 KiB a request, a few MB a cycle, under RSS's noise.
SLOW = "slowleak-uv"


def experiments() -> str:
    text = f"""
[study]
variants = {json.dumps([*PROBED, *OUTSIDE, TRACED, SLOW])}
profile = "cycled"
model = "tiny"

{TINY_MODEL}
[profiles.cycled]
users = 4
spawn_rate = 4
steps = [{{ batch = 1, seconds = 4 }}]
cycles = 3
rest = 3
baseline = 1
pause = 0.5
cooldown = 1
drain_timeout = 3
wait = [0.0, 0.02]
"""
    for kind, env in KINDS.items():
        for server, command in SERVERS.items():
            text += (f'\n[variants.{kind}-{server}]\nserver = "command"\ncommand = {command}\n'
                     f"probes = true\nenv = {{ {env} }}\n")
    for name in OUTSIDE:  # no probes: glibc read by a debugger alone
        env = KINDS[name.split("-")[0]]
        text += f'\n[variants.{name}]\nserver = "command"\ncommand = {UVICORN}\nenv = {{ {env} }}\n'
    text += (f'\n[variants.{TRACED}]\nserver = "command"\ncommand = {UVICORN}\n'
             f"probes = true\ntracemalloc = true\nenv = {{ {KINDS['pyleak']} }}\n")
    text += (f'\n[variants.{SLOW}]\nserver = "command"\ncommand = {UVICORN}\nprobes = true\n'
             'env = { UNTOUCHED_PYLEAK_KB = "4" }\n')
    return text


class Runs(NamedTuple):
    """Two CLI runs at once (the Uvicorn half and the Gunicorn half): the run folder of each
    variant, and what both printed."""

    where: dict[str, Path]
    stdout: str


HALVES = ([v for v in PROBED if v.endswith("-uv")] + [TRACED, SLOW],
          [v for v in PROBED if v.endswith("-gu")] + OUTSIDE)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    base = tmp_path_factory.mktemp("untouched")
    exp = base / "experiments.toml"
    exp.write_text(experiments())
    logs = [base / f"console-{i}.txt" for i in range(len(HALVES))]
    procs = []
    for i, half in enumerate(HALVES):  # output to files: a full pipe would stall a run
        with logs[i].open("w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "infbench", "--results", str(base / f"results-{i}"),
                 "--experiments", str(exp), "run", *half, "--profile", "cycled", "--model",
                 "tiny"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL))
    where: dict[str, Path] = {}
    stdout = ""
    for i, (proc, half) in enumerate(zip(procs, HALVES, strict=True)):
        proc.wait(timeout=900)
        said = logs[i].read_text()
        assert proc.returncode == 0, said[-6000:]
        (run_dir,) = [p for p in (base / f"results-{i}").iterdir()
                      if p.is_dir() and not p.is_symlink()]
        where.update(dict.fromkeys(half, run_dir))
        stdout += said
    return Runs(where, stdout)


def verdict(runs: Runs, variant: str) -> dict[str, Any]:
    path = runs.where[variant] / variant / "summary.json"
    return dict(json.loads(path.read_text())["verdict"])


def _brief(v: dict[str, Any]) -> str:
    return f"{v.get('headline')}: {v.get('reason')} {v.get('per_cycle')}"


APP = ROOT / "tests" / "fixtures" / "untouched_app.py"
KEPT_LINE = next(f"tests/fixtures/untouched_app.py:{n}" for n, line in enumerate(
    APP.read_text().splitlines(), 1) if "_kept.append(" in line)


@pytest.mark.parametrize("server", SERVERS)
def test_big_python_objects_are_a_leak_of_python_objects(run: Runs,
                                                         server: str) -> None:
    v = verdict(run, f"pyleak-{server}")
    assert v["headline"].startswith("leak (python objects): `bytes` +"), _brief(v)
    # Named: the type that grew (the census, every process summed) and, from the culprit
    # window after the judged cycles, the line that keeps it, in each worker.
    assert v["culprit"]["types"][0]["type"] == "bytes", v["culprit"]
    win = v["culprit"]["window"]
    processes = 3 if server == "gu" else 1  # Gunicorn: master + 2 workers, each answers
    assert win["processes"] == win["opened_in"] == processes, win
    assert win["lines"][0]["where"] == KEPT_LINE and KEPT_LINE in v["headline"], win
    assert v["python_heap"]["measure"] == "census_mb"  # tracemalloc is off unless asked
    assert v["python_heap"]["growth_mb"] >= 0.5 * v["growth_after_warmup_mb"] > 0
    assert all(c["py_census_mb"] > 0 for c in v["per_cycle"])
    assert v["kept_at"] == []  # where: only with tracemalloc = true


def test_with_tracemalloc_the_leak_is_also_located(run: Runs) -> None:
    v = verdict(run, TRACED)
    assert v["headline"].startswith("leak (python objects): `bytes` +"), _brief(v)
    # tracemalloc already ran (`tracemalloc = true`): no culprit window, its sites say where.
    assert v["culprit"]["window"] is None and v["culprit"]["types"][0]["type"] == "bytes"
    assert v["probes"]["tracemalloc"] == "from start-up"
    # Where it is kept: the line of the app that appends the bytes.
    assert v["kept_at"] and "tests/fixtures/untouched_app.py:" in v["kept_at"][0]["where"], v
    assert v["kept_at"][0]["kept_mb"] >= 0.5 * v["python_heap"]["growth_mb"] > 0


def test_a_slow_leak_of_4_kb_a_request_is_a_leak(run: Runs) -> None:
    """Named by the heap census's exact bytes, whatever RSS's noise says of each step."""
    v = verdict(run, SLOW)
    assert v["headline"].startswith("leak (python objects): `bytes` +"), _brief(v)
    assert v["culprit"]["window"]["lines"][0]["where"] == KEPT_LINE, v["culprit"]
    census = [c["py_census_mb"] for c in v["per_cycle"]]
    assert all(b > a for a, b in itertools.pairwise(census)), census
    # What the census can tell at this profile, per 1,000 requests, is below this leak's 4 MB.
    assert v["detection_limit"]["census_mb_per_1000_requests"] < 4.0, v["detection_limit"]


@pytest.mark.parametrize("server", SERVERS)
def test_malloc_without_free_is_a_native_leak(run: Runs, server: str) -> None:
    v = verdict(run, f"native-{server}")
    assert v["headline"] == "leak (native allocations)", _brief(v)
    assert v["malloc_in_use_growth_mb"] >= 0.5 * v["growth_after_warmup_mb"] > 0


@pytest.mark.parametrize("server", SERVERS)
def test_thread_churn_is_allocator_retention(run: Runs, server: str) -> None:
    # Each new thread arena adds its holes: a plateau that says what it holds once they are
    # all there, `allocator retention` while they still add up. Either names the retention.
    v = verdict(run, f"churn-{server}")
    assert "allocator retention" in v["headline"], _brief(v)
    assert v["verdict"] in ("plateau", "allocator retention")
    assert v["trim_freed_mb"] >= v["thresholds"]["retained_mb"]


@pytest.mark.parametrize("server", SERVERS)
def test_bounded_cache_is_a_plain_plateau(run: Runs, server: str) -> None:
    v = verdict(run, f"cache-{server}")
    assert v["headline"] == "plateau", _brief(v)


def test_probes_were_injected_in_every_process(run: Runs) -> None:
    for variant in PROBED:
        v = verdict(run, variant)
        processes = 3 if variant.endswith("-gu") else 1  # Gunicorn: master + 2 workers
        assert v["probes"]["processes"] == processes, (variant, v["probes"])
        assert v["probes"]["started_by"] == ["hook"]
        assert v["probes"]["tracemalloc"] is None  # opt-in: it costs under load
        # A census after each rest in every process, the load waiting for it.
        assert v["probes"]["census"]["rests"] == 3, v["probes"]
        assert v["probes"]["census"]["processes"] == processes
        assert all(c["py_census_mb"] > 0 for c in v["per_cycle"]), v["per_cycle"]
        ph = json.loads((run.where[variant] / variant / "phases.json").read_text())
        assert ph["probes"]["server"]["probed"] == processes
        assert not [e for e in ph["events"] if e["kind"] == "probes_missing"]
        census = [p for p in ph["phases"] if p["kind"] == "census"]
        assert [p["cycle"] for p in census] == [1, 2, 3]
        assert all(p["unanswered"] == 0 and p["processes"] == processes for p in census)
        assert "outside" not in v  # every process had a probe: no debugger needed
    for run_dir in set(run.where.values()):
        md = (run_dir / "summary.md").read_text()
        assert "probes injected (sitecustomize, no code change)" in md


def test_without_probes_glibc_is_read_from_outside(run: Runs) -> None:
    v = verdict(run, "native-uv-outside")
    # A Python process whose heap nobody measured: the growth is malloc's, its kind unknown.
    assert v["headline"] == "leak (kind unknown)", _brief(v)
    assert v["probes"] is None and v["outside"]["errors"] == []
    assert v["outside"]["reads"] == 3 + 1  # a read after each rest, the trim at the end
    assert all(c["malloc_in_use_mb"] > 0 for c in v["per_cycle"])
    v = verdict(run, "churn-uv-outside")
    assert "allocator retention" in v["headline"], _brief(v)
    assert v["trim_freed_mb"] >= v["thresholds"]["retained_mb"]
    trims = v["outside"]["trims"]
    assert len(trims) == 1 and trims[0]["alive"] and trims[0]["freed_mb"] > 0
    for name in OUTSIDE:  # the server survived every stop of the debugger
        ph = json.loads((run.where[name] / name / "phases.json").read_text())
        assert ph["status"] == "complete" and ph["outside"]["max_pause_s"] > 0


def test_the_console_says_each_verdict(run: Runs) -> None:
    assert "verdict (leak, allocator retention or plateau" in run.stdout
    for variant in [*PROBED, *OUTSIDE, TRACED, SLOW]:
        line = next(ln for ln in run.stdout.splitlines()
                    if ln.strip().startswith(variant + " "))
        assert verdict(run, variant)["headline"] in line
    said = ""
    for run_dir in sorted(set(run.where.values())):
        res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(run_dir.parent),
                              "report", run_dir.name], cwd=ROOT, capture_output=True, text=True,
                             timeout=120)
        assert res.returncode == 0, res.stderr
        said += res.stdout
    assert "leak (python objects)" in said and "leak (native allocations)" in said
