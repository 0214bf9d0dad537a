"""Launchers: how a variant's server is started under mprof and stopped again.

Everything above this module (profiles, phases, load, analysis, report) is the same for every
launcher. A launcher returns a `Server`: its URL, its process tree for live sampling, whether it
is alive, and `stop()`. The native launcher runs the server as a local process group;
a container launcher fits the same shape.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import psutil

from infbench import proc
from infbench.config import ALLOCATORS, Variant

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
GRACE_S = 5.0


class LaunchError(Exception):
    """The server did not come up; the message carries the tail of its log."""


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerSpec:
    """What a launcher needs to start one variant's server."""

    variant: Variant
    model_path: Path
    port: int
    out_dir: Path
    sample_interval: float
    max_images: int


def app_module(variant: Variant) -> str:
    return f"servers.app_{variant.app}:app"


def server_argv(variant: Variant, port: int, python: str = sys.executable) -> list[str]:
    """The server's own command line (without mprof), bound to loopback."""
    app = app_module(variant)
    w = str(variant.workers)
    if variant.server == "uvicorn":
        argv = [python, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
                "--no-access-log", "--timeout-graceful-shutdown", str(int(GRACE_S))]
        return argv + (["--workers", w] if variant.workers > 1 else [])
    if variant.server == "gunicorn":
        # --timeout: a worker's event loop can be blocked by a long async inference; a default
        # 30 s heartbeat would kill workers and confound the memory curve with restarts.
        return [python, "-m", "gunicorn", "-k", "uvicorn_worker.UvicornWorker", "-w", w,
                "-b", f"{HOST}:{port}", "--graceful-timeout", str(int(GRACE_S)),
                "--timeout", "300", app]
    if variant.server == "hypercorn":
        return [python, "-m", "hypercorn", "-b", f"{HOST}:{port}", "-w", w,
                "--graceful-timeout", str(int(GRACE_S)), app]
    if variant.server == "command":
        return [part.replace("{port}", str(port)).replace("{host}", HOST)
                .replace("{python}", python) for part in variant.command]
    raise ValueError(f"unknown server {variant.server!r}")


def mprof_argv(out: Path, interval: float, program: list[str],
               python: str = sys.executable) -> list[str]:
    # --include-children sums the workers into MEM; --multiprocess also writes each child as
    # CHLD lines, so Gunicorn's workers are counted and can still be told apart.
    return [python, "-m", "mprof", "run", "--include-children", "--multiprocess",
            "--interval", f"{interval:g}", "-o", str(out), *program]


def server_env(spec: ServerSpec) -> dict[str, str]:
    v = spec.variant
    env = dict(os.environ)
    env.update({
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "INFBENCH_MODEL_PATH": str(spec.model_path),
        "INFBENCH_ENDPOINT": v.endpoint,
        "INFBENCH_CALL": v.call,
        "INFBENCH_MAX_IMAGES": str(spec.max_images),
    })
    if v.thread_limit:
        env["INFBENCH_THREAD_LIMIT"] = str(v.thread_limit)
    else:
        env.pop("INFBENCH_THREAD_LIMIT", None)
    for key in ("INFBENCH_PROBE_DIR", "INFBENCH_TRACEMALLOC", "INFBENCH_TRIM_EACH"):
        env.pop(key, None)
    if v.allocator != "glibc":
        env["LD_PRELOAD"] = " ".join(p for p in (ALLOCATORS[v.allocator],
                                                 env.get("LD_PRELOAD", "")) if p)
    if v.trim_each_request:
        env["INFBENCH_TRIM_EACH"] = "1"
    if v.probes:  # servers/probes.py: one JSON line a second per process, in the run folder
        env["INFBENCH_PROBE_DIR"] = str(spec.out_dir)
        if v.tracemalloc:
            env["INFBENCH_TRACEMALLOC"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(v.env)
    return env


class Server(Protocol):
    url: str
    variant: Variant

    def alive(self) -> bool: ...
    def exit_code(self) -> int | None: ...
    def processes(self) -> list[psutil.Process]: ...
    def info(self) -> dict[str, object]: ...
    def stop(self) -> None: ...


class Launcher(Protocol):
    name: str

    def check(self) -> None: ...
    def prepare(self, variants: list[Variant], say: Callable[[str], None]) -> None: ...
    def start(self, spec: ServerSpec) -> Server: ...


class WatchedServer:
    """What every launcher's server shares: a local process group (mprof, or the client of a
    container) watched through the server processes under it."""

    group: proc.Group
    _seen_server: bool = False

    def _server_processes(self) -> list[psutil.Process]:
        raise NotImplementedError

    def alive(self) -> bool:
        # mprof outlives its child only by one sampling interval; the server is what matters.
        # Until mprof has started the server, mprof being alive is all there is to check.
        if not self.group.alive():
            return False
        if self._server_processes():
            self._seen_server = True
            return True
        return not self._seen_server

    def exit_code(self) -> int | None:
        return self.group.poll()

    def processes(self) -> list[psutil.Process]:
        """The server and its workers, without mprof itself."""
        return self._server_processes()


class NativeServer(WatchedServer):
    """The server as a local process group: mprof at its head, the server as mprof's child."""

    def __init__(self, spec: ServerSpec) -> None:
        self.variant = spec.variant
        self.url = f"http://{HOST}:{spec.port}"
        self.spec = spec
        self.log_path = spec.out_dir / "server.log"
        program = server_argv(spec.variant, spec.port)
        self.argv = mprof_argv(spec.out_dir / "mprofile.dat", spec.sample_interval, program)
        self.started_at = time.time()
        self._seen_server = False
        self.group = proc.Group(self.argv, log_path=self.log_path, env=server_env(spec),
                                cwd=ROOT)

    def _server_processes(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.group.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def info(self) -> dict[str, object]:
        return {"launcher": "native", "argv": self.argv, "url": self.url,
                "mprof_pid": self.group.pid,
                "server_pids": [p.pid for p in self._server_processes()],
                "started_at": self.started_at}

    def stop(self) -> None:
        # TERM the server first so mprof sees its child exit, writes its last samples and
        # closes the file; ending mprof first would lose its unflushed buffer.
        try:
            direct = psutil.Process(self.group.pid).children()
        except psutil.NoSuchProcess:
            direct = []
        for p in direct:
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.group.popen.wait(timeout=GRACE_S + 3)
        self.group.stop(GRACE_S)


class NativeLauncher:
    name = "native"

    def check(self) -> None:
        """Nothing to check: the native runtime needs only this environment."""

    def prepare(self, variants: list[Variant], say: Callable[[str], None]) -> None:
        """Nothing to build beyond the model and images, which the run makes itself; but a
        preloaded allocator must be installed, or nothing starts."""
        check_allocators(variants)

    def start(self, spec: ServerSpec) -> NativeServer:
        return NativeServer(spec)


def get_json(url: str, timeout: float = 2.0) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if r.status != 200:
                return None
            data = json.loads(r.read() or b"{}")
            return data if isinstance(data, dict) else {"body": data}
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_healthy(server: Server, timeout: float, on_tick: object = None) -> dict[str, object]:
    """Poll the health endpoint until it answers 200, the server dies, or time runs out."""
    deadline = time.monotonic() + timeout
    url = server.url + server.variant.health_path
    while True:
        if not server.alive():
            code = server.exit_code()
            raise LaunchError("server exited before it was healthy"
                              + (f" (mprof exit code {code})" if code is not None else ""))
        body = get_json(url)
        if body is not None:
            return body
        if time.monotonic() > deadline:
            raise LaunchError(f"server not healthy at {url} after {timeout:.0f} s")
        if callable(on_tick):
            on_tick()
        time.sleep(0.5)


def check_allocators(variants: list[Variant]) -> None:
    """One line, before anything starts, for a preloaded allocator that is not installed."""
    for v in variants:
        lib = ALLOCATORS[v.allocator]
        if lib and not Path(lib).exists():
            raise LaunchError(f"variant {v.name}: allocator {v.allocator} needs {lib}, which is "
                              "not installed; `make allocators` installs Debian's libjemalloc2, "
                              "libmimalloc2.0 and libgoogle-perftools4 (root)")


def check_allocator_loaded(server: Server) -> None:
    """After start-up: the preloaded allocator is mapped in every server process. A preload
    that silently failed (wrong path, a setuid binary, a static build) would otherwise make
    the run a second glibc run under another name."""
    v = server.variant
    lib = ALLOCATORS[v.allocator]
    if not lib:
        return
    for p in server.processes():
        try:
            maps = Path(f"/proc/{p.pid}/maps").read_text()
        except OSError:
            continue
        if Path(lib).name not in maps:
            raise LaunchError(f"variant {v.name}: LD_PRELOAD={lib} did not take: "
                              f"{Path(lib).name} is not mapped in /proc/{p.pid}/maps")


LAUNCHERS: dict[str, Launcher] = {"native": NativeLauncher()}
RUNTIMES = ("native", "docker")


def get_launcher(runtime: str) -> Launcher:
    """The launcher of a runtime, checked (e.g. that a Docker engine answers): a one-line
    LaunchError before anything starts."""
    if runtime == "docker" and runtime not in LAUNCHERS:
        from infbench.docker import DockerLauncher  # on demand: infbench.docker builds on this

        LAUNCHERS[runtime] = DockerLauncher()
    if runtime not in LAUNCHERS:
        raise LaunchError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    launcher = LAUNCHERS[runtime]
    launcher.check()
    return launcher
