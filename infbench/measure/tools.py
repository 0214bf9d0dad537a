"""Dedicated load tools as a second opinion on our closed loop: wrk and hey for HTTP, h2load for
gRPC, each replaying one prepared request (loadtests/request_dump.py) at N connections, closed
loop (one request in flight per connection), for a number of seconds.

  wrk     a Lua script generated into the run folder sets the method, headers and the body
          (read from the body file); its done() hook prints one JSON line: requests, duration,
          socket errors (connect, read, write, timeout), non-2xx/3xx (`status`: > 399), the
          latency percentiles (wrk's own, microseconds)
  hey     `-o csv`: one line per request (response time, status); socket errors are not in
          its CSV, so a request that never got an answer is not counted
  h2load  HTTP/2 with prior knowledge, `-m 1` (one stream in flight per connection, closed
          loop), the gRPC headers and the length-prefixed message as its `-d` body; its
          summary gives requests done/succeeded/failed/errored, and `--log-file` one line per
          request (start µs, HTTP status, duration µs), from which p50 and p99 are computed.
          h2load cannot read gRPC's trailers: an error answered as HTTP 200 + grpc-status
          counts as a success there, so the request is checked once before (`preflight`)

Every driver runs the tool in its own process group (launch/proc.py), records its CPU time
(rusage of the reaped child: user + system seconds) and returns a ToolResult; a missing tool is
a ToolError before anything starts; a tool that crashed, wrote nothing readable or had every
request fail is a ToolResult with `error` set (the caller records it as a fault).
"""

from __future__ import annotations

import contextlib
import csv
import http.client
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infbench.analysis.stability import percentile
from infbench.measure.load import LoadError
from infbench.paths import ROOT

TOOLS = ("wrk", "hey", "h2load")
HTTP_TOOLS = ("wrk", "hey")
PACKAGE = {"wrk": "wrk", "hey": "hey", "h2load": "nghttp2-client"}
WRK_MARK = "INFBENCH-WRK "
DUMPER = ROOT / "loadtests" / "request_dump.py"


class ToolError(LoadError):
    """A tool that cannot run here (not installed, a request it cannot send): one line (before
    the run starts, or the variant fails with it, as a load that cannot be sent)."""


@dataclass(frozen=True)
class Replay:
    """The request a tool replays (request.json of loadtests/request_dump.py) and where to."""

    protocol: str  # http | grpc
    method: str
    url: str  # http://127.0.0.1:port/path
    headers: dict[str, str]
    body: Path
    ok_status: tuple[int, ...]
    notes: tuple[str, ...] = ()

    @classmethod
    def from_dump(cls, folder: Path, http_base: str) -> Replay:
        spec = json.loads((folder / "request.json").read_text())
        base = f"http://{spec['target']}" if spec["protocol"] == "grpc" else \
            http_base.rstrip("/")
        return cls(protocol=spec["protocol"], method=spec["method"],
                   url=base + spec["path"], headers=dict(spec["headers"]),
                   body=folder / spec["body_file"], ok_status=tuple(spec["ok_status"]),
                   notes=tuple(spec.get("notes") or ()))


@dataclass
class ToolResult:
    tool: str
    connections: int
    seconds: float
    requests: int = 0  # finished, whatever their answer
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # socket errors, non-2xx, ...
    rps: float | None = None  # ok requests a second
    p50_ms: float | None = None
    p99_ms: float | None = None
    cpu_s: float | None = None  # the tool's own CPU (user + system)
    exit_code: int | None = None
    error: str | None = None  # a fault: crashed, unreadable output, no request answered
    argv: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def dump_request(locustfile: Path, env: dict[str, str], folder: Path) -> None:
    """request.json and request.body in `folder`, written by the Locust file itself
    (loadtests/request_dump.py) under a Locust step's environment `env`."""
    done = subprocess.run([sys.executable, str(DUMPER), str(locustfile), str(folder)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    if done.returncode != 0:
        tail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:]
        raise LoadError("the variant's request could not be written out for the tool: "
                        + (tail[0] if tail else f"exit code {done.returncode}"))


def require(tool: str) -> str:
    """The tool's path, or a one-line ToolError naming its Debian package."""
    if tool not in TOOLS:
        raise ToolError(f"unknown tool {tool!r} (one of {', '.join(TOOLS)})")
    found = shutil.which(tool)
    if not found:
        raise ToolError(f"{tool} is not installed (Debian's {PACKAGE[tool]}: sudo make system)")
    return found


def grpc_frame(message: bytes) -> bytes:
    """A gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length."""
    return b"\0" + struct.pack(">I", len(message)) + message


# -- wrk ----------------------------------------------------------------------------------------
def _lua_string(s: str) -> str:
    """A Lua string literal: letters, digits and a few marks as they are, every other byte as
    a three-digit decimal escape (so that a digit after it cannot join it)."""
    safe = b" /:;=,-_.+"
    return "\"" + "".join(chr(b) if (chr(b).isalnum() and b < 128) or b in safe
                          else f"\\{b:03d}" for b in s.encode()) + "\""


def wrk_script(replay: Replay) -> str:
    """The Lua script for one replay: request from the body file, a JSON summary at done()."""
    heads = "\n".join(f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}"
                      for k, v in replay.headers.items())
    return f"""-- written by infbench (infbench/measure/tools.py): one request, replayed
local f = assert(io.open({_lua_string(str(replay.body))}, "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = {_lua_string(replay.method)}
{heads}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{WRK_MARK}{{"requests": %d, "duration_us": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "status": %d, "timeout": %d, "p50_us": %.1f, "p99_us": %.1f}}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def parse_wrk(stdout: str, result: ToolResult) -> ToolResult:
    """wrk's done() line into the result (error set when there is none)."""
    line = next((x for x in stdout.splitlines() if x.startswith(WRK_MARK)), None)
    if line is None:
        result.error = "wrk printed no summary (its done() hook did not run)"
        return result
    d = json.loads(line[len(WRK_MARK):])
    result.requests = int(d["requests"])
    result.errors = {k: int(d[k]) for k in ("connect", "read", "write", "timeout", "status")
                     if int(d[k])}
    # `status` counts answers over 399 (they are in `requests` too); socket errors are not.
    result.ok = max(0, result.requests - int(d["status"]))
    seconds = int(d["duration_us"]) / 1e6
    result.rps = round(result.ok / seconds, 2) if seconds > 0 else None
    if result.requests:
        result.p50_ms = round(float(d["p50_us"]) / 1000, 3)
        result.p99_ms = round(float(d["p99_us"]) / 1000, 3)
    return result


# -- hey ----------------------------------------------------------------------------------------
def parse_hey_csv(text: str, result: ToolResult, ok_status: tuple[int, ...]) -> ToolResult:
    """hey's `-o csv` lines (response-time s, ..., status-code, offset s) into the result."""
    lat_ok: list[float] = []
    last = 0.0
    bad: dict[str, int] = {}
    n = 0
    for r in csv.DictReader(text.splitlines()):
        try:
            ms = float(r["response-time"]) * 1000
            status = int(r["status-code"])
            last = max(last, float(r["offset"]) + ms / 1000)
        except (KeyError, TypeError, ValueError):
            continue
        n += 1
        if status in ok_status:
            lat_ok.append(ms)
        else:
            bad[f"http_{status}"] = bad.get(f"http_{status}", 0) + 1
    result.requests, result.ok, result.errors = n, len(lat_ok), bad
    span = result.seconds or last
    result.rps = round(len(lat_ok) / span, 2) if span > 0 else None
    p50, p99 = percentile(lat_ok, 0.5), percentile(lat_ok, 0.99)
    result.p50_ms = None if p50 is None else round(p50, 3)
    result.p99_ms = None if p99 is None else round(p99, 3)
    return result


# -- h2load -------------------------------------------------------------------------------------
_H2_FINISHED = re.compile(r"finished in ([\d.]+)(m?s)")
_H2_REQUESTS = re.compile(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                          r"(\d+) failed, (\d+) errored, (\d+) timeout")


def parse_h2load(stdout: str, log_lines: str, result: ToolResult) -> ToolResult:
    """h2load's summary (counts, duration) and its --log-file lines (latency) into the result."""
    fin, req = _H2_FINISHED.search(stdout), _H2_REQUESTS.search(stdout)
    if fin is None or req is None:
        result.error = "h2load printed no summary"
        return result
    seconds = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    _, _, done, ok, failed, errored, timeout = (int(x) for x in req.groups())
    result.requests, result.ok = done, ok
    result.errors = {k: v for k, v in (("failed", failed), ("errored", errored),
                                       ("timeout", timeout)) if v}
    result.rps = round(ok / seconds, 2) if seconds > 0 else None
    lat: list[float] = []
    for line in log_lines.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].strip().isdigit() and 200 <= int(parts[1]) < 300:
            with contextlib.suppress(ValueError):
                lat.append(float(parts[2]) / 1000)
    p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
    result.p50_ms = None if p50 is None else round(p50, 3)
    result.p99_ms = None if p99 is None else round(p99, 3)
    return result


# -- running one --------------------------------------------------------------------------------
def argv_for(tool: str, replay: Replay, connections: int, seconds: float,
             folder: Path) -> list[str]:
    """The command line of one run (files it needs are written into `folder`)."""
    path = require(tool)
    secs = max(1, round(seconds))
    if tool == "wrk":
        script = folder / "wrk-request.lua"
        script.write_text(wrk_script(replay))
        # One thread: an event loop over all connections, as our one Locust process is.
        return [path, "-t", "1", "-c", str(connections), "-d", f"{secs}s", "--timeout", "30s",
                "-s", str(script), replay.url]
    if tool == "hey":
        heads = [a for k, v in replay.headers.items() if k.lower() != "content-type"
                 for a in ("-H", f"{k}: {v}")]
        ctype = next((v for k, v in replay.headers.items() if k.lower() == "content-type"),
                     "application/octet-stream")
        return [path, "-z", f"{secs}s", "-c", str(connections), "-m", replay.method,
                "-T", ctype, "-D", str(replay.body), "-t", "30", *heads, "-o", "csv",
                replay.url]
    framed = folder / "request.grpc"
    framed.write_bytes(grpc_frame(replay.body.read_bytes()))
    heads = [a for k, v in replay.headers.items() for a in ("-H", f"{k}: {v}")]
    return [path, "-t", "1", "-c", str(connections), "-m", "1", "-D", str(secs),
            "-d", str(framed), *heads, "--log-file", str(folder / "h2load-requests.tsv"),
            replay.url]


def run(tool: str, replay: Replay, connections: int, seconds: float, folder: Path,
        name: str, on_tick: Callable[[], None] = lambda: None,
        cpus: set[int] | None = None) -> ToolResult:
    """One run of the tool; its output goes to `<folder>/<name>.out` (stdout) and `.err`.
    `on_tick` is called about twice a second while it runs (the caller checks its server);
    `cpus`: the cores it may run on (a benchmark pins it beside the server)."""
    if tool == "h2load" and replay.protocol != "grpc":
        raise ToolError("h2load is the gRPC tool here; HTTP/1.1 entries take wrk or hey")
    if tool in HTTP_TOOLS and replay.protocol != "http":
        raise ToolError(f"{tool} speaks HTTP/1.1; a gRPC entry takes h2load")
    folder.mkdir(parents=True, exist_ok=True)
    argv = argv_for(tool, replay, connections, seconds, folder)
    log = folder / "h2load-requests.tsv"
    with contextlib.suppress(FileNotFoundError):
        log.unlink()
    out_path, err_path = folder / f"{name}.out", folder / f"{name}.err"
    result = ToolResult(tool=tool, connections=connections, seconds=max(1, round(seconds)),
                        argv=argv)
    deadline = time.monotonic() + seconds + 60
    with out_path.open("wb") as out, err_path.open("wb") as err:
        p = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        status, usage = 0, None
        try:
            if cpus:
                os.sched_setaffinity(p.pid, cpus)
            while True:
                pid, status, usage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    os.killpg(p.pid, signal.SIGKILL)
                on_tick()
                time.sleep(0.25)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.wait4(p.pid, 0)
            raise
        p.returncode = os.waitstatus_to_exitcode(status)
    result.exit_code = p.returncode
    if usage is not None:
        result.cpu_s = round(usage.ru_utime + usage.ru_stime, 4)
    stdout = out_path.read_text(errors="replace")
    if p.returncode != 0:
        why = f"killed by signal {-p.returncode}" if p.returncode < 0 else \
            f"exit code {p.returncode}"
        tail = (err_path.read_text(errors="replace").strip() or stdout.strip())[-300:]
        result.error = f"{tool} {why}: {tail}"
        return result
    try:
        if tool == "wrk":
            parse_wrk(stdout, result)
        elif tool == "hey":
            parse_hey_csv(stdout, result, replay.ok_status)
        else:
            parse_h2load(stdout, log.read_text(errors="replace") if log.exists() else "",
                         result)
    except (ValueError, KeyError) as e:
        result.error = f"{tool}'s output could not be read: {e}"
    if result.error is None and result.ok == 0:
        result.error = (f"{tool}: no request answered with success ({result.requests} "
                        f"finished; errors {result.errors or 'none counted'})")
    return result


def preflight(replay: Replay, timeout: float = 30.0) -> str | None:
    """Send the request once; None if the answer is one the variant declares good, else why
    not (one line). gRPC: through grpcio, so that grpc-status, which h2load cannot read, is
    checked."""
    body = replay.body.read_bytes()
    if replay.protocol == "grpc":
        import grpc

        target, _, method = replay.url.removeprefix("http://").partition("/")
        with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1),
                                                    ("grpc.max_receive_message_length", -1)]
                                   ) as ch:
            try:
                ch.unary_unary("/" + method, request_serializer=None,
                               response_deserializer=None)(body, timeout=timeout)
            except grpc.RpcError as e:
                code = e.code()
                return f"gRPC {code.name if code else 'UNKNOWN'}: {e.details()}"
        return None
    rest = replay.url.removeprefix("http://")
    hostport, _, path = rest.partition("/")
    host, _, port = hostport.rpartition(":")
    try:
        c = http.client.HTTPConnection(host, int(port), timeout=timeout)
        c.request(replay.method, "/" + path, body=body, headers=replay.headers)
        r = c.getresponse()
        text = r.read()[:200].decode(errors="replace")
        c.close()
    except OSError as e:
        return f"{replay.url}: {e}"
    return None if r.status in replay.ok_status else f"HTTP {r.status}: {text}"
