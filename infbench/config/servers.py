"""The server kinds a service can run, and our apps: one registration each.

A server kind is what `server = "..."` names in experiments.toml. Its registration says what
the loader may accept with it (an `app`, a WSGI app, a setup task), what the rest of the
harness may assume of it (our Python runs in it, so the probes can; a store such as Redis,
which is no HTTP entry and takes no probes), and how its command line is made, per replica
(`argv`: the same for both runtimes, only the interpreter differs; every server binds
127.0.0.1). Adding a server kind is one `register(ServerKind(...))` below; adding one of our
apps is one line of APP_MODULES.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

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

# Our apps: name -> (import path, interface). WSGI apps run on Gunicorn's sync workers only.
APP_MODULES: dict[str, tuple[str, str]] = {
    "starlette": ("servers.image.app_starlette:app", "asgi"),
    "fastapi": ("servers.image.app_fastapi:app", "asgi"),
    "batching": ("servers.image.app_batching:app", "asgi"),
    "queue-fastapi": ("servers.queue.api_fastapi:app", "asgi"),
    "queue-flask": ("servers.queue.api_flask:app", "wsgi"),
    "scoring-fastapi": ("servers.scoring.scoring_fastapi:app", "asgi"),
    "scoring-flask": ("servers.scoring.scoring_flask:app", "wsgi"),
    "model-api-fastapi": ("servers.scoring.model_api_fastapi:app", "asgi"),
    "model-api-flask": ("servers.scoring.model_api_flask:app", "wsgi"),
}
HYPERCORN_LIMITS = "python:servers.shared.settings.HypercornLimits"

# The placeholders a service's command, args and env may use (see config.Service).
PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_.-]*)\}")


class Service(Protocol):
    """What a command line is made from (config.Service has these and more)."""

    @property
    def app(self) -> str: ...
    @property
    def workers(self) -> int: ...
    @property
    def module(self) -> str: ...
    @property
    def args(self) -> tuple[str, ...]: ...
    @property
    def command(self) -> tuple[str, ...]: ...


# (service, placeholder values of this replica, the interpreter, its output folder) -> argv
Argv = Callable[[Service, Mapping[str, str], str, "Path | str"], list[str]]


@dataclass(frozen=True)
class ServerKind:
    name: str
    about: str
    argv: Argv
    runs_app: bool = False  # runs one of our apps (`app`, APP_MODULES)
    runs_wsgi: bool = False  # can run a WSGI app (else ASGI only)
    our_python: bool = False  # started with the harness's (or the image's) Python
    store: bool = False  # a data store (Redis): not an HTTP entry, no probes, no model
    can_be_task: bool = True  # may be a setup task (once = true) that exits
    health: str = "http"  # the health check when the service names none
    external: bool = False  # runs elsewhere: the harness starts nothing (server = "url")


SERVER_KINDS: dict[str, ServerKind] = {}


def register(kind: ServerKind) -> ServerKind:
    SERVER_KINDS[kind.name] = kind
    return kind


def fill(text: str, values: Mapping[str, str]) -> str:
    """Replace {placeholders} (config.check_topology has checked each one resolves)."""
    return PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)


def _args(s: Service, values: Mapping[str, str]) -> list[str]:
    return [fill(a, values) for a in s.args]


def _uvicorn(s: Service, values: Mapping[str, str], python: str, out: Path | str) -> list[str]:
    app, _ = APP_MODULES[s.app]
    argv = [python, "-m", "uvicorn", app, "--host", HOST, "--port", values["port"],
            "--no-access-log", "--timeout-graceful-shutdown", str(int(GRACE_S)),
            "--http", "h11", "--h11-max-incomplete-event-size", str(HEADER_LIMIT)]
    return argv + (["--workers", str(s.workers)] if s.workers > 1 else []) + _args(s, values)


def _gunicorn(s: Service, values: Mapping[str, str], python: str, out: Path | str) -> list[str]:
    app, interface = APP_MODULES[s.app]
    # --timeout: a worker's event loop can be blocked by a long async inference; the default
    # 30 s heartbeat would kill workers and confound memory with restarts.
    worker = "uvicorn_worker.UvicornH11Worker" if interface == "asgi" else "sync"
    return [python, "-m", "gunicorn", "-k", worker, "-w", str(s.workers),
            "-b", f"{HOST}:{values['port']}", "--graceful-timeout", str(int(GRACE_S)),
            "--timeout", "300", "--no-control-socket",
            "--limit-request-line", str(GUNICORN_LIMIT),
            "--limit-request-field_size", str(GUNICORN_LIMIT), *_args(s, values), app]


def _hypercorn(s: Service, values: Mapping[str, str], python: str, out: Path | str
               ) -> list[str]:
    app, _ = APP_MODULES[s.app]
    return [python, "-m", "hypercorn", "-b", f"{HOST}:{values['port']}", "-w", str(s.workers),
            "--graceful-timeout", str(int(GRACE_S)), "-c", HYPERCORN_LIMITS,
            *_args(s, values), app]


def _module(s: Service, values: Mapping[str, str], python: str, out: Path | str) -> list[str]:
    return [python, "-m", s.module, *(_args(s, values) or ["--port", values["port"]])]


def _redis(s: Service, values: Mapping[str, str], python: str, out: Path | str) -> list[str]:
    # Default snapshotting (what a plain redis-server does) unless `args` say otherwise, e.g.
    # ["--save", ""]; the RDB file lands in the replica's folder, not the checkout.
    return [REDIS_BINARY, "--bind", HOST, "--port", values["port"], "--daemonize", "no",
            "--protected-mode", "yes", "--appendonly", "no", "--dir", str(out),
            "--dbfilename", "dump.rdb", "--logfile", "", *_args(s, values)]


def _external(s: Service, values: Mapping[str, str], python: str, out: Path | str
              ) -> list[str]:
    raise ValueError("server = 'url' is not started by the harness: it has no command line")


def _command(s: Service, values: Mapping[str, str], python: str, out: Path | str) -> list[str]:
    return [fill(part, {**values, "python": python}) for part in s.command]


register(ServerKind("uvicorn", "one of our apps (`app`) on Uvicorn", _uvicorn, runs_app=True,
                    our_python=True, can_be_task=False))
register(ServerKind("gunicorn", "one of our apps on Gunicorn (ASGI via Uvicorn's worker, or "
                    "WSGI on sync workers)", _gunicorn, runs_app=True, runs_wsgi=True,
                    our_python=True, can_be_task=False))
register(ServerKind("hypercorn", "one of our apps on Hypercorn", _hypercorn, runs_app=True,
                    our_python=True, can_be_task=False))
register(ServerKind("module", "`{python} -m <module> <args>` (a worker, the TF-Serving "
                    "server)", _module, our_python=True))
register(ServerKind("redis", "Debian's redis-server, bound to loopback on the harness's port",
                    _redis, store=True, can_be_task=False, health="redis"))
register(ServerKind("command", "any command of yours (`command`, with placeholders)",
                    _command))
register(ServerKind("url", "a server already running, anywhere (`url`): the harness starts "
                    "nothing; memory and CPU from its `pid` or `pid_file` when given",
                    _external, can_be_task=False, external=True))
