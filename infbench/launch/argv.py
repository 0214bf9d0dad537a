"""The known servers, as data: a service's own command line (without mprof), per replica.

The same function serves both runtimes; only the interpreter differs (the harness's Python
natively, the image's in a container). Every server binds 127.0.0.1.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from infbench.config import APP_MODULES, PLACEHOLDER, Service
from infbench.paths import HOST

GRACE_S = 5.0
# Request line and header limits on every server we ship (a 64 KB header line is refused):
# h11 everywhere (Uvicorn's `auto` would switch to httptools if it were installed, which
# ignores the h11 limit; Gunicorn's own --limit-request-* do not reach an ASGI worker, so its
# worker is Uvicorn's h11 one), and Hypercorn's limits from a config object. The apps also
# refuse an oversized head themselves (431/414 JSON).
HEADER_LIMIT = 16384
GUNICORN_LIMIT = 8190  # Gunicorn's own parser (WSGI sync workers): its largest allowed line
REDIS_BINARY = "redis-server"


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace {placeholders} (config.check_topology has checked each one resolves)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def server_argv(service: Service, values: Mapping[str, str], python: str = sys.executable,
                out: Path | str = ".") -> list[str]:
    """`values`: the placeholders of this replica ({port}, {ports.x}, {services.y.url}, ...)."""
    s = service
    port = values["port"]
    args = [fill(a, values) for a in s.args]
    if s.server in ("uvicorn", "gunicorn", "hypercorn"):
        app, interface = APP_MODULES[s.app]
        w = str(s.workers)
        if s.server == "uvicorn":
            argv = [python, "-m", "uvicorn", app, "--host", HOST, "--port", port,
                    "--no-access-log", "--timeout-graceful-shutdown", str(int(GRACE_S)),
                    "--http", "h11", "--h11-max-incomplete-event-size", str(HEADER_LIMIT)]
            return argv + (["--workers", w] if s.workers > 1 else []) + args
        if s.server == "gunicorn":
            # --timeout: a worker's event loop can be blocked by a long async inference; the
            # default 30 s heartbeat would kill workers and confound memory with restarts.
            worker = "uvicorn_worker.UvicornH11Worker" if interface == "asgi" else "sync"
            return [python, "-m", "gunicorn", "-k", worker, "-w", w, "-b", f"{HOST}:{port}",
                    "--graceful-timeout", str(int(GRACE_S)), "--timeout", "300",
                    "--no-control-socket",
                    "--limit-request-line", str(GUNICORN_LIMIT),
                    "--limit-request-field_size", str(GUNICORN_LIMIT), *args, app]
        return [python, "-m", "hypercorn", "-b", f"{HOST}:{port}", "-w", w,
                "--graceful-timeout", str(int(GRACE_S)),
                "-c", "python:servers.shared.settings.HypercornLimits", *args, app]
    if s.server == "module":
        return [python, "-m", s.module, *(args or ["--port", port])]
    if s.server == "redis":
        # Default snapshotting (what a plain redis-server does) unless `args` say otherwise,
        # e.g. ["--save", ""]; the RDB file lands in the replica's folder, not the checkout.
        return [REDIS_BINARY, "--bind", HOST, "--port", port, "--daemonize", "no",
                "--protected-mode", "yes", "--appendonly", "no", "--dir", str(out),
                "--dbfilename", "dump.rdb", "--logfile", "", *args]
    if s.server == "command":
        return [fill(part, {**values, "python": python}) for part in s.command]
    raise ValueError(f"unknown server {s.server!r}")


def mprof_argv(out: Path | str, interval: float, program: list[str],
               python: str = sys.executable) -> list[str]:
    # --include-children sums the workers into MEM; --multiprocess also writes each child as
    # CHLD lines, so Gunicorn's workers are counted and can still be told apart; --exit-code
    # makes mprof exit with the server's own exit code.
    return [python, "-m", "mprof", "run", "--include-children", "--multiprocess", "--exit-code",
            "--interval", f"{interval:g}", "-o", str(out), *program]
