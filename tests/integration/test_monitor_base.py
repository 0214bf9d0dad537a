"""The samplers on their shared thread loop (infbench/measure/base.py): the load generator's
and Redis's, on real processes (test_sampler.py covers the process sampler)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from infbench.measure import loadgen
from infbench.measure import redis as redis_mon
from infbench.paths import HOST
from infbench.results import samples
from tests.fixtures.helpers import free_port, redis_argv, spawn, stop_group, wait_redis


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_loadgen_sampler_ends_with_its_group_after_one_last_sample(tmp_path: Path) -> None:
    alive = threading.Event()
    alive.set()
    path = tmp_path / "step1-b1_loadgen.csv"
    s = loadgen.LoadgenSampler(lambda: [os.getpid()], path, alive.is_set, interval=0.05).start()
    _wait_for("three samples", lambda: s.samples >= 3)
    alive.clear()  # the Locust group is gone: the thread ends by itself, no stop() needed
    s._thread.join(timeout=5.0)
    assert not s._thread.is_alive()
    rows = samples.loadgen_rows(path)[os.getpid()]
    assert len(rows) == s.samples  # every sample is on disk (flushed), the last one too
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert rows[-1][1] >= rows[0][1] > 0  # CPU seconds only grow
    s.stop()  # after the end: a no-op


def test_loadgen_sampler_into_a_missing_folder_ends_quietly(tmp_path: Path) -> None:
    failures: list[threading.ExceptHookArgs] = []
    before = threading.excepthook
    threading.excepthook = failures.append
    try:
        s = loadgen.LoadgenSampler(lambda: [os.getpid()], tmp_path / "no" / "x.csv",
                                   lambda: True, interval=0.05).start()
        s._thread.join(timeout=5.0)
    finally:
        threading.excepthook = before
    assert not s._thread.is_alive() and s.samples == 0 and not failures


def test_redis_sampler_samples_survives_an_outage_and_stops(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn(redis_argv(port), {**os.environ}, tmp_path / "redis.log")
    try:
        wait_redis(proc, port, tmp_path / "redis.log")
        client = redis.Redis(host=HOST, port=port, socket_timeout=5)
        client.rpush("p:queue", b"a", b"b", b"c")
        client.close()
        notes: list[tuple[str, str]] = []
        out = tmp_path / "redis_stats.csv"
        s = redis_mon.RedisSampler(port, out, ["p:queue"],
                                   lambda k, d: notes.append((k, d)), interval=0.05).start()
        _wait_for("three samples", lambda: s.samples >= 3)
        stop_group(proc)  # Redis goes away: the sampler keeps trying, writing nothing
        time.sleep(0.1)  # a sample already under way when Redis went is counted first
        taken = s.samples
        time.sleep(0.3)
        assert s._thread.is_alive() and s.samples == taken
        s.stop()
        assert not s._thread.is_alive()
        rows = redis_mon.read_samples(out)
        assert len(rows) == taken
        assert {r["queue_length"] for r in rows} == {3.0} and {r["keys"] for r in rows} == {1.0}
        assert notes == []  # no snapshot ran
    finally:
        stop_group(proc)
