"""The shared load: every user posts BATCH sample images per request to the server under test.

Run by the harness once per step, headless, with its settings in the environment:

  INFBENCH_IMAGES           folder of sample JPEGs (made by `make build`)
  INFBENCH_BATCH            images per request
  INFBENCH_REQUEST          the variant's request template, infbench.config.Request as JSON
                            (config.as_dict); unset: Request()'s defaults, POST /predict with
                            one multipart file part per image in the field `images`
  INFBENCH_IMAGE_SIZE       pixels per side for bodies that carry pixels (npy, "{pixels}")
  INFBENCH_WAIT_MIN/_MAX    seconds each user waits between requests
  INFBENCH_REQUEST_TIMEOUT  seconds before a request counts as failed
  INFBENCH_COUNTS           JSON file this load writes once a second and at the end
  INFBENCH_PREDICT_WEIGHT / _FEEDBACK_WEIGHT
                            the task mix: predict (the request) and POST /feedback on the
                            user's last prediction id (0: no feedback task)
  INFBENCH_ON_START         a path each user GETs once when it starts ("" : none)
  INFBENCH_UNTIL_STABLE     1: end the step early once throughput and p50 held within
                            INFBENCH_STABLE_TOLERANCE for INFBENCH_STABLE_WINDOWS windows of
                            INFBENCH_STABLE_WINDOW_S seconds (the step's seconds are the most)
  INFBENCH_RATE             requests/s above 0: an open-loop step (OpenLoopClient, below)
                            instead of users; INFBENCH_ARRIVAL constant | poisson,
                            INFBENCH_ARRIVAL_SEED, INFBENCH_MAX_IN_FLIGHT

Open loop: one Locust user whose scheduler greenlet walks the arrival schedule
(infbench/config/schedule.py) and spawns a greenlet per request at its intended time, whether or not
earlier requests finished. Each request fires Locust's request event itself with
response_time = done - intended (not done - sent), so time spent queued anywhere - in the
server, or here when the generator fell behind - is in the latency. Over INFBENCH_MAX_IN_FLIGHT
requests in flight, the next one waits for a slot (wrk2's behaviour with its connections): every
such wait is counted (`cap_hits`, `cap_wait_s`) and is in that request's latency; requests whose
time came while the cap held them and the step ended are counted as `not_sent`. The send lag
(sent - intended) is kept per request: a lag that grows is the generator, not the server.

Every finished request (both loads) is also logged, and written at the end to
`<csv prefix>_requests.csv` (t_end, latency_ms, ok, lag_ms, name): the raw samples the
stability windows are cut from.

The body is encoded once per process: the load generator should spend its CPU on
sending, not on re-encoding megabytes per request, since it shares the machine with the server.

Locust reports only requests that finished. Requests still in flight when a step's drain
timeout ends are killed with their user and would vanish from the figures, so this file counts
requests started and finished itself and writes both to INFBENCH_COUNTS: the difference is
what was cut off.

Locust's `--csv` files are rewritten once a second while the test runs, and not again at the
end: whatever finished in the last second (the drain included) would be missing from
`*_stats.csv`. When Locust quits, this file writes the final `*_stats.csv` and `*_failures.csv`
from the same totals Locust prints, through Locust's own CSV writer.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import os
import random
import time
import uuid
from pathlib import Path
from typing import Any

import gevent
import gevent.lock
import gevent.pool
import gevent.threadpool
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed
from locust import HttpUser, User, between, constant, events, task
from locust.env import Environment
from locust.exception import CatchResponseError, StopUser
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

from infbench.analysis import stability
from infbench.analysis.stability import percentile
from infbench.config import (
    B64_MARK,
    BATCH_MARK,
    DEFAULT_IMAGE_SIZE,
    IMAGES_MARK,
    NAME_MARK,
    PIXELS_MARK,
    Request,
)
from infbench.config.schedule import arrivals

IMAGES = Path(os.environ.get("INFBENCH_IMAGES", "build/images"))
BATCH = int(os.environ.get("INFBENCH_BATCH", "1"))
REQUEST = Request.from_dict(json.loads(os.environ.get("INFBENCH_REQUEST") or "{}"))
IMAGE_SIZE = int(os.environ.get("INFBENCH_IMAGE_SIZE", DEFAULT_IMAGE_SIZE))
PATH = REQUEST.path.replace(BATCH_MARK, str(BATCH))
WAIT_MIN = float(os.environ.get("INFBENCH_WAIT_MIN", "0"))
WAIT_MAX = float(os.environ.get("INFBENCH_WAIT_MAX", "1"))
TIMEOUT = float(os.environ.get("INFBENCH_REQUEST_TIMEOUT", "60"))
COUNTS = os.environ.get("INFBENCH_COUNTS", "")
PREDICT_WEIGHT = int(os.environ.get("INFBENCH_PREDICT_WEIGHT", "1") or 1)
FEEDBACK_WEIGHT = int(os.environ.get("INFBENCH_FEEDBACK_WEIGHT", "0") or 0)
ON_START = os.environ.get("INFBENCH_ON_START", "")
UNTIL_STABLE = os.environ.get("INFBENCH_UNTIL_STABLE", "0") == "1"
STABLE_WINDOW_S = float(os.environ.get("INFBENCH_STABLE_WINDOW_S", "10") or 10)
STABLE_WINDOWS = int(os.environ.get("INFBENCH_STABLE_WINDOWS", "3") or 3)
STABLE_TOLERANCE = float(os.environ.get("INFBENCH_STABLE_TOLERANCE", "0.1") or 0.1)
RATE = float(os.environ.get("INFBENCH_RATE", "0") or 0)
ARRIVAL = os.environ.get("INFBENCH_ARRIVAL", "poisson") or "poisson"
ARRIVAL_SEED = int(os.environ.get("INFBENCH_ARRIVAL_SEED", "0") or 0)
MAX_IN_FLIGHT = int(os.environ.get("INFBENCH_MAX_IN_FLIGHT", "512") or 512)

_counts: dict[str, Any] = {
    "batch": BATCH, "started": 0, "finished": 0, "failed": 0,
    "test_start": None, "test_stopping": None, "test_stop": None, "updated": None,
    "windows": [], "stable_at": None,
    # The stability rule this step was run with (the analysis judges it by the same).
    "stable_window_s": STABLE_WINDOW_S, "stable_windows": STABLE_WINDOWS,
    "stable_tolerance": STABLE_TOLERANCE,
}
if RATE > 0:
    _counts["open_loop"] = {
        "rate": RATE, "arrival": ARRIVAL, "seed": ARRIVAL_SEED, "max_in_flight": MAX_IN_FLIGHT,
        "schedule_start": None, "scheduled": 0, "sent": 0, "in_flight_max": 0,
        "cap_hits": 0, "cap_wait_s": 0.0, "not_sent": 0, "retried": 0, "lag_ms": None,
    }
# Every finished request: (t_end unix, latency ms, ok, send lag ms or None, name).
_log: list[tuple[float, float, bool, float | None, str]] = []


def encode_multipart(files: list[tuple[str, bytes]], field: str = "images") -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data in files:
        parts.append(
            (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
             f"filename=\"{name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _pixels(data: bytes) -> Any:
    """An image as uint8 RGB pixels, IMAGE_SIZE x IMAGE_SIZE (numpy and Pillow are imported
    only for the bodies that need them)."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _render(template: Any, marks: dict[str, Any]) -> Any:
    """A JSON template with its placeholders filled in: a string that is exactly a mark becomes
    the mark's value (a list, a number); a mark inside a longer string is replaced as text."""
    if isinstance(template, dict):
        return {k: _render(v, marks) for k, v in template.items()}
    if isinstance(template, list):
        return [_render(v, marks) for v in template]
    if isinstance(template, str):
        if template in marks:
            return marks[template]
        for mark, value in marks.items():
            if mark in template and isinstance(value, str | int):
                template = template.replace(mark, str(value))
    return template


def _json_body(files: list[tuple[str, bytes]]) -> bytes:
    wants_pixels = PIXELS_MARK in json.dumps(REQUEST.image)
    images = []
    for name, data in files:
        marks: dict[str, Any] = {B64_MARK: base64.b64encode(data).decode("ascii"),
                                 NAME_MARK: name}
        if wants_pixels:
            marks[PIXELS_MARK] = _pixels(data).tolist()
        images.append(_render(REQUEST.image, marks))
    doc = _render(REQUEST.json_template, {IMAGES_MARK: images, BATCH_MARK: BATCH})
    return json.dumps(doc).encode()


def _npy_body(files: list[tuple[str, bytes]]) -> bytes:
    import numpy as np

    out = io.BytesIO()
    np.save(out, np.stack([_pixels(data) for _, data in files]), allow_pickle=False)
    return out.getvalue()


def _load_body() -> tuple[bytes, str]:
    paths = sorted(IMAGES.glob("*.jpg"))
    if not paths:
        raise SystemExit(f"locustfile: no sample images in {IMAGES} (run `make build`)")
    files = [(paths[i % len(paths)].name, paths[i % len(paths)].read_bytes())
             for i in range(BATCH)]
    kind, given = REQUEST.body, REQUEST.content_type
    if kind == "multipart":
        body, content_type = encode_multipart(files, REQUEST.form_field)
        return body, given or content_type
    if kind == "json":
        return _json_body(files), given or "application/json"
    if kind == "binary":
        if BATCH != 1:
            raise SystemExit(f"locustfile: body 'binary' carries one image, not {BATCH}")
        return files[0][1], given or "image/jpeg"
    if kind == "npy":
        return _npy_body(files), given or "application/octet-stream"
    raise SystemExit(f"locustfile: unknown request body {kind!r}")


BODY, CONTENT_TYPE = _load_body()
HEADERS = {**REQUEST.headers, "Content-Type": CONTENT_TYPE}


def _save(text: str) -> None:
    tmp = COUNTS + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, COUNTS)


# Every write of the counters goes through one native thread, in order: a write() that blocks
# on a busy disk (dirty-page throttling) would otherwise stall the event loop, and with it the
# open-loop schedule (seen here: ~1 s send lags while the process was neither running nor
# runnable). One thread, first in first out: a newer snapshot is never overwritten by an older.
_io = gevent.threadpool.ThreadPool(1)


def _write_counts() -> None:
    """Snapshot the counters now (on the loop) and write them off it; the calling greenlet
    waits, the others run."""
    if not COUNTS:
        return
    _counts["updated"] = time.time()
    _io.apply(_save, (json.dumps(_counts),))


def _writer() -> None:
    while True:
        _write_counts()
        gevent.sleep(1.0)


def _stability() -> None:
    """Windows of throughput and median latency cut from this step's own request log, judged by
    the rule the analysis applies (infbench/analysis/stability.py); once the last STABLE_WINDOWS
    agree within the tolerance, quit as --run-time would (the drain follows as usual)."""
    if not _env:
        return
    env = _env[0]
    start = time.time()
    while True:
        gevent.sleep(STABLE_WINDOW_S)
        now = time.time()
        rows = [stability.RequestRow(t, ms, ok) for t, ms, ok, _, _ in _log if t >= start]
        wins = stability.windows_from_requests(rows, start, now, STABLE_WINDOW_S)
        if wins:
            w = wins[-1]
            _counts["windows"].append({"t": w.t1, "rps": round(w.rps, 3), "p50_ms": w.p50_ms})
        if stability.judge_windows(wins, STABLE_WINDOWS, STABLE_TOLERANCE)["stable"]:
            _counts["stable_at"] = now
            _write_counts()
            if env.runner is not None:
                env.runner.quit()
            return


@events.test_start.add_listener
def _on_start(**_: Any) -> None:
    _counts["test_start"] = time.time()
    gevent.spawn(_writer)
    if UNTIL_STABLE:
        gevent.spawn(_stability)


@events.test_stopping.add_listener
def _on_stopping(**_: Any) -> None:
    # Users stop sending new requests now; in-flight ones get the stop timeout to finish.
    _counts["test_stopping"] = time.time()
    _write_counts()


@events.test_stop.add_listener
def _on_stop(**_: Any) -> None:
    _counts["test_stop"] = time.time()
    _write_counts()


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    _write_counts()


_env: list[Environment] = []


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    _env.append(environment)


def _replace(path: str, write: Any) -> None:
    # A new file, not an overwrite: Locust's periodic writer still holds the old one open.
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        write(csv.writer(f))
    os.replace(tmp, path)


@events.request.add_listener
def _on_request(name: str, response_time: float, exception: Any = None,
                context: Any = None, **_: Any) -> None:
    lag = context.get("lag_ms") if isinstance(context, dict) else None
    _log.append((time.time(), float(response_time), exception is None, lag, name))


def _write_requests(writer: Any) -> None:
    writer.writerow(["t_end", "latency_ms", "ok", "lag_ms", "name"])
    for t, ms, ok, lag, name in _log:
        writer.writerow([f"{t:.4f}", f"{ms:.3f}", 1 if ok else 0,
                         "" if lag is None else f"{lag:.3f}", name])


def _lag_figures() -> dict[str, Any] | None:
    lags = [lag for _, _, _, lag, _ in _log if lag is not None]
    if not lags:
        return None
    return {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": max(lags),
            "requests": len(lags)}


@events.quit.add_listener
def _on_quit(**_: Any) -> None:
    if "open_loop" in _counts:
        _counts["open_loop"]["lag_ms"] = _lag_figures()
    _write_counts()
    prefix = getattr(_env[0].parsed_options, "csv_prefix", None) if _env else None
    if prefix:
        final = StatsCSV(_env[0], PERCENTILES_TO_REPORT)
        _replace(f"{prefix}_stats.csv", final.requests_csv)
        _replace(f"{prefix}_failures.csv", final.failures_csv)
        _replace(f"{prefix}_requests.csv", _write_requests)


class ImageClient(HttpUser):
    abstract = RATE > 0  # an open-loop step runs OpenLoopClient alone
    wait_time = between(WAIT_MIN, WAIT_MAX)
    last_id: str | None = None

    def on_start(self) -> None:
        if ON_START:
            self.client.get(ON_START, name=f"GET {ON_START}", timeout=TIMEOUT)

    @task(FEEDBACK_WEIGHT)
    def feedback(self) -> None:
        """The user says whether the last answer was right (the queue study's /feedback)."""
        if self.last_id is None or _counts["test_stopping"] is not None:
            return
        _counts["started"] += 1
        try:
            with self.client.post("/feedback", json={"id": self.last_id,
                                                     "correct": random.random() < 0.5},
                                  name="/feedback", timeout=TIMEOUT,
                                  catch_response=True) as resp:
                if resp.status_code != 200:
                    resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                    _counts["failed"] += 1
        except gevent.GreenletExit:
            raise
        except Exception:
            _counts["finished"] += 1
            raise
        _counts["finished"] += 1

    @task(PREDICT_WEIGHT)
    def predict(self) -> None:
        if _counts["test_stopping"] is not None:
            # Locust kills a user that was waiting when the step ended, but the kill lands at
            # its next switch: it could still wake up and start a request that dies a
            # millisecond later. No request starts after the step has ended.
            raise StopUser()
        _counts["started"] += 1
        try:
            with self.client.request(
                REQUEST.method, PATH, data=BODY, headers=HEADERS,
                name=f"{PATH} [batch {BATCH}]", timeout=TIMEOUT, catch_response=True,
            ) as resp:
                if resp.status_code not in REQUEST.ok_status:
                    resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                    _counts["failed"] += 1
                else:
                    resp.success()  # a status the variant declared good, even if not 2xx
                    if FEEDBACK_WEIGHT:
                        with contextlib.suppress(ValueError, AttributeError):
                            self.last_id = resp.json().get("id")
        except gevent.GreenletExit:
            raise  # killed at the drain timeout: not finished, so counted as cut off
        except Exception:
            _counts["finished"] += 1  # an error is a finished request, not a cut-off one
            raise
        _counts["finished"] += 1


class OpenLoopClient(User):
    """The open-loop load: one instance; its one task is the scheduler (see the docstring at
    the top). Only predict requests: the task mix and on_start belong to users."""

    abstract = RATE <= 0
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        host = self.host or environment.host or ""
        self.http = HTTPClient.from_url(host, concurrency=MAX_IN_FLIGHT,
                                        connection_timeout=TIMEOUT, network_timeout=TIMEOUT)
        self.slots = gevent.lock.BoundedSemaphore(MAX_IN_FLIGHT)
        self.pool = gevent.pool.Group()
        self.in_flight = 0
        self.name = f"{PATH} [batch {BATCH}]"

    def on_stop(self) -> None:
        # Killed at the drain timeout: what is still in flight is cut off (never finished).
        self.pool.kill(block=False)
        self.http.close()

    @task
    def schedule(self) -> None:
        ol = _counts["open_loop"]
        if ol["schedule_start"] is not None or _counts["test_stopping"] is not None:
            raise StopUser()  # one schedule per step
        start = time.perf_counter()
        ol["schedule_start"] = time.time()
        for offset in arrivals(RATE, ARRIVAL, ARRIVAL_SEED):
            due = start + offset
            while (left := due - time.perf_counter()) > 0:
                if _counts["test_stopping"] is not None:
                    break
                gevent.sleep(min(left, 0.1))
            if _counts["test_stopping"] is not None:
                break
            ol["scheduled"] += 1
            if self.slots.locked():
                # The cap is full: this request (and the schedule behind it) waits for a slot,
                # and the wait stays in its latency.
                ol["cap_hits"] += 1
                waited = time.perf_counter()
                self.slots.acquire()
                ol["cap_wait_s"] += time.perf_counter() - waited
                if _counts["test_stopping"] is not None:
                    self.slots.release()
                    ol["scheduled"] -= 1
                    ol["not_sent"] += self._due_by_now(start, offset)
                    break
            else:
                self.slots.acquire()
            self.pool.spawn(self._send, due)
        # Sending has stopped; in-flight requests get the drain timeout to finish.
        self.pool.join()
        raise StopUser()

    def _due_by_now(self, start: float, offset: float) -> int:
        """Requests whose intended time has come (this one included) but were never sent."""
        now = time.perf_counter() - start
        n = 0
        for later in arrivals(RATE, ARRIVAL, ARRIVAL_SEED):
            if later > now:
                break
            if later >= offset:
                n += 1
        return n

    def _send(self, due: float) -> None:
        ol = _counts["open_loop"]
        sent = time.perf_counter()
        ol["sent"] += 1
        self.in_flight += 1
        ol["in_flight_max"] = max(ol["in_flight_max"], self.in_flight)
        _counts["started"] += 1
        exc: Exception | None = None
        length = 0
        try:
            try:
                resp = self.http.request(REQUEST.method, PATH, body=BODY, headers=HEADERS)
            except HTTPConnectionClosed:
                # A pooled keep-alive connection the server had already closed (Uvicorn closes
                # idle ones after 5 s): sent again once, on a new connection, and counted.
                ol["retried"] += 1
                resp = self.http.request(REQUEST.method, PATH, body=BODY, headers=HEADERS)
            try:
                data = resp.read()
            finally:
                resp.release()
            length = len(data)
            if resp.status_code not in REQUEST.ok_status:
                exc = CatchResponseError(f"HTTP {resp.status_code}: "
                                   f"{data[:200].decode(errors='replace')}")
        except gevent.GreenletExit:
            raise  # killed at the drain timeout: not finished, so counted as cut off
        except Exception as e:
            exc = e
        finally:
            self.in_flight -= 1
            self.slots.release()
        done = time.perf_counter()
        _counts["finished"] += 1
        if exc is not None:
            _counts["failed"] += 1
        events.request.fire(request_type=REQUEST.method, name=self.name,
                            response_time=(done - due) * 1000.0, response_length=length,
                            exception=exc, context={"lag_ms": (sent - due) * 1000.0})
