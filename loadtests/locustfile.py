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
                            INFBENCH_STABLE_WINDOW_S seconds (the step's seconds are the most);
                            on a distributed step's master, judged on the rows its workers send
  INFBENCH_STABLE_FORWARD   1: a distributed step's worker sends its finished requests to the
                            master once a second, for the master's stability rule
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

The client (both loads, and the users of scoring_users.py and tfserving_users.py): Connection,
below, on geventhttpclient's connection pool and response parser - not requests (Locust's
HttpUser), whose per-request cost in the generator capped a closed loop at ~750 requests/s per
core and added milliseconds to every latency. A request's bytes (request line, headers, body)
are built once per request shape and sent with one sendall; the headers are what the
requests-based users sent (requests' defaults: Accept-Encoding, Accept, Connection), only the
User-Agent names this client. Each closed-loop user has one keep-alive connection, as each
HttpUser had one session; nothing is retried behind the user's back (a connection found closed
when it is taken from the pool is replaced before sending, as urllib3 does); no proxy is
consulted (loopback traffic never goes through one: infbench/launch/loopback.py).
"""

from __future__ import annotations

import base64
import csv
import errno
import io
import json
import os
import random
import time
import uuid
import zlib
from collections.abc import Container, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import gevent
import gevent.lock
import gevent.pool
import gevent.threadpool
import geventhttpclient
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPConnectionClosed, HTTPSocketPoolResponse
from locust import User, between, constant, events, task
from locust.env import Environment
from locust.exception import CatchResponseError, StopUser
from locust.runners import MasterRunner, WorkerRunner
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
# A Locust worker of a distributed step (infbench/measure/distributed.py): where its own request
# log goes, and where its share of the open-loop schedule starts (seconds added to every offset).
REQUESTS_LOG = os.environ.get("INFBENCH_REQUEST_LOG", "")
ARRIVAL_OFFSET_S = float(os.environ.get("INFBENCH_ARRIVAL_OFFSET_S", "0") or 0)
# An until_stable distributed step: each worker sends the master (t_end, latency_ms, ok) of
# what finished, every FORWARD_S; the master judges only windows that ended FORWARD_LAG_S ago,
# so that a window's last rows have arrived before it is counted.
STABLE_FORWARD = os.environ.get("INFBENCH_STABLE_FORWARD", "0") == "1"
FORWARD_S = 1.0
FORWARD_LAG_S = 2.5
ROWS_MESSAGE = "infbench_rows"

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


# ---------------------------------------------------------------------------------------------
# The client: one pool of keep-alive connections to the host, requests prepared as bytes

try:
    import brotli  # requests advertises br only when it can decode it; so do we
except ImportError:
    brotli = None

# What every request carries besides its own headers: requests' defaults, which the
# requests-based users sent, so that a server sees the same request (and compresses, or not,
# as before); only the User-Agent says which client this is.
CLIENT_HEADERS = {
    "User-Agent": f"infbench-locust (geventhttpclient {geventhttpclient.__version__})",
    "Accept-Encoding": "gzip, deflate, br" if brotli is not None else "gzip, deflate",
    "Accept": "*/*",
    "Connection": "keep-alive",
}
# Methods whose requests carry a Content-Length even with an empty body (as requests does).
_BODY_METHODS = ("POST", "PUT", "PATCH")
# Responses are read in blocks of this size: a large answer in few recv calls.
_BLOCK = 64 * 1024


def prepare(method: str, path: str, host: str, body: bytes = b"",
            headers: Mapping[str, str] | None = None) -> bytes:
    """One request as the bytes that go on the wire: request line, Host, the client's headers,
    `headers`, Content-Length, the body. Built once per request shape where the body is fixed."""
    method = method.upper()
    fields = {"Host": host, **CLIENT_HEADERS, **(headers or {})}
    if body or method in _BODY_METHODS:
        fields["Content-Length"] = str(len(body))
    for k, v in fields.items():
        if not k or any(c in k for c in ":\r\n \t") or "\r" in v or "\n" in v:
            raise ValueError(f"locustfile: header {k!r}: {v!r} cannot be sent as it is")
    if not path.startswith("/") or any(c in path for c in " \r\n"):
        raise ValueError(f"locustfile: request path {path!r} cannot be sent as it is")
    head = "".join([f"{method} {path} HTTP/1.1\r\n",
                    *(f"{k}: {v}\r\n" for k, v in fields.items()), "\r\n"])
    return head.encode("latin-1") + body


def host_header(base_url: str) -> str:
    """The Host header for `base_url` as requests writes it (the port unless it is the
    scheme's default)."""
    url = urlsplit(base_url)
    default = {"http": 80, "https": 443}.get(url.scheme)
    name = url.hostname or ""
    if ":" in name:
        name = f"[{name}]"
    return name if url.port in (None, default) else f"{name}:{url.port}"


class Connection:
    """Requests to one host over geventhttpclient's pool of keep-alive connections (`size` of
    them: 1 for a closed-loop user, as an HttpUser had one session; the open loop's cap for it).

    A request is prepared bytes (prepare()), sent with one sendall and answered through
    geventhttpclient's response parser; connect and each read or write time out after
    `timeout` seconds (requests' timeout=, the same meaning). Nothing is retried here: a
    pooled connection the server has closed is found before sending (the pool checks it, as
    urllib3 does) and replaced; one that breaks after is the caller's to count."""

    def __init__(self, base_url: str, timeout: float, size: int = 1) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SystemExit(f"locustfile: --host {base_url!r}: expected http://host:port")
        port = url.port or (443 if url.scheme == "https" else 80)
        pool = SSLConnectionPool if url.scheme == "https" else ConnectionPool
        self.pool = pool(url.hostname, port, url.hostname, port, size=size,
                         connection_timeout=timeout, network_timeout=timeout)
        self.host = host_header(base_url)

    def send(self, method: str, request: bytes) -> tuple[int, bytes, str]:
        """(status, body as received, its Content-Encoding) for one prepared request.
        Raises what the socket or the parser raised when no answer came."""
        pool = self.pool
        sock = pool.get_socket()
        try:
            sock.sendall(request)
        except OSError as e:
            if e.errno not in (errno.ECONNRESET, errno.EPIPE):
                pool.release_socket(sock)
                raise
            # The connection broke while sending: the server may have answered early and closed
            # (a 413 for a body over its limit). Read that answer; the parser raises if none.
        except BaseException:
            pool.release_socket(sock)
            raise
        resp = HTTPSocketPoolResponse(sock, pool, block_size=_BLOCK, method=method)
        try:
            data = resp.read()
        finally:
            resp.release()  # back to the pool, or closed if the answer said so
        return resp.status_code, data, str(resp.get("content-encoding") or "")

    def close(self) -> None:
        self.pool.close()


# What a body that is not what its Content-Encoding says raises on decoding.
_UNDECODABLE: tuple[type[Exception], ...] = (zlib.error, ValueError) + (
    (brotli.error,) if brotli is not None else ())


def decoded(data: bytes, encoding: str) -> bytes:
    """A response body without its Content-Encoding (requests decoded them; only the failure
    text and the feedback id need it here). Undecodable: as received."""
    enc = encoding.strip().lower()
    try:
        if enc in ("gzip", "x-gzip"):
            return zlib.decompress(data, 16 + zlib.MAX_WBITS)
        if enc == "deflate":
            try:
                return zlib.decompress(data)
            except zlib.error:
                return zlib.decompress(data, -zlib.MAX_WBITS)
        if enc == "br" and brotli is not None:
            return bytes(brotli.decompress(data))
    except _UNDECODABLE:
        return data  # a body that is not what its Content-Encoding says: shown as received
    return data


class LoadUser(User):
    """A closed-loop user on its own keep-alive connection: request() sends a prepared request,
    reports it to Locust (stats, failures, this file's request log) and keeps the counts."""

    abstract = True

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.conn = Connection(self.host or environment.host or "", TIMEOUT)

    def on_stop(self) -> None:
        self.conn.close()

    def request(self, method: str, request: bytes, name: str, expect: Container[int],
                counted: bool = True) -> tuple[int, bytes]:
        """Send `request` (prepare()'s bytes) and fire Locust's request event under `name`:
        a failure when the status is not in `expect`, or when no answer came (refused, reset,
        timed out, unparsable: status 0, as requests' users reported it), with the message
        'HTTP <status>: <the answer's first 200 characters, or the error>'. (status, decoded
        body) back, (0, b"") without an answer. `counted`: in the started / finished / failed
        counts (the step's requests; a user's setup GET is not)."""
        if counted:
            _counts["started"] += 1
        start_time = time.time()
        t0 = time.perf_counter()
        status, data, length, error = 0, b"", 0, ""
        try:
            status, raw, encoding = self.conn.send(method, request)
            length = len(raw)
            data = decoded(raw, encoding) if encoding else raw
        except gevent.GreenletExit:
            raise  # killed at the drain timeout: not finished, so counted as cut off
        except Exception as e:  # no answer: a failed request, never a crashed user
            error = f"{type(e).__name__}: {e}"
        elapsed_ms = (time.perf_counter() - t0) * 1000.0
        exc: Exception | None = None
        if status not in expect:
            exc = CatchResponseError(
                f"HTTP {status}: {error or data[:800].decode(errors='replace')[:200]}")
        if counted:
            _counts["finished"] += 1
            if exc is not None:
                _counts["failed"] += 1
        self.environment.events.request.fire(
            request_type=method, name=name, response_time=elapsed_ms, response_length=length,
            exception=exc, context={}, response=None, start_time=start_time)
        return status, data


# What a request without a status of its own to expect counts as answered: no error status
# (as a plain HttpUser request failed on 4xx and 5xx only).
NOT_AN_ERROR = range(100, 400)


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
    # A master sees its workers' rows up to FORWARD_S late: it judges windows that ended
    # FORWARD_LAG_S ago (the same windows, judged a moment later).
    lag = FORWARD_LAG_S if isinstance(env.runner, MasterRunner) else 0.0
    start = time.time()
    gevent.sleep(lag)
    while True:
        gevent.sleep(STABLE_WINDOW_S)
        now = time.time()
        rows = [stability.RequestRow(t, ms, ok) for t, ms, ok, _, _ in _log if t >= start]
        wins = stability.windows_from_requests(rows, start, now - lag, STABLE_WINDOW_S)
        if wins:
            w = wins[-1]
            _counts["windows"].append({"t": w.t1, "rps": round(w.rps, 3), "p50_ms": w.p50_ms})
        if stability.judge_windows(wins, STABLE_WINDOWS, STABLE_TOLERANCE)["stable"]:
            _counts["stable_at"] = now
            _write_counts()
            if env.runner is not None:
                env.runner.quit()
            return


def _forward() -> None:
    """A worker's finished requests to its master, once a second, for the master's
    stability rule (only t_end, latency and ok: the full log is merged after the step)."""
    runner = _env[0].runner if _env else None
    if runner is None:
        return
    sent = 0
    while True:
        gevent.sleep(FORWARD_S)
        rows = _log[sent:]
        sent += len(rows)
        if rows:
            runner.send_message(ROWS_MESSAGE, [[t, ms, ok] for t, ms, ok, _, _ in rows])


def _on_rows(msg: Any, **_: Any) -> None:
    """On the master: a worker's rows, into the log the stability rule reads (the master
    writes no request log of its own)."""
    _log.extend((float(t), float(ms), bool(ok), None, "") for t, ms, ok in msg.data)


@events.test_start.add_listener
def _on_start(**_: Any) -> None:
    _counts["test_start"] = time.time()
    gevent.spawn(_writer)
    if UNTIL_STABLE:
        gevent.spawn(_stability)
    if STABLE_FORWARD and _env and isinstance(_env[0].runner, WorkerRunner):
        gevent.spawn(_forward)


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
    if UNTIL_STABLE and isinstance(environment.runner, MasterRunner):
        environment.runner.register_message(ROWS_MESSAGE, _on_rows)


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
    runner = _env[0].runner if _env else None
    if isinstance(runner, WorkerRunner):
        # One of a distributed step's workers: its own request log, which the harness merges;
        # the stats CSVs are the master's (the master's options reach the workers too).
        if REQUESTS_LOG:
            _replace(REQUESTS_LOG, _write_requests)
        return
    prefix = getattr(_env[0].parsed_options, "csv_prefix", None) if _env else None
    if prefix:
        final = StatsCSV(_env[0], PERCENTILES_TO_REPORT)
        _replace(f"{prefix}_stats.csv", final.requests_csv)
        _replace(f"{prefix}_failures.csv", final.failures_csv)
        if not isinstance(runner, MasterRunner):  # a master sends nothing: no log of its own
            _replace(REQUESTS_LOG or f"{prefix}_requests.csv", _write_requests)


try:  # a header or path that cannot be sent: one line, before any user starts
    prepare(REQUEST.method, PATH, "check", BODY, HEADERS)
except ValueError as e:
    raise SystemExit(str(e)) from None


class ImageClient(LoadUser):
    abstract = RATE > 0  # an open-loop step runs OpenLoopClient alone
    wait_time = between(WAIT_MIN, WAIT_MAX)
    last_id: str | None = None

    def on_start(self) -> None:
        self.predict_request = prepare(REQUEST.method, PATH, self.conn.host, BODY, HEADERS)
        if ON_START:
            self.request("GET", prepare("GET", ON_START, self.conn.host), f"GET {ON_START}",
                         NOT_AN_ERROR, counted=False)

    @task(FEEDBACK_WEIGHT)
    def feedback(self) -> None:
        """The user says whether the last answer was right (the queue study's /feedback)."""
        if self.last_id is None or _counts["test_stopping"] is not None:
            return
        # As requests encodes json=: json.dumps with its default separators, no NaN.
        body = json.dumps({"id": self.last_id, "correct": random.random() < 0.5},
                          allow_nan=False).encode()
        self.request("POST", prepare("POST", "/feedback", self.conn.host, body,
                                     {"Content-Type": "application/json"}),
                     "/feedback", (200,))

    @task(PREDICT_WEIGHT)
    def predict(self) -> None:
        if _counts["test_stopping"] is not None:
            # Locust kills a user that was waiting when the step ended, but the kill lands at
            # its next switch: it could still wake up and start a request that dies a
            # millisecond later. No request starts after the step has ended.
            raise StopUser()
        # A status the variant declared good counts as a success, even if not 2xx.
        status, data = self.request(REQUEST.method, self.predict_request,
                                    f"{PATH} [batch {BATCH}]", REQUEST.ok_status)
        if FEEDBACK_WEIGHT and status in REQUEST.ok_status:
            try:
                answer = json.loads(data)
            except ValueError:
                return
            if isinstance(answer, dict):
                self.last_id = answer.get("id")


class OpenLoopClient(User):
    """The open-loop load: one instance; its one task is the scheduler (see the docstring at
    the top). Only predict requests: the task mix and on_start belong to users."""

    abstract = RATE <= 0
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        self.conn = Connection(self.host or environment.host or "", TIMEOUT, MAX_IN_FLIGHT)
        self.predict_request = prepare(REQUEST.method, PATH, self.conn.host, BODY, HEADERS)
        self.slots = gevent.lock.BoundedSemaphore(MAX_IN_FLIGHT)
        self.pool = gevent.pool.Group()
        self.in_flight = 0
        self.name = f"{PATH} [batch {BATCH}]"

    def on_stop(self) -> None:
        # Killed at the drain timeout: what is still in flight is cut off (never finished).
        self.pool.kill(block=False)
        self.conn.close()

    @task
    def schedule(self) -> None:
        ol = _counts["open_loop"]
        if ol["schedule_start"] is not None or _counts["test_stopping"] is not None:
            raise StopUser()  # one schedule per step
        start = time.perf_counter()
        ol["schedule_start"] = time.time()
        for offset in arrivals(RATE, ARRIVAL, ARRIVAL_SEED):
            due = start + ARRIVAL_OFFSET_S + offset
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
        now = time.perf_counter() - start - ARRIVAL_OFFSET_S
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
                status, data, encoding = self.conn.send(REQUEST.method, self.predict_request)
            except HTTPConnectionClosed:
                # A pooled keep-alive connection the server closed as this request went out
                # (Uvicorn closes idle ones after 5 s): sent again once, on a new connection,
                # and counted.
                ol["retried"] += 1
                status, data, encoding = self.conn.send(REQUEST.method, self.predict_request)
            length = len(data)
            if status not in REQUEST.ok_status:
                text = decoded(data, encoding) if encoding else data
                exc = CatchResponseError(f"HTTP {status}: "
                                         f"{text[:800].decode(errors='replace')[:200]}")
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
