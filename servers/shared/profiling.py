"""Per-request profiling of a server, opt-in: one profile file per profiled request.

    INFBENCH_PROFILER      pyinstrument | yappi (unset: off, and nothing here is even imported)
    INFBENCH_PROFILE_DIR   (required when on) the folder the files go to
    INFBENCH_PROFILE_PATH  the request path profiled (default /score; POST only)

Why per request and not per process: a sequential client (infbench/modes/request_profile.py) sends
one request at a time and can wait for that request's file before sending the next, so writing a
profile never lands inside another request's latency. The file is written after the answer has
gone out: for ASGI once the app has sent the whole response, for WSGI in the body iterable's
close(), which the server calls after writing the body.

pyinstrument (sampling, async_mode="enabled", so time awaiting is attributed to the awaiting
frame): <dir>/pyinstrument-<pid>-<n>.pyisession (the session, for pyinstrument's own
`Session.load`) and, last, <dir>/pyinstrument-<pid>-<n>.html.
yappi (deterministic, wall clock, coroutine-aware: a coroutine's time includes its awaits):
<dir>/yappi-<pid>-<n>.pstat (readable by pstats.Stats) and, last, <dir>/yappi-<pid>-<n>.txt:
the function table, the per-thread table and, in an event loop, one line per asyncio task
with the wall time of the coroutine it ran.
Each file appears whole (written beside, then renamed), so a reader never sees half of one.

One profiler at a time: both hook the interpreter's profile function, so running them together
would measure each other.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from servers.shared.settings import SettingsError, env_choice, env_dir

PROFILERS = ("pyinstrument", "yappi")
DEFAULT_PATH = "/score"
PYINSTRUMENT_INTERVAL_S = 0.001
TEXT_COLUMNS = {0: ("name", 100), 1: ("ncall", 8), 2: ("tsub", 10), 3: ("ttot", 10),
                4: ("tavg", 10)}


@dataclass(frozen=True)
class ProfileSettings:
    profiler: str
    directory: Path
    path: str = DEFAULT_PATH


def load_profile_settings(env: Mapping[str, str] | None = None) -> ProfileSettings | None:
    """The profiling settings, or None when INFBENCH_PROFILER is unset (profiling off)."""
    env = os.environ if env is None else env
    if not env.get("INFBENCH_PROFILER", "").strip():
        return None
    profiler = env_choice(env, "INFBENCH_PROFILER", PROFILERS, "")
    directory = env_dir(env, "INFBENCH_PROFILE_DIR")
    if directory is None:
        raise SettingsError("INFBENCH_PROFILE_DIR: required when INFBENCH_PROFILER is set")
    path = env.get("INFBENCH_PROFILE_PATH", "").strip() or DEFAULT_PATH
    if not path.startswith("/"):
        raise SettingsError(f"INFBENCH_PROFILE_PATH: expected a path starting with /, "
                            f"got {path!r}")
    return ProfileSettings(profiler, directory, path)


def _write(path: Path, data: bytes) -> None:
    """The file appears whole: written beside, then renamed over."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


class RequestProfiler:
    """Profiles one request at a time (requests that overlap one being profiled are not)."""

    def __init__(self, settings: ProfileSettings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self._count = 0
        self._busy = threading.Lock()
        self._tasks: dict[int, tuple[int, str, str]] = {}  # id(task) -> (tag, name, coroutine)
        if settings.profiler == "yappi":
            import yappi

            yappi.set_clock_type("wall")

    def wanted(self, method: str, path: str) -> bool:
        return method == "POST" and path == self.settings.path

    def start(self) -> Any:
        """A token for stop(), or None when another request is being profiled."""
        if not self._busy.acquire(blocking=False):
            return None
        try:
            if self.settings.profiler == "pyinstrument":
                from pyinstrument import Profiler

                profiler = Profiler(interval=PYINSTRUMENT_INTERVAL_S, async_mode="enabled")
                profiler.start()
                return profiler
            import yappi

            self._tasks.clear()
            yappi.clear_stats()
            in_loop = _running_loop()
            yappi.set_tag_callback(self._task_tag if in_loop else None)
            yappi.start(builtins=False, profile_threads=True)
            return "yappi"
        except BaseException:
            self._busy.release()
            raise

    def stop(self, token: Any) -> Any:
        """Stop profiling; the result for write(), or None when the profiler failed (logged:
        write(None) still lets the next request be profiled)."""
        try:
            if self.settings.profiler == "pyinstrument":
                token.stop()
                return token
            import yappi

            yappi.stop()
            return token
        except Exception as e:
            _log(f"cannot stop {self.settings.profiler}: {type(e).__name__}: {e}")
            return None

    def write(self, result: Any) -> None:
        """Write the request's files and let the next request be profiled, always: a failure
        is one line in the server's log (the harness, missing the file, points there)."""
        try:
            if result is None:
                return
            self._count += 1
            self.pid = os.getpid()  # a forked worker's own
            name = f"{self.settings.profiler}-{self.pid}-{self._count:04d}"
            stem = self.settings.directory / name
            if self.settings.profiler == "pyinstrument":
                session = result.last_session
                tmp = stem.with_name(f".{stem.name}.pyisession.tmp")
                session.save(tmp)
                tmp.replace(stem.with_suffix(".pyisession"))
                _write(stem.with_suffix(".html"), result.output_html().encode())
            else:
                self._write_yappi(stem)
        except Exception as e:
            _log(f"cannot write the {self.settings.profiler} profile of request {self._count} "
                 f"to {self.settings.directory}: {type(e).__name__}: {e}")
        finally:
            self._busy.release()

    # -- yappi ---------------------------------------------------------------------------
    def _task_tag(self) -> int:
        """yappi's tag of the running call: one per asyncio task (0 outside a task)."""
        try:
            task = asyncio.current_task()
        except RuntimeError:
            return 0
        if task is None:
            return 0
        known = self._tasks.get(id(task))
        if known is None:
            coro = task.get_coro()
            name = getattr(coro, "__qualname__", type(coro).__name__)
            known = self._tasks[id(task)] = (len(self._tasks) + 1, task.get_name(), name)
        return known[0]

    def _write_yappi(self, stem: Path) -> None:
        import io

        import yappi

        stats = yappi.get_func_stats()
        tmp = stem.with_name(f".{stem.name}.pstat.tmp")
        stats.save(str(tmp), type="pstat")
        tmp.replace(stem.with_suffix(".pstat"))
        out = io.StringIO()
        out.write(f"yappi, wall clock, pid {self.pid}, request {self._count}: every Python "
                  "function called (ttot includes the time a coroutine spent awaiting)\n")
        stats.sort("ttot", "desc").print_all(out=out, columns=TEXT_COLUMNS)
        out.write("\nthreads (wall time while profiled)\n")
        yappi.get_thread_stats().print_all(out=out)
        if self._tasks:
            out.write("\nasyncio tasks: the wall time of each task's coroutine (tasks that "
                      "overlap in time add up to more than the request)\n")
            out.write(f"{'tag':>4}  {'task':<16} {'coroutine':<40} {'wall ms':>10}\n")
            for tag, name, coro in sorted(self._tasks.values()):
                per_task = yappi.get_func_stats(filter={"tag": tag})
                top = max((s.ttot for s in per_task if s.name == coro.rsplit(".", 1)[-1]),
                          default=max((s.ttot for s in per_task), default=0.0))
                out.write(f"{tag:>4}  {name:<16} {coro:<40} {top * 1000:>10.3f}\n")
        yappi.clear_stats()
        _write(stem.with_suffix(".txt"), out.getvalue().encode())


def _log(message: str) -> None:
    """One line in the server's log (its stderr)."""
    print(f"infbench profiling, pid {os.getpid()}: {message}", file=sys.stderr, flush=True)


def _running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Framework glue: an ASGI middleware and a WSGI wrapper, installed only when profiling is on.


class ProfileASGI:
    """ASGI middleware: profile the wanted requests, write the files once the answer is sent."""

    def __init__(self, app: Callable[..., Any], settings: ProfileSettings) -> None:
        self.app = app
        self.profiler = RequestProfiler(settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self.profiler.wanted(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        token = self.profiler.start()
        if token is None:
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            result = None
            try:
                result = self.profiler.stop(token)
            finally:
                self.profiler.write(result)  # releases the profiler whatever stop() did


class ProfileWSGI:
    """WSGI wrapper: profile the wanted requests; the files are written in the body's close(),
    after the server has written the answer."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], settings: ProfileSettings) -> None:
        self.wsgi_app = wsgi_app
        self.profiler = RequestProfiler(settings)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not self.profiler.wanted(environ.get("REQUEST_METHOD", ""),
                                    environ.get("PATH_INFO", "")):
            return self.wsgi_app(environ, start_response)
        token = self.profiler.start()
        if token is None:
            return self.wsgi_app(environ, start_response)
        try:
            body = self.wsgi_app(environ, start_response)
        except BaseException:
            result = None
            try:
                result = self.profiler.stop(token)
            finally:
                self.profiler.write(result)
            raise
        result = None
        try:
            result = self.profiler.stop(token)
        except BaseException:
            self.profiler.write(None)
            raise
        return _ThenWrite(body, self.profiler, result)


class _ThenWrite:
    """A WSGI body that writes the request's profile when the server closes it."""

    def __init__(self, body: Iterable[bytes], profiler: RequestProfiler, result: Any) -> None:
        self.body = body
        self.profiler = profiler
        self.result = result

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.body)

    def close(self) -> None:
        try:
            close = getattr(self.body, "close", None)
            if close is not None:
                close()
        finally:
            self.profiler.write(self.result)
