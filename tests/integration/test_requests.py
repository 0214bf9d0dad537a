"""Request templates: a server of your own, with its own request shape, through the same load.

Unit tests for the template's config checks; integration runs against tests/fixtures/shape_app.py, a
server that answers 400 unless each body is exactly what its template should produce, and
against the README's worked example (examples/json_server.py, a real model behind a
TF-Serving-style JSON API).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench import config
from infbench.config import ConfigError, Step
from infbench.paths import ROOT
from tests.fixtures.synth import TINY_MODEL

HEAD = """
[study]
variants = {variants}
profile = "{profile}"
model = "tiny"

""" + TINY_MODEL + """
# drain_timeout: a step's requests may all still be in flight after its 2 s on a starved machine
# (CI: the first TensorFlow call of the example server outlasted the step and a 3 s drain, so
# the step was judged all-failed); a longer drain costs nothing when they finish early.
[profiles.shapes]
users = 3
spawn_rate = 3
steps = [{{ batch = 1, seconds = 2 }}, {{ batch = 3, seconds = 2 }}]
baseline = 0.5
pause = 0.5
cooldown = 0.5
drain_timeout = 20
wait = [0.0, 0.05]

[profiles.single]
users = 3
spawn_rate = 3
steps = [{{ batch = 1, seconds = 2 }}]
baseline = 0.5
pause = 0.5
cooldown = 0.5
drain_timeout = 20
wait = [0.0, 0.05]
"""

SHAPE_SERVER = """server = "command"
command = ["{python}", "-m", "uvicorn", "tests.fixtures.shape_app:app", "--host", "{host}",
           "--port", "{port}", "--no-access-log"]
health_path = "/ready"
"""

VARIANTS = f"""
[variants.shape-json]
{SHAPE_SERVER}
[variants.shape-json.request]
path = "/json?n={{batch}}"
body = "json"
json = {{ inputs = {{ batch = "{{batch}}", images = "{{images}}" }} }}
image = {{ data = "{{b64}}", px = "{{pixels}}" }}
image_size = 8

[variants.shape-npy]
{SHAPE_SERVER}
[variants.shape-npy.request]
path = "/npy/{{batch}}"
body = "npy"
image_size = 8

[variants.shape-raw]
{SHAPE_SERVER}
[variants.shape-raw.request]
method = "put"
path = "/raw"
body = "binary"
headers = {{ X-Token = "secret" }}
ok_status = 201

[variants.shape-raw-wrong]
{SHAPE_SERVER}
[variants.shape-raw-wrong.request]
method = "PUT"
path = "/raw"
body = "binary"
ok_status = 201

[variants.example-json]
server = "command"
command = ["{{python}}", "-m", "uvicorn", "examples.json_server:app", "--host", "{{host}}",
           "--port", "{{port}}", "--no-access-log"]
health_path = "/v1/models/default"
[variants.example-json.request]
path = "/v1/models/default:predict"
body = "json"
json = {{ instances = "{{images}}" }}
image = {{ b64 = "{{b64}}" }}
"""


def experiments(tmp: Path, variants: list[str], profile: str) -> Path:
    p = tmp / "experiments.toml"
    p.write_text(HEAD.format(variants=json.dumps(variants), profile=profile) + VARIANTS)
    return p


def run(tmp: Path, variants: list[str], profile: str) -> tuple[subprocess.CompletedProcess[str],
                                                                  Path]:
    exp = experiments(tmp, variants, profile)
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp / "results"),
                          "--experiments", str(exp), "run"], cwd=ROOT, capture_output=True,
                         text=True, timeout=240)
    runs = [p for p in (tmp / "results").glob("*") if p.is_dir() and not p.is_symlink()]
    return res, (runs[0] if runs else tmp / "results")


def aggregated(path: Path) -> dict[str, Any]:
    with path.open() as f:
        return next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")


# -- config ---------------------------------------------------------------------------------


MINIMAL = """[models.m]\narch = "tiny_cnn"\ninput_size = 32\n
[profiles.p]\nusers = 1\nspawn_rate = 1\nsteps = [{ batch = 1, seconds = 1 }]\n"""


def load_variant(tmp_path: Path, request: str) -> config.Variant:
    p = tmp_path / "e.toml"
    p.write_text(MINIMAL + f'[variants.v]\nserver = "uvicorn"\n[variants.v.request]\n{request}\n')
    return config.load(p).variants["v"]


def test_default_request_is_our_servers_contract(tmp_path: Path) -> None:
    r = load_variant(tmp_path, "")
    assert (r.request.method, r.request.path, r.request.body, r.request.form_field) == \
        ("POST", "/predict", "multipart", "images")


@pytest.mark.parametrize(("request_toml", "message"), [
    ('body = "json"', 'needs a json template with "{images}"'),
    ('body = "json"\njson = { x = "{batch}" }', 'needs a json template with "{images}"'),
    ('body = "json"\njson = { x = "{images}" }\nimage = { y = 1 }', "per-image template needs"),
    ('body = "npy"\nfield = "f"', "field: only used with body = 'multipart'"),
    ('json = { x = "{images}" }', "json: only used with body = 'json'"),
    ('method = "DELETE"', "method: 'DELETE' is not one of POST, PUT, PATCH"),
    ('body = "xml"', "body: 'xml' is not one of"),
    ('path = "predict"', "path: must start with '/'"),
    ("ok_status = [200, 999]", "999 is not an HTTP status"),
    ("headers = { A = 1 }", "headers.A: expected str"),
    ("image_size = 0", "image_size: must be > 0"),
    ('verb = "POST"', "unknown key 'verb'"),
])
def test_bad_request_templates_are_one_line_errors(tmp_path: Path, request_toml: str,
                                                   message: str) -> None:
    with pytest.raises(ConfigError, match=r"variants\.v\.request") as e:
        load_variant(tmp_path, request_toml)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_binary_body_refuses_batches_over_one(tmp_path: Path) -> None:
    v = load_variant(tmp_path, 'body = "binary"')
    v.request.check_steps("variants.v", (Step(1, 2.0),))
    with pytest.raises(ConfigError, match=r"one image per request.*batch 10, 40"):
        v.request.check_steps("variants.v", (Step(1, 2.0), Step(10, 2.0), Step(40, 2.0)))


def test_request_inherits_from_base(tmp_path: Path) -> None:
    p = tmp_path / "e.toml"
    p.write_text(MINIMAL + '[variants.a]\nserver = "uvicorn"\n[variants.a.request]\npath = "/x"\n'
                 '[variants.b]\nbase = "a"\nthread_limit = 1\n')
    assert config.load(p).variants["b"].request.path == "/x"


def test_binary_with_a_batched_profile_stops_before_anything_starts(tmp_path: Path) -> None:
    res, _ = run(tmp_path, ["shape-raw"], "shapes")
    assert res.returncode == 1
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and "sends one image per request" in err[0], res.stderr
    assert not list((tmp_path / "results").glob("*/shape-raw")), "a run folder was started"


# -- real load ------------------------------------------------------------------------------


@pytest.mark.integration
def test_json_and_npy_templates_reach_a_strict_server(tmp_path: Path) -> None:
    res, run_dir = run(tmp_path, ["shape-json", "shape-npy"], "shapes")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for variant, path in (("shape-json", "/json?n=3"), ("shape-npy", "/npy/3")):
        stats = aggregated(run_dir / variant / "step2-b3_stats.csv")
        assert int(stats["Request Count"]) > 0
        assert int(stats["Failure Count"]) == 0, (run_dir / variant / "step2-b3_failures.csv"
                                                  ).read_text()
        with (run_dir / variant / "step2-b3_stats.csv").open() as f:
            names = {r["Name"] for r in csv.DictReader(f)}
        assert f"{path} [batch 3]" in names


@pytest.mark.integration
def test_binary_put_with_header_and_201_and_a_missing_header_fails(tmp_path: Path) -> None:
    res, run_dir = run(tmp_path, ["shape-raw", "shape-raw-wrong"], "single")
    # A step whose requests all failed is a fault: the run is partial (exit 3), not complete.
    assert res.returncode == 3, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads((run_dir / "run.json").read_text())["results"] == {
        "shape-raw": "complete", "shape-raw-wrong": "degraded"}
    assert "step_all_failed: step 1: all" in res.stdout
    good = aggregated(run_dir / "shape-raw" / "step1-b1_stats.csv")
    assert int(good["Request Count"]) > 0 and int(good["Failure Count"]) == 0
    # Without the header the strict server says 400: the load must count those as failures.
    bad = aggregated(run_dir / "shape-raw-wrong" / "step1-b1_stats.csv")
    assert int(bad["Request Count"]) > 0 and int(bad["Failure Count"]) == int(bad["Request Count"])
    assert "no X-Token header" in (run_dir / "shape-raw-wrong" / "step1-b1_failures.csv"
                                   ).read_text()


@pytest.mark.integration
def test_worked_example_serves_the_model_over_json(tmp_path: Path) -> None:
    res, run_dir = run(tmp_path, ["example-json"], "shapes")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    summary = json.loads((run_dir / "example-json" / "summary.json").read_text())
    steps = summary["steps"]
    assert [s["batch"] for s in steps] == [1, 3]
    assert all(s["requests"] > 0 and s["failures"] == 0 for s in steps), steps
    assert summary["memory_mb"]["start"] > 0
