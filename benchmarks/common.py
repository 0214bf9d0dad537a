"""What the benchmarks share: a server started in its own process group and a request body.

Servers (all on 127.0.0.1, a free port, ended by process group on every exit path):
  sleep   tests/fixtures/sleep_app.py: one request at a time, `sleep_ms` each (0: a null endpoint)
  model   servers/image/app_starlette.py on Uvicorn with a model preset (the starlette-uvicorn
          variant), `call` as INFBENCH_CALL
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from infbench import config
from infbench.measure import assets
from infbench.paths import ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def multipart(batch: int, field: str = "images") -> tuple[bytes, str]:
    """`batch` sample JPEGs as one multipart body (the servers' contract), and its type."""
    paths = sorted(assets.images_dir().glob("*.jpg")) or [Path(p) for p in
                                                          assets.ensure_images()]
    boundary = uuid.uuid4().hex
    parts = []
    for i in range(batch):
        p = paths[i % len(paths)]
        parts.append((f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
                      f"filename=\"{p.name}\"\r\nContent-Type: image/jpeg\r\n\r\n").encode()
                     + p.read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def health(port: int) -> dict[str, object] | None:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        c.request("GET", "/health")
        r = c.getresponse()
        body = r.read()
        c.close()
        data = json.loads(body) if r.status == 200 else None
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def server(kind: str, *, sleep_ms: float = 0.0, model: str = "small",
           call: str = "predict", cpus: set[int] | None = None,
           log: Path | None = None) -> Iterator[int]:
    """Start a server, wait until its /health answers from its own pid, yield its port."""
    port = free_port()
    env = dict(os.environ)
    if kind == "sleep":
        app = "tests.fixtures.sleep_app:app"
        env["INFBENCH_SLEEP_MS"] = f"{sleep_ms:g}"
    elif kind == "model":
        app = "servers.image.app_starlette:app"
        exp = config.load(ROOT / "experiments.toml")
        env["INFBENCH_MODEL_PATH"] = str(assets.ensure_model(exp.model(model), log=False))
        env["INFBENCH_CALL"] = call
    else:
        raise ValueError(f"unknown server kind {kind!r} (sleep, model)")
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    p = subprocess.Popen([sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1",
                          "--port", str(port), "--no-access-log", "--log-level", "warning"],
                         cwd=ROOT, env=env, start_new_session=True, stdout=out,
                         stderr=subprocess.STDOUT)
    try:
        if cpus:
            os.sched_setaffinity(p.pid, cpus)
        deadline = time.monotonic() + 180
        while True:
            h = health(port)
            if h and h.get("pid") == p.pid:
                break
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{kind} server did not come up (exit {p.poll()})")
            time.sleep(0.3)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def post(port: int, body: bytes, content_type: str, n: int = 1) -> None:
    """`n` requests, one after the other (a warm-up)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    for _ in range(n):
        c.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
        r = c.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"warm-up request: HTTP {r.status}")
    c.close()
