"""INFBENCH_REDIS_MAX_CONNECTIONS: the Redis pool of the queue APIs and the async scoring API.

redis-py caps a pool at 100 connections unless told otherwise, and the async queue API holds
one for each request waiting on its BLPOP: 200 users were 503s from the pool. Here, with a real
redis-server, a pool of 2 and 5 requests that wait at once must give a 503 that names the pool,
and the default pool none.

How requests are made to wait: the queue APIs run without a model worker (each request blocks
in BLPOP until its job timeout, then answers 504); the scoring API's feature-store GET waits
behind a CLIENT PAUSE of Redis.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from infbench.paths import HOST, ROOT
from servers.queue import common as queue_common
from servers.scoring import common as scoring_common
from servers.shared.settings import (
    DEFAULT_REDIS_MAX_CONNECTIONS,
    REDIS_MAX_CONNECTIONS_VAR,
    SettingsError,
)
from tests.fixtures.helpers import (
    child_env,
    free_port,
    quiet_env,
    redis_argv,
    spawn,
    stop_group,
    tail,
    wait_healthy,
    wait_redis,
)

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60.0
CONCURRENT = 5
SMALL_POOL = 2
JOB_TIMEOUT_S = 3  # how long each queue request holds its connection (no worker answers)
PAUSE_MS = 2000  # how long the feature store keeps the scoring API's GETs waiting
POOL_WORDS = ("connection pool exhausted", f"{REDIS_MAX_CONNECTIONS_VAR}={SMALL_POOL}")


# ---------------------------------------------------------------------------------------------
# Settings (no server)


@pytest.mark.parametrize("raw", ["0", "-3", "many", "1.5"])
def test_bad_pool_size_is_a_one_line_settings_error(raw: str) -> None:
    queue_env = {"INFBENCH_REDIS_URL": "redis://127.0.0.1:1/0", REDIS_MAX_CONNECTIONS_VAR: raw}
    scoring_env = {"INFBENCH_FEATURES_URL": "redis://127.0.0.1:1/0",
                   "INFBENCH_MODEL_A_URL": "http://127.0.0.1:1",
                   "INFBENCH_MODEL_B_URL": "http://127.0.0.1:2", REDIS_MAX_CONNECTIONS_VAR: raw}
    loaders: list[Callable[[], object]] = [
        lambda: queue_common.load_settings("api", queue_env),
        lambda: scoring_common.load_scoring_settings(scoring_env)]
    for load in loaders:
        with pytest.raises(SettingsError) as info:
            load()
        message = str(info.value)
        assert message.startswith(f"{REDIS_MAX_CONNECTIONS_VAR}: "), message
        assert repr(raw) in message and "\n" not in message


def test_pool_size_default_and_value() -> None:
    env = {"INFBENCH_REDIS_URL": "redis://127.0.0.1:1/0"}
    assert queue_common.load_settings("api", env).redis_max_connections == (
        DEFAULT_REDIS_MAX_CONNECTIONS)
    env[REDIS_MAX_CONNECTIONS_VAR] = "7"
    assert queue_common.load_settings("api", env).redis_max_connections == 7


# ---------------------------------------------------------------------------------------------
# Real services


@dataclass
class Service:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str


@dataclass
class Stack:
    folder: Path
    redis_port: int
    started: list[Service] = field(default_factory=list)

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    def start(self, name: str, argv: list[str], env: dict[str, str], port: int) -> Service:
        log = self.folder / f"{name}.log"
        service = Service(name, spawn(argv, env, log), log, f"http://{HOST}:{port}")
        self.started.append(service)
        return service

    def healthy(self, service: Service) -> Service:
        wait_healthy(service.popen, f"{service.url}/health", service.log, START_TIMEOUT_S,
                     service.name, own_group=True)
        return service


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    st = Stack(tmp_path_factory.mktemp("redis-pool"), free_port())
    try:
        server = st.start("redis", redis_argv(st.redis_port), child_env(), st.redis_port)
        wait_redis(server.popen, st.redis_port, server.log)
        yield st
    finally:
        for service in reversed(st.started):
            stop_group(service.popen)


def uvicorn(module: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", f"servers.{module}:app", "--host", HOST,
            "--port", str(port), "--no-access-log"]


def gunicorn_gthread(module: str, port: int) -> list[str]:
    # Threads enough for every request at once, so that only the Redis pool can refuse one.
    return [sys.executable, "-m", "gunicorn", "-w", "1", "-k", "gthread", "--threads",
            str(CONCURRENT * 2), "-b", f"{HOST}:{port}", f"servers.{module}:app"]


def at_once(send: Callable[[httpx.Client], httpx.Response], url: str) -> list[httpx.Response]:
    """CONCURRENT requests sent together, each on its own connection."""
    def one(_: int) -> httpx.Response:
        with httpx.Client(base_url=url, timeout=30.0) as client:
            return send(client)
    with ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def assert_pool_503s(responses: list[httpx.Response], log: Path) -> None:
    refused = [r for r in responses if r.status_code == 503]
    assert refused, f"no 503 from a pool of {SMALL_POOL}: {statuses(responses)}\n{tail(log)}"
    for r in refused:
        error = r.json()["error"]
        assert all(word in error for word in POOL_WORDS), error
        assert "\n" not in error


def queue_predict(client: httpx.Client) -> httpx.Response:
    return client.post("/predict", files=[("images", ("x.jpg", b"no worker reads me",
                                                      "image/jpeg"))])


QUEUE_APIS = {"fastapi": ("queue.api_fastapi", uvicorn),
              "flask-gthread": ("queue.api_flask", gunicorn_gthread)}


@pytest.mark.parametrize("api", QUEUE_APIS)
def test_queue_api_pool(stack: Stack, api: str) -> None:
    """Pool of 2: the requests past 2 are 503s naming it (the 2 that waited time out, 504).
    Default pool: every request waits its job timeout and answers 504, none is refused."""
    module, argv = QUEUE_APIS[api]
    services = {}
    for pool in (str(SMALL_POOL), ""):  # "": the default
        port = free_port()
        env = quiet_env(INFBENCH_REDIS_URL=stack.redis_url, INFBENCH_QUEUE_KEY=f"pool-{api}",
                        INFBENCH_JOB_TIMEOUT=str(JOB_TIMEOUT_S),
                        **({REDIS_MAX_CONNECTIONS_VAR: pool} if pool else {}))
        services[pool] = stack.start(f"{api}-pool{pool or 'default'}", argv(module, port), env,
                                     port)
    for service in services.values():
        stack.healthy(service)

    small = services[str(SMALL_POOL)]
    responses = at_once(queue_predict, small.url)
    assert_pool_503s(responses, small.log)
    assert set(statuses(responses)) <= {503, 504}, [r.text for r in responses]
    assert statuses(responses).count(504) <= SMALL_POOL

    big = services[""]
    responses = at_once(queue_predict, big.url)
    assert statuses(responses) == [504] * CONCURRENT, [r.text for r in responses]


def test_scoring_async_pool(stack: Stack) -> None:
    """The async scoring API's feature-store pool: 2 → 503s naming it while Redis is paused;
    the default → every request waits out the pause and scores."""
    seeded = subprocess.run(
        [sys.executable, "-m", "servers.scoring.seed_features", "--redis-url", stack.redis_url,
         "--entities", "10", "--dim", "8", "--seed", "1"],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=60)
    assert seeded.returncode == 0, seeded.stderr
    models = []
    for name in ("model_a", "model_b"):
        port = free_port()
        env = quiet_env(INFBENCH_MODEL_API_KIND="sleep", INFBENCH_MODEL_NAME=name,
                        INFBENCH_MODEL_SLEEP_MS="1-2")
        models.append(stack.start(name, uvicorn("scoring.model_api_fastapi", port), env, port))
    scorers = {}
    for pool in (str(SMALL_POOL), ""):
        port = free_port()
        env = quiet_env(INFBENCH_FEATURES_URL=stack.redis_url, INFBENCH_MODEL_A_URL=models[0].url,
                        INFBENCH_MODEL_B_URL=models[1].url,
                        **({REDIS_MAX_CONNECTIONS_VAR: pool} if pool else {}))
        scorers[pool] = stack.start(f"scoring-pool{pool or 'default'}",
                                    uvicorn("scoring.scoring_fastapi", port), env, port)
    for service in [*models, *scorers.values()]:
        stack.healthy(service)

    def score(client: httpx.Client) -> httpx.Response:
        return client.post("/score", json={"entity_id": 3})

    store = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
    try:
        small = scorers[str(SMALL_POOL)]
        store.client_pause(PAUSE_MS, all=True)
        responses = at_once(score, small.url)
        assert_pool_503s(responses, small.log)
        assert set(statuses(responses)) <= {200, 503}, [r.text for r in responses]

        big = scorers[""]
        store.client_pause(PAUSE_MS, all=True)
        responses = at_once(score, big.url)
        assert statuses(responses) == [200] * CONCURRENT, [r.text for r in responses]
    finally:
        store.client_unpause()
        store.close()
