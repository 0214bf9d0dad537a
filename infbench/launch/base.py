"""What every launcher shares: the error type, the protocols, and a watched process group."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import psutil

from infbench.config import ALLOCATORS, Variant
from infbench.launch import proc
from infbench.launch.contract import ReplicaSpec


class LaunchError(Exception):
    """A service did not come up (or cannot): one line, plus the tail of its log if any."""


class Replica(Protocol):
    spec: ReplicaSpec
    url: str
    log_path: Path

    def alive(self) -> bool: ...
    def exit_code(self, wait: float = 3.0) -> int | None: ...
    def processes(self) -> list[psutil.Process]: ...
    def info(self) -> dict[str, object]: ...
    def stop(self) -> None: ...


class Launcher(Protocol):
    name: str

    def check(self) -> None: ...
    def prepare(self, variants: list[Variant], say: Callable[[str], None]) -> None: ...
    def start(self, spec: ReplicaSpec) -> Replica: ...


class WatchedProcess:
    """A local process group (mprof, or the client of a container) watched through the
    server processes under it."""

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

    def exit_code(self, wait: float = 3.0) -> int | None:
        """The server's own exit code (mprof --exit-code passes it on). mprof outlives its
        server by up to a sampling interval, so a dead server's code is waited for briefly."""
        code = self.group.poll()
        if code is None and self._seen_server and not self._server_processes():
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = self.group.popen.wait(timeout=wait)
        return code

    def processes(self) -> list[psutil.Process]:
        """The server and its workers, without mprof itself."""
        return self._server_processes()


def check_allocators(variants: list[Variant]) -> None:
    """One line, before anything starts, for a preloaded allocator that is not installed."""
    for v in variants:
        for s in v.services:
            lib = ALLOCATORS[s.allocator]
            if lib and not Path(lib).exists():
                raise LaunchError(
                    f"variant {v.name}: allocator {s.allocator} needs {lib}, which is not "
                    "installed; `make system` installs Debian's libjemalloc2, libmimalloc2.0 "
                    "and libgoogle-perftools4 (root)")


def check_allocator_loaded(replica: Replica) -> None:
    """After start-up: the preloaded allocator is mapped in every server process. A preload
    that silently failed (wrong path, a setuid binary, a static build) would otherwise make
    the run a second glibc run under another name."""
    s = replica.spec.service
    lib = ALLOCATORS[s.allocator]
    if not lib:
        return
    for p in replica.processes():
        try:
            maps = Path(f"/proc/{p.pid}/maps").read_text()
        except OSError:
            continue
        if Path(lib).name not in maps:
            raise LaunchError(f"variant {replica.spec.variant.name}: LD_PRELOAD={lib} did not "
                              f"take: {Path(lib).name} is not mapped in /proc/{p.pid}/maps")
