"""The queue study's services as real processes: redis-server, model workers, both APIs.

One stack per module, all on free loopback ports, each process in its own process group:

    prefix "qa": 2 workers (batch 2); the FastAPI (uvicorn) and Flask (gunicorn -k sync) APIs
    prefix "qb": the two APIs again with a 1 s job timeout and no worker (504 and cleanup)
    prefix "qc": 1 worker (batch 4) behind a Flask API on gunicorn -k gthread (batching,
                 SIGSTOP/SIGCONT to build a backlog, then SIGTERM mid-batch)

The Redis outage test stops and restarts redis-server, so it runs last. Every group is ended in
the fixtures' finalizers, which then check that nothing of ours is left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from infbench.measure import assets
from infbench.paths import HOST, ROOT
from servers.queue.common import (
    DELIVER_LUA,
    Job,
    Keys,
    SettingsError,
    decode_job,
    encode_job,
    load_settings,
)
from tests.fixtures import helpers
from tests.fixtures.helpers import (
    free_port,
    multipart,
    quiet_env,
    redis_argv,
    spawn,
    tail,
    tiny_onnx,
    wait_redis,
)

pytestmark = pytest.mark.integration

MAX_BODY = 1_000_000
FEEDBACK_TTL = 120
START_TIMEOUT_S = 90.0
STOP_GRACE_S = 15.0
API_NAMES = ("fastapi", "flask")


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass
class Proc:
    """One service we started: a process group leader with its log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    port: int
    popen: subprocess.Popen[bytes] = field(init=False)

    def start(self) -> Proc:
        # Appending: a restarted Redis keeps the first one's lines in the same log.
        self.popen = spawn(self.argv, self.env, self.log, append=True)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 25) -> str:
        return tail(self.log, lines)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def stop(self, term_sent: bool = False) -> None:
        """TERM the group, a grace period, KILL whatever is left, reap."""
        if not term_sent and self.popen.poll() is None:
            self.signal(signal.SIGCONT)  # a test may have left it stopped
            self.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=STOP_GRACE_S)
        self.signal(signal.SIGKILL)
        self.popen.wait(timeout=STOP_GRACE_S)

    def group_alive(self, wait: float = 5.0) -> bool:
        """Anything left in our group? (Orphaned members may take a moment to be reaped.)"""
        deadline = time.monotonic() + wait
        while True:
            try:
                os.killpg(self.pid, 0)
            except ProcessLookupError:
                return False
            if time.monotonic() > deadline:
                return True
            time.sleep(0.05)


def wait_healthy(proc: Proc, path: str = "/health") -> dict[str, Any]:
    r = helpers.wait_healthy(proc.popen, proc.url + path, proc.log, START_TIMEOUT_S, proc.name)
    return dict(r.json())


def api_argv(kind: str, port: int) -> list[str]:
    if kind == "fastapi":
        return [sys.executable, "-m", "uvicorn", "servers.queue.api_fastapi:app", "--host", HOST,
                "--port", str(port), "--no-access-log"]
    if kind == "flask":
        return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "sync", "-b",
                f"{HOST}:{port}", "servers.queue.api_flask:app"]
    assert kind == "flask-gthread"
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads", "8",
            "-b", f"{HOST}:{port}", "servers.queue.api_flask:app"]


def worker_argv(port: int) -> list[str]:
    return [sys.executable, "-m", "servers.queue.worker", "--port", str(port)]


@dataclass
class Stack:
    folder: Path
    redis_port: int
    model: Path
    images: list[bytes]
    procs: dict[str, Proc] = field(default_factory=dict)
    started: list[Proc] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def redis(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.redis_port, socket_timeout=5)

    def add(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Proc:
        proc = Proc(name, argv, env, self.folder / f"{name}.log", port)
        self.started.append(proc)  # registered before it starts, so cleanup never misses it
        self.procs[name] = proc.start()
        return proc

    def start_redis(self) -> Proc:
        proc = self.add("redis", redis_argv(self.redis_port), quiet_env(), self.redis_port)
        wait_redis(proc.popen, self.redis_port, proc.log)
        return proc

    def api_env(self, prefix: str, **extra: str) -> dict[str, str]:
        return quiet_env(INFBENCH_REDIS_URL=self.redis_url, INFBENCH_QUEUE_KEY=prefix,
                         INFBENCH_MAX_BODY_BYTES=str(MAX_BODY),
                         INFBENCH_FEEDBACK_TTL=str(FEEDBACK_TTL), **extra)

    def worker_env(self, prefix: str, batch: int) -> dict[str, str]:
        return quiet_env(INFBENCH_REDIS_URL=self.redis_url, INFBENCH_QUEUE_KEY=prefix,
                         INFBENCH_MODEL_PATH=str(self.model), INFBENCH_QUEUE_BATCH=str(batch))

    def stop_all(self) -> None:
        """TERM the services together (TensorFlow takes a second to exit), reap, then Redis."""
        services = [p for p in reversed(self.started) if not p.name.startswith("redis")]
        for proc in services:
            if proc.popen.poll() is None:
                proc.signal(signal.SIGCONT)  # a test may have left it stopped
                proc.signal(signal.SIGTERM)
        for proc in services:
            proc.stop(term_sent=True)
        for proc in self.started:
            if proc.name.startswith("redis"):
                proc.stop()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("queue")
    images = [p.read_bytes() for p in assets.ensure_images(folder / "build", count=3)]
    st = Stack(folder, free_port(), Path(), images)
    try:
        st.start_redis()
        # The APIs need no model: start them while the model builds.
        for kind in API_NAMES:
            st.add(f"{kind}-qa", api_argv(kind, p := free_port()),
                   st.api_env("qa", INFBENCH_TIMING_DIR=str(folder / "timings")), p)
            st.add(f"{kind}-qb", api_argv(kind, p := free_port()),
                   st.api_env("qb", INFBENCH_JOB_TIMEOUT="1"), p)
        st.add("flask-gthread-qc", api_argv("flask-gthread", p := free_port()),
               st.api_env("qc"), p)
        st.model = tiny_onnx()
        for i in range(2):
            st.add(f"worker-qa-{i}", worker_argv(p := free_port()), st.worker_env("qa", 2), p)
        st.add("worker-qc", worker_argv(p := free_port()), st.worker_env("qc", 4), p)
        for proc in st.started:
            if proc.name != "redis":
                wait_healthy(proc)
        yield st
    finally:
        st.stop_all()
        left = [p.name for p in st.started if p.group_alive()]
        assert not left, f"still running after cleanup: {left}"


def api(stack: Stack, kind: str, prefix: str = "qa") -> httpx.Client:
    return httpx.Client(base_url=stack.procs[f"{kind}-{prefix}"].url, timeout=30.0)


def scan(r: redis.Redis, pattern: str) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=pattern, count=1000))


def one_file(data: bytes, name: str = "images") -> list[tuple[str, tuple[str, bytes, str]]]:
    return [(name, ("x.jpg", data, "image/jpeg"))]


def assert_error(r: httpx.Response, status: int, *needles: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"], body
    assert "\n" not in body["error"]
    for needle in needles:
        assert needle in body["error"], body


def assert_predicts(client: httpx.Client, image: bytes) -> dict[str, Any]:
    r = client.post("/predict", files=one_file(image))
    assert r.status_code == 200, r.text
    return dict(r.json())


# ---------------------------------------------------------------------------------------------
# Settings and encodings (no server)


def test_settings_errors_name_the_variable(tmp_path: Path) -> None:
    url = {"INFBENCH_REDIS_URL": "redis://127.0.0.1:6390/0"}
    s = load_settings("api", url)
    assert (s.prefix, s.job_timeout, s.result_ttl, s.feedback_ttl, s.max_body_bytes) == (
        "infbench", 30.0, 60, 3600, 16 * 1024 * 1024)
    assert s.timing_dir is None
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    assert load_settings("worker", {**url, "INFBENCH_MODEL_PATH": str(model)}).batch == 1
    cases = [("api", {}, "INFBENCH_REDIS_URL"),
             ("api", {"INFBENCH_REDIS_URL": "http://x"}, "INFBENCH_REDIS_URL"),
             ("worker", url, "INFBENCH_MODEL_PATH"),
             ("worker", {**url, "INFBENCH_MODEL_PATH": str(tmp_path / "no.keras")},
              "INFBENCH_MODEL_PATH")]
    for name, value in [("INFBENCH_QUEUE_KEY", "a b"), ("INFBENCH_JOB_TIMEOUT", "0"),
                        ("INFBENCH_JOB_TIMEOUT", "soon"), ("INFBENCH_RESULT_TTL", "-1"),
                        ("INFBENCH_FEEDBACK_TTL", "1.5"), ("INFBENCH_MAX_BODY_BYTES", "big"),
                        ("INFBENCH_TIMING_DIR", str(model / "sub"))]:
        cases.append(("api", {**url, name: value}, name))
    for name, value in [("INFBENCH_QUEUE_BATCH", "0"), ("INFBENCH_CALL", "apply"),
                        ("INFBENCH_DEVICE", "gpu")]:
        cases.append(("worker", {**url, "INFBENCH_MODEL_PATH": str(model), name: value}, name))
    for role, env, name in cases:
        with pytest.raises(SettingsError, match=rf"^{name}"):
            load_settings(role, env)


def test_job_encoding_round_trip() -> None:
    image = b"\xff\xd8\n\x00binary\nwith newlines"
    job = Job("abc", 1.5, 31.5, image)
    assert decode_job(encode_job(job)) == job
    for bad in (b"no header", b"{}\nimage", b"[1]\n", b"\xff\n"):
        with pytest.raises(ValueError):
            decode_job(bad)


@pytest.mark.parametrize("kind, status", [("worker", 1), ("fastapi", 1), ("flask", 4)])
def test_missing_redis_url_stops_at_start(kind: str, status: int) -> None:
    """One line naming the variable; Gunicorn stops with its own "App failed to load" 4."""
    port = free_port()
    argv = worker_argv(port) if kind == "worker" else api_argv(kind, port)
    res = subprocess.run(argv, cwd=ROOT, env=quiet_env(), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == status, res.stderr
    lines = [x for x in res.stderr.splitlines() if "INFBENCH_REDIS_URL" in x]
    assert len(lines) == 1 and "INFBENCH_REDIS_URL: required" in lines[0], res.stderr
    if kind == "worker":
        assert res.stderr.strip() == lines[0]


# ---------------------------------------------------------------------------------------------
# Health and the good path


def test_health_reports_own_pid_and_state(stack: Stack) -> None:
    for kind in API_NAMES:
        proc = stack.procs[f"{kind}-qa"]
        body = httpx.get(proc.url + "/health").json()
        assert body["status"] == "ok" and body["redis"] is True
        assert isinstance(body["queue_length"], int)
        # uvicorn answers itself; gunicorn's worker is a child in the same process group.
        assert os.getpgid(body["pid"]) == proc.pid
        page = httpx.get(proc.url + "/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert 'name="images"' in page.text
    for name, batch in [("worker-qa-0", 2), ("worker-qa-1", 2), ("worker-qc", 4)]:
        proc = stack.procs[name]
        body = httpx.get(proc.url + "/health").json()
        assert body["status"] == "ok" and body["pid"] == proc.pid
        assert body["batch"] == batch and body["device"] == "CPU"
        assert isinstance(body["jobs_done"], int)
        assert_error(httpx.get(proc.url + "/nope"), 404)


@pytest.mark.parametrize("kind", API_NAMES)
def test_predict_good_image(stack: Stack, kind: str) -> None:
    workers = {stack.procs[f"worker-qa-{i}"].pid for i in range(2)}
    with api(stack, kind) as client:
        body = assert_predicts(client, stack.images[0])
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    pred = body["prediction"]
    assert isinstance(pred["class"], int) and 0 <= pred["class"] < 10
    assert 0.0 <= pred["score"] <= 1.0
    t = body["timing"]
    stamps = ["t_received", "t_enqueued", "t_dequeued", "t_model_start", "t_model_done",
              "t_responded"]
    # One machine, one clock: the stamps are in the order the request lived them.
    assert [t[k] for k in stamps] == sorted(t[k] for k in stamps)
    assert 1 <= t["batch_size"] <= 2 and t["worker_pid"] in workers
    assert t["queue_wait_ms"] >= 0 and t["model_ms"] >= 0 and t["total_ms"] > 0
    with stack.redis() as r:
        assert scan(r, "qa:job:*") == [] and scan(r, "qa:result:*") == []
        assert r.ttl(f"qa:pred:{body['id']}") > 0


# ---------------------------------------------------------------------------------------------
# Bad input


def raw_form(parts: list[tuple[str, str | None, bytes]]) -> dict[str, Any]:
    """httpx arguments for a hand-made multipart body (httpx cannot send a text part alone)."""
    content, headers = multipart(parts)
    return {"content": content, "headers": headers}


def chunked_over_limit() -> dict[str, Any]:
    """A multipart body over the limit, streamed without a Content-Length."""
    boundary = uuid.uuid4().hex

    def body() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
               f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode()
        for _ in range(MAX_BODY // 65536 + 4):
            yield b"\xff" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    return {"content": body(),
            "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


# case -> (httpx arguments from a good image, status, a word the error must contain)
BAD_INPUTS: dict[str, tuple[Callable[[bytes], dict[str, Any]], int, str]] = {
    "no file": (lambda img: raw_form([("other", None, b"x")]), 400, "no file"),
    "two files": (lambda img: {"files": [*one_file(img), *one_file(img)]}, 400,
                  "exactly one"),
    "text part": (lambda img: raw_form([("images", None, b"hello")]), 400, "text field"),
    "file in another field": (lambda img: {"files": one_file(img, "image")}, 400, "images"),
    "empty file": (lambda img: {"files": one_file(b"")}, 400, "empty"),
    "not an image": (lambda img: {"files": one_file(b"GIF89a this is not really one")}, 400,
                     "image"),
    "truncated jpeg": (lambda img: {"files": one_file(img[: len(img) // 2])}, 400, "image"),
    "wrong content type": (lambda img: {"json": {"images": []}}, 415, "multipart/form-data"),
    "no content type": (lambda img: {"content": b"raw"}, 415, "multipart/form-data"),
    "over limit": (lambda img: raw_form([("images", "b.jpg", b"\xff" * MAX_BODY)]), 413,
                   "body"),
    "over limit chunked": (lambda img: chunked_over_limit(), 413, "body"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("kind", API_NAMES)
def test_bad_predict_input(stack: Stack, kind: str, case: str) -> None:
    make, status, needle = BAD_INPUTS[case]
    with api(stack, kind) as client:
        assert_error(client.post("/predict", **make(stack.images[1])), status, needle)
        assert_predicts(client, stack.images[1])  # still serving
    with stack.redis() as r:
        assert scan(r, "qa:job:*") == [] and scan(r, "qa:result:*") == []


@pytest.mark.parametrize("kind", API_NAMES)
def test_unknown_path_and_method_are_json(stack: Stack, kind: str) -> None:
    with api(stack, kind) as client:
        assert_error(client.get("/nope"), 404)
        assert_error(client.get("/predict"), 405)


# ---------------------------------------------------------------------------------------------
# Feedback


@pytest.mark.parametrize("kind", API_NAMES)
def test_feedback_round_trip(stack: Stack, kind: str) -> None:
    other = "flask" if kind == "fastapi" else "fastapi"
    with api(stack, kind) as client, api(stack, other) as other_client:
        pred_id = assert_predicts(client, stack.images[2])["id"]
        r = client.post("/feedback", json={"id": pred_id, "correct": True})
        assert r.status_code == 200, r.text
        assert r.json() == {"id": pred_id, "stored": True}
        with stack.redis() as rd:
            stored = json.loads(rd.get(f"qa:feedback:{pred_id}") or b"null")
            assert stored["correct"] is True
            assert 0 < rd.ttl(f"qa:feedback:{pred_id}") <= FEEDBACK_TTL
        # The ids live in Redis, so the other API (and any replica) accepts them too.
        r = other_client.post("/feedback", json={"id": pred_id, "correct": False})
        assert r.status_code == 200, r.text
        with stack.redis() as rd:
            assert json.loads(rd.get(f"qa:feedback:{pred_id}") or b"null")["correct"] is False


BAD_FEEDBACK: list[tuple[dict[str, Any], int, str]] = [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "JSON"),
    ({"json": ["id", True]}, 400, "object"),
    ({"json": {"correct": True}}, 400, "id"),
    ({"json": {"id": "", "correct": True}}, 400, "id"),
    ({"json": {"id": 7, "correct": True}}, 400, "id"),
    ({"json": {"id": "x" * 500, "correct": True}}, 400, "id"),
    ({"json": {"id": "abc"}}, 400, "correct"),
    ({"json": {"id": "abc", "correct": "yes"}}, 400, "correct"),
    ({"json": {"id": "abc", "correct": True, "extra": 1}}, 400, "extra"),
    ({"json": {"id": uuid.uuid4().hex, "correct": True}}, 404, "unknown prediction id"),
    ({"data": {"id": "abc", "correct": "true"}}, 415, "application/json"),
    ({"content": b"x" * (MAX_BODY + 10), "headers": {"content-type": "application/json"}},
     413, "body"),
]


@pytest.mark.parametrize("kind", API_NAMES)
def test_bad_feedback(stack: Stack, kind: str) -> None:
    with api(stack, kind) as client:
        for request, status, needle in BAD_FEEDBACK:
            assert_error(client.post("/feedback", **request), status, needle)
        assert client.get("/health").status_code == 200
    with stack.redis() as r:
        assert scan(r, "qa:feedback:abc") == []


# ---------------------------------------------------------------------------------------------
# Timeouts


@pytest.mark.parametrize("kind", API_NAMES)
def test_no_worker_is_504_and_leaves_nothing(stack: Stack, kind: str) -> None:
    with api(stack, kind, "qb") as client:
        r = client.post("/predict", files=one_file(stack.images[0]))
        assert_error(r, 504, "timeout")
        assert client.get("/health").json()["queue_length"] == 0
    with stack.redis() as rd:
        assert scan(rd, "qb:*") == []


@pytest.mark.parametrize("kind", API_NAMES)
def test_late_result_is_not_left_behind(stack: Stack, kind: str) -> None:
    """A worker that pops a job and finishes after the API gave up delivers nothing."""
    keys = Keys("qb")
    with stack.redis() as rd, api(stack, kind, "qb") as client, ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.post, "/predict", files=one_file(stack.images[0]))
        popped = rd.blmpop(10, 1, keys.queue, direction="LEFT", count=1)
        assert popped is not None
        job = decode_job(popped[1][0])
        assert rd.exists(keys.job(job.id))  # the API still waits
        assert_error(answer.result(timeout=30), 504)
        deliver = rd.register_script(DELIVER_LUA)
        late = json.dumps({"id": job.id, "status": 200, "class": 1, "score": 0.5})
        assert deliver(keys=[keys.job(job.id), keys.result(job.id)], args=[late, 60]) == 0
        assert scan(rd, "qb:*") == []


# ---------------------------------------------------------------------------------------------
# Batching and stopping a worker (worker-qc, batch 4)


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_backlog_is_batched(stack: Stack) -> None:
    worker = stack.procs["worker-qc"]
    n = 6
    with stack.redis() as rd, ThreadPoolExecutor(n) as pool:
        # A stopped worker cannot pop, so the requests pile up as a backlog of n jobs.
        os.kill(worker.pid, signal.SIGSTOP)
        try:
            url = stack.procs["flask-gthread-qc"].url + "/predict"
            futures = [pool.submit(httpx.post, url, files=one_file(stack.images[i % 3]),
                                   timeout=30.0) for i in range(n)]
            _wait_for(f"{n} queued jobs", lambda: len(scan(rd, "qc:job:*")) == n)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        bodies = [f.result(timeout=30) for f in futures]
    for r in bodies:
        assert r.status_code == 200, r.text
        assert r.json()["timing"]["worker_pid"] == worker.pid
    sizes = [r.json()["timing"]["batch_size"] for r in bodies]
    assert max(sizes) > 1 and max(sizes) <= 4, sizes
    # Each batch went through the model once: its jobs share their model stamps.
    by_start: dict[float, list[int]] = {}
    for r in bodies:
        t = r.json()["timing"]
        by_start.setdefault(t["t_model_start"], []).append(t["model_batch"])
    assert all(len(v) == v[0] for v in by_start.values()), by_start


def test_sigterm_finishes_the_batch_in_hand_then_exits_0(stack: Stack) -> None:
    worker = stack.procs["worker-qc"]
    assert worker.popen.poll() is None
    keys = Keys("qc")
    url = stack.procs["flask-gthread-qc"].url + "/predict"
    with stack.redis() as rd, ThreadPoolExecutor(1) as pool:
        for _ in range(10):
            os.kill(worker.pid, signal.SIGSTOP)
            answer = pool.submit(httpx.post, url, files=one_file(stack.images[0]), timeout=30.0)
            _wait_for("the job", lambda: len(scan(rd, "qc:job:*")) == 1)
            if rd.llen(keys.queue) == 0:
                break  # the stopped worker's BLMPOP was served: the job is in its hands
            # Its BLMPOP had just timed out: let it take this job and try again.
            os.kill(worker.pid, signal.SIGCONT)
            assert answer.result(timeout=30).status_code == 200
        else:
            pytest.fail("the stopped worker never held a job")
        os.kill(worker.pid, signal.SIGTERM)
        os.kill(worker.pid, signal.SIGCONT)
        r = answer.result(timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["timing"]["worker_pid"] == worker.pid
        assert worker.popen.wait(timeout=30) == 0, worker.tail()
    assert "SIGTERM" in worker.text()


# ---------------------------------------------------------------------------------------------
# Timings files


@pytest.mark.parametrize("kind", API_NAMES)
def test_timing_lines_per_request(stack: Stack, kind: str, tmp_path: Path) -> None:
    """Written by a fresh API, checked after it has been stopped (so the exit flush counts)."""
    port = free_port()
    env = stack.api_env("qa", INFBENCH_TIMING_DIR=str(tmp_path))
    proc = Proc(f"{kind}-timings", api_argv(kind, port), env, tmp_path / "api.log", port)
    stack.started.append(proc)
    proc.start()
    pid = wait_healthy(proc)["pid"]
    with httpx.Client(base_url=proc.url, timeout=30.0) as client:
        ids = [assert_predicts(client, stack.images[i])["id"] for i in range(2)]
        assert_error(client.post("/predict", files=one_file(b"nope")), 400)
        assert_error(client.post("/predict", content=b"x"), 415)  # refused before the queue
    proc.stop()
    lines = [json.loads(x) for x in (tmp_path / f"timings-{pid}.jsonl").read_text().splitlines()]
    assert [x["status"] for x in lines] == [200, 200, 400]
    assert [x["id"] for x in lines[:2]] == ids
    expected = {"id", "t_received", "t_enqueued", "t_dequeued", "t_model_start",
                "t_model_done", "t_responded", "status", "batch_size", "worker_pid"}
    for x in lines:
        assert set(x) == expected
        assert x["t_received"] <= x["t_enqueued"] <= x["t_dequeued"] <= x["t_responded"]
    assert lines[0]["t_model_start"] <= lines[0]["t_model_done"]
    assert lines[2]["t_model_start"] is None and lines[2]["batch_size"] >= 1


# ---------------------------------------------------------------------------------------------
# Redis going away (last: it restarts redis-server)


def test_redis_outage_then_recovery(stack: Stack) -> None:
    worker = stack.procs["worker-qa-0"]
    apis = [stack.procs[f"{kind}-qa"] for kind in API_NAMES]
    before = worker.text().count("unavailable")
    stack.procs["redis"].stop()
    try:
        for proc in apis:
            r = httpx.get(proc.url + "/health", timeout=10)
            assert r.status_code == 503 and r.json()["redis"] is False, r.text
            assert_error(httpx.post(proc.url + "/predict", files=one_file(stack.images[0]),
                                    timeout=30), 503, "Redis")
        assert httpx.get(worker.url + "/health", timeout=10).status_code == 503
        _wait_for("the worker's retry lines",
                  lambda: worker.text().count("unavailable") >= before + 2)
        assert worker.popen.poll() is None
    finally:
        stack.start_redis()
    # A backoff, not a spin: a handful of lines over the outage, not thousands.
    assert worker.text().count("unavailable") - before < 20
    _wait_for("the worker to say Redis is back", lambda: "answers again" in worker.text())
    for proc in [*apis, worker]:
        wait_healthy(proc)
    with api(stack, "fastapi") as client:
        assert_predicts(client, stack.images[0])
    assert "Traceback" not in worker.text()

