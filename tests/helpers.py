"""What the tests that start real processes share: the children's environment, free ports,
a server in its own process group (started, waited for, stopped), Redis, and what was left.

One copy of each, so that every test waits for "healthy" and cleans up the same way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import redis

from infbench.paths import HOST, ROOT

# Longer than the services' own 2 s checks behind /health (the queue worker pings Redis): a
# slow answer is waited for, not cut off mid-write (which the worker logs as a traceback).
HEALTH_REQUEST_TIMEOUT_S = 3.0


def free_port() -> int:
    """A port nothing listens on now (the OS's choice; the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without any INFBENCH_* of the caller's, unbuffered, ROOT importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFBENCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def quiet_env(**extra: str) -> dict[str, str]:
    """child_env with TensorFlow's C++ log lines off (they bury a server's own messages)."""
    return child_env(**{"TF_CPP_MIN_LOG_LEVEL": "2", **extra})


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def spawn(argv: list[str], env: dict[str, str], log: Path,
          append: bool = False) -> subprocess.Popen[bytes]:
    """`argv` from ROOT in a new session (its own process group), output to `log`."""
    with log.open("ab" if append else "wb") as out:
        return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def in_group(pid: object, pgid: int) -> bool:
    """Whether `pid` (from a health answer) is a process of the group we started."""
    try:
        return isinstance(pid, int) and os.getpgid(pid) == pgid
    except ProcessLookupError:
        return False


def wait_healthy(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float,
                 name: str = "server", own_group: bool = False) -> httpx.Response:
    """The first 200 from `url`; the test fails (with the log's tail) if `proc` exits first or
    `timeout` passes. own_group: a 200 counts only if its JSON "pid" is in proc's group."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{tail(log)}")
        with contextlib.suppress(httpx.TransportError, ValueError):
            r = httpx.get(url, timeout=HEALTH_REQUEST_TIMEOUT_S)
            if r.status_code == 200 and (not own_group or in_group(r.json().get("pid"),
                                                                   proc.pid)):
                return r
        if time.monotonic() > deadline:
            pytest.fail(f"{name} not healthy after {timeout:.0f} s:\n{tail(log)}")
        time.sleep(0.2)


def stop_group(proc: subprocess.Popen[bytes], grace: float = 15.0) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
    # Workers that outlived the leader are still in the group: make sure none survive.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], log: Path, health_url: str, timeout: float,
            grace: float = 15.0) -> Iterator[subprocess.Popen[bytes]]:
    """A server, yielded once `health_url` answers 200; its group stopped afterwards."""
    proc = spawn(argv, env, log)
    try:
        wait_healthy(proc, health_url, log, timeout)
        yield proc
    finally:
        stop_group(proc, grace)


def redis_argv(port: int) -> list[str]:
    """A throwaway redis-server on 127.0.0.1: no snapshots, no append-only file, foreground."""
    return ["redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly",
            "no", "--daemonize", "no"]


def wait_redis(proc: subprocess.Popen[bytes], port: int, log: Path,
               timeout: float = 20.0) -> None:
    """Until the redis-server we started answers: its own pid in INFO, not just any PONG."""
    client = redis.Redis(host=HOST, port=port, socket_timeout=5)
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"redis-server exited with {proc.returncode}:\n{tail(log)}")
            with contextlib.suppress(redis.RedisError):
                if client.info("server")["process_id"] == proc.pid:
                    return
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server not up after {timeout:.0f} s:\n{tail(log)}")
            time.sleep(0.05)
    finally:
        client.close()


def left_running(marker: Path | str) -> list[str]:
    """Live processes (zombies aside) whose command line mentions `marker`, a test's own
    folder: what a run left behind, as "pid: command"."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(marker) in cmd:
                found.append(f"{p.pid}: {cmd}")
        except psutil.Error:
            pass
    return found


def multipart(parts: list[tuple[str, str | None, bytes]]) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body from (field, filename or None for a text field, data), built
    by hand so that a test controls every part (none at all, a text part where a file goes)."""
    boundary = uuid.uuid4().hex
    chunks = []
    for name, filename, data in parts:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"'
        if filename is not None:
            head += f'; filename="{filename}"\r\nContent-Type: application/octet-stream'
        chunks.append(head.encode() + b"\r\n\r\n" + data + b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), {"content-type": f"multipart/form-data; boundary={boundary}"}


def the_run(results: Path) -> Path:
    """The one run folder in `results` (the `latest` link aside)."""
    (d,) = [p for p in results.iterdir() if p.is_dir() and not p.is_symlink()]
    return d
