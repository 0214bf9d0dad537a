"""The scoring study's services as real processes: Redis, the seed script, the model APIs and
the scoring API, each build on its own server (Gunicorn sync workers / Uvicorn).

One stack per module: a redis-server on a free port seeded with 100 entities, model_a and
model_b of both builds (sleep kind) and a scoring API per build, the sync one wired to the
Flask model APIs and the async one to the FastAPI ones. The fault test starts its own model_b
pair and scoring APIs, so stopping and killing them touches nothing the other tests use.
Every process runs in its own process group and the teardown checks that none is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from infbench.paths import HOST, ROOT
from servers.scoring.common import (
    DEFAULT_MAX_FEATURES,
    META_KEY,
    check_entity_id,
    decode_features,
    encode_features,
    feature_key,
    feature_matrix,
    gunicorn_workers,
    linear_score,
    load_model_api_settings,
    load_scoring_settings,
    root_reason,
    sleep_weights,
    usable_cores,
    workers,
)
from servers.shared.errors import ApiError
from servers.shared.settings import SettingsError
from tests.fixtures import helpers
from tests.fixtures.helpers import child_env, free_port, in_group, redis_argv, wait_redis

ENTITIES, DIM, SEED = 100, 16, 0
SLEEP_MS = (40.0, 50.0)
START_TIMEOUT_S = 30.0
BUILDS = ("flask", "fastapi")
BAD_STATUS = {"flask": 400, "fastapi": 422}  # malformed input: Flask's 400, FastAPI's 422
MAX_SCORING_BODY = 4096
TIMING_KEYS = {"t", "status", "features_ms", "model_a_ms", "model_b_ms", "models_ms", "total_ms",
               "framework_ms", "model_a_server_ms", "model_b_server_ms"}


# ---------------------------------------------------------------------------------------------
# Processes


def live_members(pgid: int) -> list[int]:
    """Processes of a group that are not zombies (a zombie waits for a reaper, it runs nothing)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


@dataclass
class Proc:
    """One service started by the test, in its own process group (pgid == proc.pid)."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    url: str
    env: dict[str, str] = field(default_factory=dict)

    def tail(self, lines: int = 25) -> str:
        return helpers.tail(self.log, lines)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self, grace: float = 10.0) -> list[int]:
        """TERM the group, KILL what is left after `grace`; the group's survivors (none)."""
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(timeout=grace)
        deadline = time.monotonic() + grace
        while live_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.signal_group(signal.SIGKILL)
        time.sleep(0.05)
        return live_members(self.proc.pid)


def spawn(name: str, argv: list[str], env: dict[str, str], logs: Path, port: int) -> Proc:
    log = logs / f"{name}.log"
    return Proc(name, helpers.spawn(argv, env, log), log, f"http://{HOST}:{port}", env)


def wait_healthy(procs: list[Proc], timeout: float = START_TIMEOUT_S) -> dict[str, dict[str, Any]]:
    """Each service's /health once it answers 200 from its own process group."""
    deadline = time.monotonic() + timeout
    return {p.name: helpers.wait_healthy(p.proc, f"{p.url}/health", p.log,
                                         max(0.0, deadline - time.monotonic()), p.name,
                                         own_group=True).json()
            for p in procs}


def server_argv(build: str, module: str, port: int) -> list[str]:
    """The argv the harness uses: Flask on Gunicorn sync workers, FastAPI on Uvicorn."""
    if build == "flask":
        return [sys.executable, "-m", "gunicorn", "-k", "sync", "-w", "1",
                "-b", f"{HOST}:{port}", f"servers.scoring.{module}_flask:app"]
    return [sys.executable, "-m", "uvicorn", f"servers.scoring.{module}_fastapi:app",
            "--host", HOST, "--port", str(port), "--workers", "1", "--no-access-log"]


def start_model_api(build: str, name: str, logs: Path, **extra: str) -> Proc:
    port = free_port()
    settings = {"INFBENCH_MODEL_API_KIND": "sleep", "INFBENCH_MODEL_NAME": name,
                "INFBENCH_MODEL_SEED": str(SEED),
                "INFBENCH_MODEL_SLEEP_MS": "{:g}-{:g}".format(*SLEEP_MS),
                "TF_CPP_MIN_LOG_LEVEL": "2"}
    env = child_env(**{**settings, **extra})
    return spawn(f"{name}-{build}", server_argv(build, "model_api", port), env, logs, port)


def start_scoring(build: str, redis_url: str, a: Proc, b: Proc, timing_dir: Path, logs: Path,
                  tag: str = "", **extra: str) -> Proc:
    port = free_port()
    env = child_env(INFBENCH_FEATURES_URL=redis_url, INFBENCH_MODEL_A_URL=a.url,
                    INFBENCH_MODEL_B_URL=b.url, INFBENCH_TIMING_DIR=str(timing_dir),
                    INFBENCH_MAX_BODY_BYTES=str(MAX_SCORING_BODY), **extra)
    return spawn(f"scoring-{build}{tag}", server_argv(build, "scoring", port), env, logs, port)


def stop_all(procs: list[Proc]) -> None:
    left = {p.name: p.stop() for p in reversed(procs)}
    assert not any(left.values()), f"processes left running: {left}"


# ---------------------------------------------------------------------------------------------
# Fixtures


@dataclass
class Stack:
    redis_url: str
    store: redis.Redis
    seed_output: str
    procs: dict[str, Proc]
    health: dict[str, dict[str, Any]]
    timing_dirs: dict[str, Path]

    def scoring(self, build: str) -> Proc:
        return self.procs[f"scoring-{build}"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    logs = tmp_path_factory.mktemp("scoring-logs")
    port = free_port()
    redis_proc = spawn("redis", redis_argv(port), child_env(), logs, port)
    started = [redis_proc]
    redis_url = f"redis://{HOST}:{port}/0"
    store = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        wait_redis(redis_proc.proc, port, redis_proc.log, START_TIMEOUT_S)

        seeded = subprocess.run(
            [sys.executable, "-m", "servers.scoring.seed_features", "--redis-url", redis_url,
             "--entities", str(ENTITIES), "--dim", str(DIM), "--seed", str(SEED)],
            cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
        assert seeded.returncode == 0, seeded.stderr
        assert seeded.stderr == ""

        models = {f"{n}-{b}": start_model_api(b, n, logs)
                  for b in BUILDS for n in ("model_a", "model_b")}
        started += models.values()
        timing_dirs = {b: tmp_path_factory.mktemp(f"timings-{b}") for b in BUILDS}
        scorers = {f"scoring-{b}": start_scoring(b, redis_url, models[f"model_a-{b}"],
                                                 models[f"model_b-{b}"], timing_dirs[b], logs,
                                                 INFBENCH_TIMING_FLUSH_S="0.2")
                   for b in BUILDS}
        started += scorers.values()
        procs = {**models, **scorers}
        health = wait_healthy(list(procs.values()))
        yield Stack(redis_url, store, seeded.stdout, procs, health, timing_dirs)
    finally:
        store.close()
        stop_all(started)


def post_json(client: httpx.Client, url: str, body: object) -> httpx.Response:
    return client.post(url, content=json.dumps(body), headers={"content-type":
                                                                "application/json"})


def assert_error(r: httpx.Response, status: int, *needles: str) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    message = body["error"]
    assert isinstance(message, str) and message and "\n" not in message
    assert "Traceback" not in message
    for needle in needles:
        assert needle in message, message
    return str(message)


def expected_scores(entity: int) -> tuple[float, float]:
    """What the sleep kind must answer for a seeded entity, computed here from the seed."""
    vector = [float(x) for x in feature_matrix(ENTITIES, DIM, SEED)[entity]]
    return tuple(linear_score(vector, sleep_weights(name, SEED, DEFAULT_MAX_FEATURES))
                 for name in ("model_a", "model_b"))  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Unit: no processes


def test_worker_rule_is_one_per_core_for_both_builds() -> None:
    assert workers() == usable_cores() == len(os.sched_getaffinity(0))
    assert [workers(c) for c in (1, 2, 8)] == [1, 2, 8]
    assert workers(0) == 1
    assert [gunicorn_workers(c) for c in (1, 2)] == [3, 5]


def test_feature_blob_round_trip_and_bad_blob() -> None:
    matrix = feature_matrix(5, DIM, SEED)
    assert matrix.shape == (5, DIM) and matrix.dtype.str == "<f4"
    assert (feature_matrix(5, DIM, SEED) == matrix).all()
    assert not (feature_matrix(5, DIM, SEED + 1) == matrix).all()
    blob = encode_features(matrix[3])
    assert len(blob) == 4 * DIM
    assert decode_features(blob, "k") == [float(x) for x in matrix[3]]
    for bad in (b"", b"12345"):
        with pytest.raises(ApiError) as info:
            decode_features(bad, "features:9")
        assert info.value.status == 502 and "features:9" in info.value.message
    assert feature_key(7) == feature_key("7") == "features:7"


def test_entity_id_rule() -> None:
    assert check_entity_id({"entity_id": 5}) == 5
    assert check_entity_id({"entity_id": "x"}) == "x"
    bad: object
    for bad in (True, 1.0, None, [], "", "x" * 129, 2**63):
        with pytest.raises(ApiError) as info:
            check_entity_id({"entity_id": bad})
        assert info.value.status == 400


def test_settings_errors_name_the_variable(tmp_path: Path) -> None:
    good = {"INFBENCH_FEATURES_URL": "redis://127.0.0.1:1/0",
            "INFBENCH_MODEL_A_URL": "http://127.0.0.1:2", "INFBENCH_MODEL_B_URL": "http://x:3/"}
    s = load_scoring_settings(good)
    assert (s.upstream_timeout, s.timing_dir, s.model_b_url) == (5.0, None, "http://x:3")
    for name, value in [("INFBENCH_FEATURES_URL", "http://127.0.0.1:1"),
                        ("INFBENCH_MODEL_A_URL", "127.0.0.1:2"), ("INFBENCH_MODEL_B_URL", ""),
                        ("INFBENCH_UPSTREAM_TIMEOUT", "0"), ("INFBENCH_UPSTREAM_TIMEOUT", "nan"),
                        ("INFBENCH_TIMING_FLUSH_S", "-1"), ("INFBENCH_MAX_BODY_BYTES", "big"),
                        ("INFBENCH_TIMING_DIR", str(tmp_path / "file" / "sub"))]:
        (tmp_path / "file").write_text("not a folder")
        with pytest.raises(SettingsError, match=rf"^{name}"):
            load_scoring_settings({**good, name: value})
    assert load_model_api_settings({}).sleep_ms == SLEEP_MS
    for name, value in [("INFBENCH_MODEL_API_KIND", "gpu"), ("INFBENCH_MODEL_SLEEP_MS", "50-40"),
                        ("INFBENCH_MODEL_SEED", "x"), ("INFBENCH_CALL", "apply"),
                        ("INFBENCH_MAX_FEATURES", "0")]:
        with pytest.raises(SettingsError, match=rf"^{name}"):
            load_model_api_settings({name: value})
    with pytest.raises(SettingsError, match=r"^INFBENCH_MODEL_PATH"):
        load_model_api_settings({"INFBENCH_MODEL_API_KIND": "model"})


def test_root_reason_finds_the_refusal() -> None:
    """A real refused connection through requests, whose wrapping hides the reason."""
    import requests

    port = free_port()  # nothing listens: bound and released
    with pytest.raises(requests.ConnectionError) as info:
        requests.post(f"http://{HOST}:{port}/predict", json={}, timeout=5)
    assert root_reason(info.value) == "Connection refused"


# ---------------------------------------------------------------------------------------------
# Integration: the seed script


@pytest.mark.integration
def test_seed_layout_and_output(stack: Stack) -> None:
    matrix = feature_matrix(ENTITIES, DIM, SEED)
    keys = {bytes(k).decode() for k in stack.store.scan_iter(count=1000)}
    assert keys == {feature_key(i) for i in range(ENTITIES)} | {META_KEY}
    for i in (0, 42, ENTITIES - 1):
        assert stack.store.get(feature_key(i)) == encode_features(matrix[i])
    meta = {k.decode(): v.decode() for k, v in stack.store.hgetall(META_KEY).items()
            if isinstance(k, bytes) and isinstance(v, bytes)}
    assert {k: meta[k] for k in ("entities", "dim", "seed", "dtype", "prefix")} == {
        "entities": str(ENTITIES), "dim": str(DIM), "seed": str(SEED), "dtype": "<f4",
        "prefix": "features:"}
    lines = stack.seed_output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"seeded {ENTITIES} entities x {DIM} float32")
    assert stack.redis_url in lines[0] and lines[0].endswith(" s")


@pytest.mark.integration
def test_seed_one_line_error_when_redis_is_down() -> None:
    port = free_port()  # nothing listens there
    res = subprocess.run([sys.executable, "-m", "servers.scoring.seed_features", "--redis-url",
                          f"redis://{HOST}:{port}/0", "--entities", "5"],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert res.stderr.startswith("seed_features: error: cannot reach Redis")
    assert str(port) in res.stderr


@pytest.mark.integration
@pytest.mark.parametrize("build", BUILDS)
def test_scoring_api_refuses_a_bad_setting(build: str) -> None:
    env = child_env(INFBENCH_FEATURES_URL="redis://127.0.0.1:1/0",
                    INFBENCH_MODEL_A_URL="http://127.0.0.1:2", INFBENCH_MODEL_B_URL="http://x:3",
                    INFBENCH_UPSTREAM_TIMEOUT="soon")
    res = subprocess.run([sys.executable, "-c", f"import servers.scoring.scoring_{build}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0
    assert "INFBENCH_UPSTREAM_TIMEOUT" in res.stderr.strip().splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# Integration: the services


@pytest.mark.integration
def test_health_of_every_service(stack: Stack) -> None:
    with httpx.Client(timeout=10) as client:
        for name, p in stack.procs.items():
            r = client.get(f"{p.url}/health")
            assert r.status_code == 200, (name, r.text)
            body = r.json()
            assert body["status"] == "ok" and in_group(body["pid"], p.proc.pid), (name, body)
            if name.startswith("scoring"):
                assert body["redis"] is True
            else:
                assert body["model"] == name.split("-")[0] and body["kind"] == "sleep"


@pytest.mark.integration
@pytest.mark.parametrize("build", BUILDS)
def test_model_api_predict(stack: Stack, build: str) -> None:
    features = [float(x) for x in feature_matrix(ENTITIES, DIM, SEED)[3]]
    with httpx.Client(timeout=10) as client:
        for name, want in zip(("model_a", "model_b"), expected_scores(3), strict=True):
            r = post_json(client, f"{stack.procs[f'{name}-{build}'].url}/predict",
                          {"features": features})
            assert r.status_code == 200, r.text
            body = r.json()
            assert set(body) == {"score", "model", "elapsed_ms"}
            assert body["model"] == name
            assert body["score"] == pytest.approx(want, rel=1e-9)
            assert body["elapsed_ms"] >= SLEEP_MS[0] - 1.0  # it really slept


@pytest.mark.integration
@pytest.mark.parametrize("build", BUILDS)
def test_score_good_id(stack: Stack, build: str) -> None:
    want_a, want_b = expected_scores(7)
    url = f"{stack.scoring(build).url}/score"
    with httpx.Client(timeout=10) as client:
        r = post_json(client, url, {"entity_id": 7})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["entity_id"] == 7
        assert body["scores"]["a"] == pytest.approx(want_a, rel=1e-9)
        assert body["scores"]["b"] == pytest.approx(want_b, rel=1e-9)
        assert body["score"] == pytest.approx((want_a + want_b) / 2, rel=1e-9)
        timing = body["timing"]
        assert all(isinstance(timing[k], float) and timing[k] >= 0 for k in
                   ("features_ms", "model_a_ms", "model_b_ms", "models_ms", "total_ms",
                    "framework_ms")), timing
        # Each call's round trip contains the model API's own time, which contains its sleep.
        for m in ("model_a", "model_b"):
            assert timing[f"{m}_ms"] >= timing[f"{m}_server_ms"] >= SLEEP_MS[0] - 1.0
        a_plus_b = timing["model_a_ms"] + timing["model_b_ms"]
        if build == "fastapi":
            # Concurrent calls overlap: the span of the two calls (models_ms) is shorter than
            # the two round trips added (each contains a 40-50 ms sleep, and the second is
            # sent before the first is answered). Not total_ms: on a starved machine the
            # feature fetch and the framework can outweigh the overlap (CI: 391 >= 320 ms).
            assert timing["models_ms"] < a_plus_b, timing
        else:
            # One after the other: the request contains both calls in full.
            assert timing["total_ms"] >= a_plus_b, timing
        # The same entity named by a string is the same key, the same answer.
        again = post_json(client, url, {"entity_id": "7"})
        assert again.status_code == 200, again.text
        assert again.json()["entity_id"] == "7"
        assert again.json()["scores"] == body["scores"]


@pytest.mark.integration
def test_both_builds_give_the_same_answers(stack: Stack) -> None:
    with httpx.Client(timeout=10) as client:
        for entity in (0, 1, ENTITIES - 1):
            answers = [post_json(client, f"{stack.scoring(b).url}/score",
                                 {"entity_id": entity}).json() for b in BUILDS]
            assert answers[0]["scores"] == answers[1]["scores"]
            assert answers[0]["score"] == answers[1]["score"]


SCORING_BAD_BODIES: list[tuple[str, bytes, str, str]] = [
    # (case, body, content type, what the one-line error says)
    ("not-json", b'{"entity_id": 1', "application/json", "not valid JSON"),
    ("array", b"[1]", "application/json", "JSON object"),
    ("missing", b'{"entity": 1}', "application/json", "missing field 'entity_id'"),
    ("float", b'{"entity_id": 1.5}', "application/json", "entity_id must be"),
    ("bool", b'{"entity_id": true}', "application/json", "entity_id must be"),
    ("null", b'{"entity_id": null}', "application/json", "entity_id must be"),
    ("list", b'{"entity_id": [1]}', "application/json", "entity_id must be"),
    ("empty-string", b'{"entity_id": ""}', "application/json", "entity_id must be"),
    ("too-long", json.dumps({"entity_id": "x" * 129}).encode(), "application/json",
     "entity_id must be"),
    ("int64-overflow", b'{"entity_id": 9223372036854775808}', "application/json",
     "entity_id must be"),
]


def assert_still_serving(p: Proc, pid: int, client: httpx.Client, path: str,
                         body: object) -> None:
    """Health 200 from the same worker pid (no restart), and a good request still works."""
    health = client.get(f"{p.url}/health")
    assert health.status_code == 200 and health.json()["pid"] == pid, health.text
    r = post_json(client, f"{p.url}{path}", body)
    assert r.status_code == 200, r.text


@pytest.mark.integration
def test_scoring_bad_input_same_message_both_builds(stack: Stack) -> None:
    with httpx.Client(timeout=10) as client:
        messages: dict[str, list[str]] = {}
        for build in BUILDS:
            p = stack.scoring(build)
            url = f"{p.url}/score"
            for case, content, ctype, needle in SCORING_BAD_BODIES:
                r = client.post(url, content=content, headers={"content-type": ctype})
                messages.setdefault(case, []).append(
                    assert_error(r, BAD_STATUS[build], needle))
            for unknown in (ENTITIES, -1, "nope"):
                assert_error(post_json(client, url, {"entity_id": unknown}), 404,
                             "no features for entity", repr(unknown))
            big = json.dumps({"entity_id": "x" * MAX_SCORING_BODY}).encode()
            assert_error(client.post(url, content=big,
                                     headers={"content-type": "application/json"}), 413)
            assert_error(client.get(url), 405)
            assert_error(client.get(f"{p.url}/nope"), 404)
            assert_still_serving(p, stack.health[p.name]["pid"], client, "/score",
                                 {"entity_id": 1})
        # One rule, one wording: both builds explain the same mistake the same way.
        for case, pair in messages.items():
            assert pair[0] == pair[1], (case, pair)


MODEL_BAD_BODIES: list[tuple[str, bytes, str]] = [
    ("not-json", b"nope", "not valid JSON"),
    ("missing", b"{}", "missing field 'features'"),
    ("not-a-list", b'{"features": 3}', "features"),
    ("empty", b'{"features": []}', "expected 1 to"),
    ("string", b'{"features": [1, "2"]}', "features.1"),
    ("bool", b'{"features": [true]}', "features.0"),
    ("nan", b'{"features": [NaN]}', "finite"),
    ("too-many", json.dumps({"features": [0.5] * (DEFAULT_MAX_FEATURES + 1)}).encode(),
     "expected 1 to"),
]


@pytest.mark.integration
def test_model_api_bad_input_same_message_both_builds(stack: Stack) -> None:
    good = {"features": [0.1] * DIM}
    with httpx.Client(timeout=10) as client:
        messages: dict[str, list[str]] = {}
        for build in BUILDS:
            for name in ("model_a", "model_b"):
                p = stack.procs[f"{name}-{build}"]
                url = f"{p.url}/predict"
                for case, content, needle in MODEL_BAD_BODIES:
                    r = client.post(url, content=content,
                                    headers={"content-type": "application/json"})
                    messages.setdefault(case, []).append(
                        assert_error(r, BAD_STATUS[build], needle))
                huge = b'{"features": [' + b"0," * 600_000 + b"0]}"  # over the 1 MiB default
                assert_error(client.post(url, content=huge,
                                         headers={"content-type": "application/json"}), 413)
                assert_error(client.get(url), 405)
                assert_still_serving(p, stack.health[p.name]["pid"], client, "/predict", good)
        for case, found in messages.items():
            assert len(set(found)) == 1, (case, found)


def read_timings(directory: Path) -> dict[int, list[dict[str, Any]]]:
    out = {}
    for path in directory.glob("timings-*.jsonl"):
        pid = int(path.stem.removeprefix("timings-"))
        out[pid] = [json.loads(line) for line in path.read_text().splitlines()]
    return out


@pytest.mark.integration
@pytest.mark.parametrize("build", BUILDS)
def test_timing_lines(stack: Stack, build: str) -> None:
    p = stack.scoring(build)
    since = time.time()
    with httpx.Client(timeout=10) as client:
        for body in ({"entity_id": 11}, {"entity_id": "12"}, {"entity_id": 10**6},
                     {"entity_id": 1.5}):
            post_json(client, f"{p.url}/score", body)
    want = {200: 2, 404: 1, BAD_STATUS[build]: 1}
    deadline = time.monotonic() + 10
    while True:  # written by the log's thread every INFBENCH_TIMING_FLUSH_S (0.2 s here)
        files = read_timings(stack.timing_dirs[build])
        lines = [x for x in files.get(stack.health[p.name]["pid"], []) if x["t"] >= since]
        statuses = {s: sum(x["status"] == s for x in lines) for s in want}
        if statuses == want or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert statuses == want, (files, lines)
    assert list(files) == [stack.health[p.name]["pid"]]  # one file, named by the worker's pid
    for line in lines:
        assert set(line) == TIMING_KEYS, line
        if line["status"] == 200:
            parts = line["features_ms"] + line["models_ms"] + line["framework_ms"]
            assert parts == pytest.approx(line["total_ms"], abs=0.01)
        else:
            assert line["model_a_ms"] is None and line["model_b_ms"] is None


# ---------------------------------------------------------------------------------------------
# Integration: an upstream that hangs, then dies


@pytest.mark.integration
def test_model_b_stopped_then_killed(stack: Stack, tmp_path: Path) -> None:
    """SIGSTOP model_b: 504 within the upstream timeout; SIGKILL its group: 502 at once.

    This test's scoring APIs flush their timing lines only at exit (a flush interval of an
    hour), so finding every status in their files afterwards proves the exit path writes them.
    """
    timeout_s = 1.0
    model_b = {b: start_model_api(b, "model_b", tmp_path) for b in BUILDS}
    scorers = {b: start_scoring(b, stack.redis_url, stack.procs[f"model_a-{b}"], model_b[b],
                                tmp_path / f"timings-{b}", tmp_path, tag="-fault",
                                INFBENCH_UPSTREAM_TIMEOUT=f"{timeout_s:g}",
                                INFBENCH_TIMING_FLUSH_S="3600")
               for b in BUILDS}
    procs = [*model_b.values(), *scorers.values()]
    try:
        health = wait_healthy(procs)
        # A hang would show as the client's own timeout, far beyond the upstream one.
        with httpx.Client(timeout=10 * timeout_s + 5) as client:
            def score(build: str) -> httpx.Response:
                return post_json(client, f"{scorers[build].url}/score", {"entity_id": 5})

            for b in BUILDS:
                assert score(b).status_code == 200
            for p in model_b.values():
                p.signal_group(signal.SIGSTOP)
            try:
                for b in BUILDS:
                    assert_error(score(b), 504, "model_b", "did not answer")
            finally:
                for p in model_b.values():
                    p.signal_group(signal.SIGCONT)
            for p in model_b.values():
                p.signal_group(signal.SIGKILL)
                p.proc.wait(timeout=10)
                assert p.stop() == []
            for b in BUILDS:
                assert_error(score(b), 502, "model_b unreachable")
                h = client.get(f"{scorers[b].url}/health")
                assert h.status_code == 200 and h.json()["pid"] == health[scorers[b].name]["pid"]
        pids = {b: health[scorers[b].name]["pid"] for b in BUILDS}
        for p in scorers.values():
            assert p.stop() == []
        for b in BUILDS:
            lines = read_timings(tmp_path / f"timings-{b}")[pids[b]]
            assert [x["status"] for x in lines] == [200, 504, 502], lines
            assert lines[1]["model_a_ms"] is not None and lines[1]["model_b_ms"] is None
    finally:
        stop_all(procs)


# ---------------------------------------------------------------------------------------------
# Integration: the model kind (a real Keras model; TensorFlow makes this the slow test)


@pytest.mark.integration
def test_model_kind_runs_the_keras_model(tmp_path: Path) -> None:
    from infbench import config
    from infbench.measure import assets

    tiny = config.load(ROOT / "experiments.toml").models["tiny"]
    path = assets.ensure_model(tiny, log=False)  # the project's cached build (3 s the 1st time)
    procs = {b: start_model_api(b, "model_a", tmp_path, INFBENCH_MODEL_API_KIND="model",
                                INFBENCH_MODEL_PATH=str(path)) for b in BUILDS}
    try:
        health = wait_healthy(list(procs.values()), timeout=90)
        matrix = feature_matrix(ENTITIES, DIM, SEED)
        scores: dict[str, list[float]] = {}
        with httpx.Client(timeout=30) as client:
            for build, p in procs.items():
                h = health[p.name]
                assert (h["kind"], h["input_size"], h["call"]) == ("model", tiny.input_size,
                                                                   "predict_on_batch")
                for entity in (3, 4, 3):
                    r = post_json(client, f"{p.url}/predict",
                                  {"features": [float(x) for x in matrix[entity]]})
                    assert r.status_code == 200, r.text
                    assert r.json()["model"] == "model_a"
                    scores.setdefault(build, []).append(r.json()["score"])
                assert_error(post_json(client, f"{p.url}/predict", {"features": ["x"]}),
                             BAD_STATUS[build], "features.0")
        for found in scores.values():
            assert all(0.0 < x < 1.0 for x in found), found
            assert found[0] == pytest.approx(found[2], rel=1e-6)  # the same features again
            assert found[0] != pytest.approx(found[1], rel=1e-6)  # other features reach it
        # One model, one image per feature vector: both builds score alike.
        assert scores["flask"] == pytest.approx(scores["fastapi"], rel=1e-5)
    finally:
        stop_all(list(procs.values()))
