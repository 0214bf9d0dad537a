"""A body over the limit is a 413 that the client reads (servers.shared.bodylimit), on every kind of
server we ship, each started as the harness starts it (infbench.launch.argv):

    the image app on Uvicorn and on Hypercorn, the queue API (FastAPI on Uvicorn, with Redis and
    a worker), a model API on Gunicorn's Uvicorn worker and one on Gunicorn's sync workers
    (Flask).

(a) urllib sends a 300 MB body before it reads the answer, by Content-Length and chunked: it
    reads the 413 JSON (not a ConnectionResetError), and the server held none of the body; a
    chunked body over the limit is a 413 on Flask too (not its first LIMIT bytes, served);
(c) a client that never stops sending is read for the drain bound (DRAIN_S), then cut off,
    well before three times the bound; the server stays up;
(d) each server serves a normal request afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from infbench.config import Service
from infbench.launch.argv import server_argv
from infbench.measure import assets
from infbench.paths import HOST
from servers.shared.bodylimit import DRAIN_S
from tests.fixtures.helpers import (
    free_port,
    quiet_env,
    redis_argv,
    spawn,
    stop_group,
    tiny_onnx,
    wait_healthy,
    wait_redis,
)

pytestmark = pytest.mark.integration

LIMIT = 1_000_000
BIG = bytes(300 * 1024 * 1024)
BLOCK = 1024 * 1024
START_TIMEOUT_S = 120.0
# The client that never stops: at most this long, and a send blocked this long is a stall.
FOREVER_S = 3 * DRAIN_S + 10
STALL_S = DRAIN_S
# Peak memory a server may gain while refusing 300 MB: a body kept would be all of it.
PEAK_GROWTH_BOUND = 100 * 1024 * 1024
BOUNDARY = uuid.uuid4().hex
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
# A multipart body that opens a file part, so that a streamed body reaches the limit as a file.
FILE_PART = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="images"; '
             f'filename="big.jpg"\r\nContent-Type: image/jpeg\r\n\r\n').encode()


@dataclass(frozen=True)
class Target:
    service: Service
    content_type: str
    needle: str  # a word of the 413's error
    needs: str = ""  # "model" (INFBENCH_MODEL_PATH), "redis" (the queue API)

    @property
    def prefix(self) -> bytes:
        return FILE_PART if self.content_type == MULTIPART else b""


TARGETS = {
    "image-uvicorn": Target(Service("image", "uvicorn", app="starlette"), MULTIPART, "body",
                            "model"),
    "image-hypercorn": Target(Service("image", "hypercorn", app="starlette"), MULTIPART, "body",
                              "model"),
    "queue-fastapi": Target(Service("api", "uvicorn", app="queue-fastapi"), MULTIPART, "body",
                            "redis"),
    "model-api-gunicorn": Target(Service("model", "gunicorn", app="model-api-fastapi"),
                                 "application/json", "body"),
    # Two sync workers: the two clients that never stop are served at once.
    "model-api-flask": Target(Service("model", "gunicorn", app="model-api-flask", workers=2),
                              "application/json", "capacity"),
}


@dataclass
class Running:
    target: Target
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class Stack:
    servers: dict[str, Running]
    image: bytes  # a small JPEG, for the normal requests


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Every target (and Redis, and a queue worker), started at once, stopped together."""
    folder = tmp_path_factory.mktemp("bodylimit")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_port = free_port()
        procs.append(spawn(redis_argv(redis_port), quiet_env(), folder / "redis.log"))
        wait_redis(procs[-1], redis_port, folder / "redis.log")
        model = tiny_onnx()
        image = assets.ensure_images(folder / "build", count=1)[0].read_bytes()
        queue = {"INFBENCH_REDIS_URL": f"redis://{HOST}:{redis_port}/0",
                 "INFBENCH_QUEUE_KEY": "bl"}
        waits: list[tuple[str, subprocess.Popen[bytes], str, Path]] = []
        servers = {}
        for name, target in TARGETS.items():
            port = free_port()
            env = quiet_env(INFBENCH_MAX_BODY_BYTES=str(LIMIT))
            if target.needs == "model":
                env["INFBENCH_MODEL_PATH"] = str(model)
            elif target.needs == "redis":
                env.update(queue)
            log = folder / f"{name}.log"
            procs.append(spawn(server_argv(target.service, {"port": str(port)}), env, log))
            servers[name] = Running(target, port, procs[-1], log)
            waits.append((name, procs[-1], f"http://{HOST}:{port}/health", log))
        port = free_port()
        worker = Service("worker", "module", module="servers.queue.worker")
        procs.append(spawn(server_argv(worker, {"port": str(port)}),
                           quiet_env(INFBENCH_MODEL_PATH=str(model), **queue),
                           folder / "worker.log"))
        waits.append(("worker", procs[-1], f"http://{HOST}:{port}/health",
                      folder / "worker.log"))
        for name, proc, url, log in waits:
            wait_healthy(proc, url, log, START_TIMEOUT_S, name, own_group=True)
        yield Stack(servers, image)
    finally:
        for proc in procs:  # all of them at once: TensorFlow takes a moment to exit
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(procs):
            stop_group(proc)


# ---------------------------------------------------------------------------------------------
# Helpers


def normal_request(server: Running, image: bytes) -> httpx.Response:
    url = server.url + "/predict"
    if server.target.content_type == MULTIPART:
        return httpx.post(url, files=[("images", ("a.jpg", image, "image/jpeg"))], timeout=60)
    return httpx.post(url, json={"features": [0.25, 0.5, 0.75]}, timeout=60)


def assert_serves(server: Running, image: bytes) -> None:
    assert server.proc.poll() is None, server.log.read_text(errors="replace")[-2000:]
    assert httpx.get(server.url + "/health", timeout=30).status_code == 200
    r = normal_request(server, image)
    assert r.status_code == 200, r.text


def group(server: Running) -> list[psutil.Process]:
    leader = psutil.Process(server.proc.pid)
    return [leader, *leader.children(recursive=True)]


def reset_peaks(procs: list[psutil.Process]) -> dict[int, int]:
    """Each process's RSS now, its peak (VmHWM) reset to it; skips where Linux cannot."""
    try:
        for p in procs:
            Path(f"/proc/{p.pid}/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak RSS of the server: {exc}")
    return {p.pid: p.memory_info().rss for p in procs}


def peak_growth(procs: list[psutil.Process], before: dict[int, int]) -> int:
    growth = 0
    for p in procs:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                growth = max(growth, int(line.split()[1]) * 1024 - before[p.pid])
    return growth


def chunks(prefix: bytes) -> Iterator[bytes | memoryview]:
    """300 MB after `prefix`, in 1 MiB pieces of one buffer (nothing new is allocated)."""
    yield prefix
    view = memoryview(BIG)
    for i in range(0, len(BIG), BLOCK):
        yield view[i:i + BLOCK]


# ---------------------------------------------------------------------------------------------
# (a) 300 MB, sent before the answer is read


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("name", list(TARGETS))
def test_300_mb_sent_before_reading_gets_the_413(stack: Stack, name: str, chunked: bool) -> None:
    server = stack.servers[name]
    target = server.target
    procs = group(server)
    before = reset_peaks(procs)
    data = chunks(target.prefix) if chunked else BIG
    request = urllib.request.Request(server.url + "/predict", data=data, method="POST",
                                     headers={"Content-Type": target.content_type})
    started = time.monotonic()
    # A reset (the bug) is a URLError from urlopen, not an HTTPError, and fails the test here.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=120).close()
    took = time.monotonic() - started
    with info.value as answer:
        assert answer.code == 413, (answer.code, answer.headers)
        assert answer.headers.get_content_type() == "application/json"
        error = json.loads(answer.read())["error"]
    assert target.needle in error, error
    assert took < DRAIN_S, f"{took:.1f} s: the drain was cut short by its bound"
    growth = peak_growth(procs, before)
    assert growth < PEAK_GROWTH_BOUND, f"peak RSS grew by {growth / 2**20:.0f} MiB"
    assert_serves(server, stack.image)


@pytest.mark.parametrize("name", ["model-api-gunicorn", "model-api-flask"])
def test_a_chunked_body_over_the_limit_is_not_served_cut_short(stack: Stack, name: str) -> None:
    """Werkzeug reads a chunked body up to MAX_CONTENT_LENGTH and stops there: valid JSON in
    the first LIMIT bytes was served, 200, until BodyLimitWSGI looked one byte further."""
    server = stack.servers[name]

    def body() -> Iterator[bytes]:
        yield b'{"features": [1]}'
        yield b" " * (2 * LIMIT)

    r = httpx.post(server.url + "/predict", content=body(), timeout=60,
                   headers={"content-type": "application/json"})
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert r.status_code == 413, r.text
    assert server.target.needle in r.json()["error"]


# ---------------------------------------------------------------------------------------------
# (c) a client that never stops sending


def send_forever(server: Running, chunked: bool) -> tuple[str, float]:
    """("cut off" | "stalled" | "never cut off", seconds since the request began)."""
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {10**13}"
    head = (f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\n"
            f"Content-Type: {server.target.content_type}\r\n{framing}\r\n\r\n").encode()
    block, prefix = bytes(BLOCK), server.target.prefix
    if chunked:
        block = b"%X\r\n%s\r\n" % (len(block), block)
        # (An empty chunk would end the body.)
        prefix = b"%X\r\n%s\r\n" % (len(prefix), prefix) if prefix else b""
    head += prefix
    started = time.monotonic()
    with socket.create_connection((HOST, server.port), timeout=STALL_S) as sock:
        try:
            sock.sendall(head)
            while time.monotonic() - started < FOREVER_S:
                sock.sendall(block)
        except TimeoutError:
            return "stalled", time.monotonic() - started
        except OSError:
            return "cut off", time.monotonic() - started
    return "never cut off", time.monotonic() - started


def test_a_client_that_never_stops_is_cut_off_after_the_drain_bound(stack: Stack) -> None:
    jobs = [(name, chunked) for name in TARGETS for chunked in (False, True)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        ends = list(pool.map(lambda job: send_forever(stack.servers[job[0]], job[1]), jobs))
    for (name, chunked), (how, took) in zip(jobs, ends, strict=True):
        # Read for the whole bound (the drain starts after the request began), and not for
        # much longer: never three times the bound.
        assert how == "cut off" and DRAIN_S <= took < 3 * DRAIN_S, (name, chunked, how, took)
    for server in stack.servers.values():
        assert_serves(server, stack.image)
