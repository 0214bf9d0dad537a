"""A model worker of the queue study: pops batches of jobs from Redis, predicts, pushes results.

Run: python -m servers.queue.worker --port 9100   (the port of its health server on 127.0.0.1)
Settings: INFBENCH_REDIS_URL, INFBENCH_MODEL_PATH, INFBENCH_QUEUE_BATCH and the rest in
servers.queue.common, which also describes the Redis keys and the job and result encodings.

The loop: `BLMPOP 1 1 P:queue LEFT COUNT batch` takes up to `batch` jobs atomically (what is
there, without waiting to fill the batch: the batch grows with the backlog). Each job's image
is decoded on its own, so a bad image fails only its job (400); the good ones go through the
model in one call; each result is pushed to its job's list by a Lua script that delivers only
if the API still waits (see DELIVER_LUA). A job whose deadline has passed when it is popped is
dropped unpredicted: its API has already answered 504, and computing it would only slow the
jobs behind it.

Each result carries time.time() stamps: t_enqueued (from the API), t_dequeued, t_model_start,
t_model_done, with batch_size (jobs popped together), model_batch (images in the model call)
and worker_pid.

GET /health on --port: 200 {"status": "ok", "pid", "batch", "jobs_done", "device", ...} once the
model is loaded and Redis answers, 503 before that or while Redis is away. SIGTERM or SIGINT:
the batch in hand is finished and delivered, then exit 0. Redis away: a log line per attempt,
with a backoff from 0.5 s to 5 s, and the worker keeps going.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, cast

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from servers.queue.common import (
    DELIVER_LUA,
    HEALTH_SOCKET_TIMEOUT_S,
    SOCKET_SLACK_S,
    Job,
    QueueSettings,
    decode_job,
    encode_result,
    settings_or_exit,
)
from servers.shared.cli import Parser
from servers.shared.errors import reason
from servers.shared.model import BadImage, decode_image, load_model, predict
from servers.shared.runtimes import ONNX_SUFFIX, TORCH_SUFFIX

PROGRAM = "servers.queue.worker"
# BLMPOP's wait: how long a SIGTERM may go unnoticed while the queue is empty.
POP_TIMEOUT_S = 1.0
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 5.0


def log(message: str) -> None:
    print(f"queue_worker[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


@dataclass
class Stats:
    """What /health reports; written by the main loop, read by the health thread."""

    batch: int
    device: str = "unknown"
    model: str = ""
    loaded: bool = False
    jobs_done: int = 0
    jobs_failed: int = 0
    jobs_expired: int = 0
    undelivered: int = 0  # finished after the API gave up (its liveness key was gone)
    batches: int = 0
    started: float = field(default_factory=time.time)


class Worker:
    def __init__(self, settings: QueueSettings, stats: Stats) -> None:
        self.settings = settings
        self.keys = settings.keys
        self.stats = stats
        self.stopping = threading.Event()
        self.signal_name = ""
        # No retries inside redis-py: our loop owns retrying, with its own backoff and logging.
        self.redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=POP_TIMEOUT_S + SOCKET_SLACK_S,
            socket_connect_timeout=HEALTH_SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        self.deliver = self.redis.register_script(DELIVER_LUA)
        self.model: Any = None
        self.input_size = 0

    # -- model --------------------------------------------------------------------------------

    def load(self) -> None:
        """Load and warm the model once. A Keras model: TensorFlow's GPU memory growth first,
        so replicas can share one. An .onnx or .pt model runs where INFBENCH_DEVICE says
        (ONNX Runtime or torch, no TensorFlow imported)."""
        started = time.perf_counter()
        s = self.settings
        if Path(s.model_path).suffix in (ONNX_SUFFIX, TORCH_SUFFIX):
            self.stats.device = "CPU" if s.device == "cpu" else "cuda:0"
        else:
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            for gpu in gpus:
                tf.config.experimental.set_memory_growth(gpu, True)
            self.stats.device = "GPU:0" if gpus else "CPU"
        self.model = load_model(s.model_path, s.input_size, s.device)
        self.input_size = self.model.input_size
        for n in sorted({1, s.batch}):
            predict(self.model, np.zeros((n, self.input_size, self.input_size, 3), np.float32),
                    s.call)
        self.stats.model = self.model.name
        self.stats.loaded = True
        log(f"{self.model.name} ({self.model.kind}, {self.input_size}x{self.input_size}) loaded "
            f"and warmed in {time.perf_counter() - started:.1f} s on {self.stats.device}; "
            f"queue={self.keys.queue} batch={s.batch} call={s.call}")

    # -- loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                popped = self.redis.blmpop(POP_TIMEOUT_S, 1, self.keys.queue, direction="LEFT",
                                           count=self.settings.batch)
                if popped is not None:
                    self.handle(cast("list[bytes]", popped[1]), time.time())
                if failures:
                    log(f"Redis at {self._where()} answers again; serving {self.keys.queue}")
                failures = 0
            except RedisError as exc:
                failures += 1
                delay = min(BACKOFF_FIRST_S * 2 ** (failures - 1), BACKOFF_MAX_S)
                log(f"Redis at {self._where()} unavailable ({type(exc).__name__}: {exc}); "
                    f"retry {failures} in {delay:.1f} s")
                self.stopping.wait(delay)
        s = self.stats
        log(f"{self.signal_name or 'stopping'}: no batch in hand, exiting; {s.jobs_done} "
            f"jobs ({s.jobs_failed} failed, {s.jobs_expired} expired, {s.undelivered} "
            f"undelivered) in {s.batches} batches")

    def _where(self) -> str:
        kw = self.redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    def handle(self, raws: list[bytes], t_dequeued: float) -> None:
        """One popped batch: decode each job, predict the good ones at once, deliver all."""
        jobs: list[Job] = []
        for raw in raws:
            try:
                jobs.append(decode_job(raw))
            except ValueError as exc:
                log(f"dropped a malformed job ({exc}); is another program using "
                    f"{self.keys.queue}?")
        live = [j for j in jobs if j.deadline > t_dequeued]
        self.stats.jobs_expired += len(jobs) - len(live)
        base = {"t_dequeued": t_dequeued, "batch_size": len(raws), "worker_pid": os.getpid()}
        results: dict[str, dict[str, Any]] = {}
        good: list[tuple[Job, Any]] = []
        for job in live:
            try:
                good.append((job, decode_image(job.image, 0, self.input_size)))
            except BadImage as exc:
                results[job.id] = {"status": 400, "error": f"not a usable image: {exc.reason}"}
        if good:
            t_model_start = time.time()
            try:
                top = predict(self.model, np.stack([a for _, a in good]), self.settings.call)
                outcome: list[dict[str, Any]] = [{"status": 200, "class": c, "score": p}
                                                 for c, p in top]
            except Exception as exc:  # a model fault fails this batch, not the worker
                log(f"model call failed on a batch of {len(good)}: {type(exc).__name__}: {exc}")
                failed = {"status": 500, "error": f"model failed: {type(exc).__name__}"}
                outcome = [failed] * len(good)
            t_model_done = time.time()
            for (job, _), res in zip(good, outcome, strict=True):
                results[job.id] = {**res, "t_model_start": t_model_start,
                                   "t_model_done": t_model_done, "model_batch": len(good)}
        if not live:
            self.stats.batches += 1
            return
        pipe = self.redis.pipeline(transaction=False)
        for job in live:
            result = {"id": job.id, "t_enqueued": job.t_enqueued, "t_model_start": None,
                      "t_model_done": None, "model_batch": 0, **base, **results[job.id]}
            self.deliver(keys=[self.keys.job(job.id), self.keys.result(job.id)],
                         args=[encode_result(result), self.settings.result_ttl], client=pipe)
        delivered = pipe.execute()
        self.stats.undelivered += sum(1 for d in delivered if not d)
        self.stats.batches += 1
        self.stats.jobs_done += len(live)
        self.stats.jobs_failed += sum(1 for j in live if results[j.id]["status"] != 200)

    # -- health -------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        s = self.stats
        body: dict[str, Any] = {
            "pid": os.getpid(), "batch": s.batch, "jobs_done": s.jobs_done,
            "jobs_failed": s.jobs_failed, "jobs_expired": s.jobs_expired,
            "undelivered": s.undelivered, "batches": s.batches,
            "device": s.device, "model": s.model, "queue": self.keys.queue}
        if not s.loaded:
            return 503, {"status": "loading", "error": "model not loaded yet", **body}
        try:
            self.health_redis.ping()
        except RedisError as exc:
            return 503, {"status": "error", "error": f"Redis unavailable: {exc}",
                         "redis": False, **body}
        return 200, {"status": "ok", "redis": True, **body}

    @property
    def health_redis(self) -> redis.Redis:
        # Its own short timeouts, so /health answers quickly whatever the main loop is doing.
        if not hasattr(self, "_health_redis"):
            self._health_redis = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=HEALTH_SOCKET_TIMEOUT_S,
                socket_connect_timeout=HEALTH_SOCKET_TIMEOUT_S, retry=Retry(NoBackoff(), 0))
        return self._health_redis


def health_server(worker: Worker, host: str, port: int) -> ThreadingHTTPServer:
    """GET /health on a stdlib server in a daemon thread; anything else is a JSON 404/405."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "infbench-queue-worker"

        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/health":
                self._send(*worker.health())
            else:
                self._send(404, {"error": f"no such path {self.path.split('?')[0]!r}"})

        def do_POST(self) -> None:
            self._send(405, {"error": "only GET /health is served here"})

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the harness polls /health; a line per poll would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health", daemon=True).start()
    return server


# ---------------------------------------------------------------------------------------------
# CLI


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number 1-65535, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog=f"python -m {PROGRAM}", program=PROGRAM,
                    description="A model worker of the queue study.")
    parser.add_argument("--port", required=True, type=_port, help="health server port")
    parser.add_argument("--host", default="127.0.0.1", help="health server address")
    args = parser.parse_args(argv)
    settings = settings_or_exit("worker", PROGRAM)
    worker = Worker(settings, Stats(batch=settings.batch))
    try:
        server = health_server(worker, args.host, args.port)
    except OSError as exc:
        print(f"{PROGRAM}: error: cannot serve /health on {args.host}:{args.port}: "
              f"{exc.strerror}", file=sys.stderr, flush=True)
        return 1

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # Only set a flag: printing here could re-enter a print the main thread is in.
        worker.signal_name = signal.Signals(signum).name
        worker.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker.load()
    except Exception as exc:
        print(f"{PROGRAM}: error: cannot load the model: {reason(exc)}",
              file=sys.stderr, flush=True)
        server.shutdown()
        return 1
    worker.run()
    server.shutdown()
    server.server_close()
    worker.redis.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
