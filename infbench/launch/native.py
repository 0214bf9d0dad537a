"""The native runtime: every replica a local process group, mprof at its head."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import psutil

from infbench.config import Variant
from infbench.config import envs as config_envs
from infbench.launch import envs, loopback, proc
from infbench.launch.argv import GRACE_S, REDIS_BINARY, mprof_argv, server_argv
from infbench.launch.base import LaunchError, WatchedProcess, check_allocators
from infbench.launch.contract import SCRUBBED, ReplicaSpec, Where, replica_env
from infbench.paths import ROOT


def native_where(spec: ReplicaSpec) -> Where:
    """Our interpreter, or the peer environment's for a service that names one (`venv`)."""
    venv = spec.service.venv
    python = str(config_envs.python_of(venv)) if venv else sys.executable
    return Where(python=python, out=str(spec.out_dir),
                 model=str(spec.model_path or ""), root=str(ROOT))


def native_env(spec: ReplicaSpec) -> dict[str, str]:
    """The host's environment, less our stale variables, plus the replica's contract, its
    loopback traffic off any proxy (infbench/launch/loopback.py; a container is told the same)."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    ours = replica_env(spec, native_where(spec))
    for key in ("LD_PRELOAD", "PYTHONPATH"):  # ours first, then what the host had
        sep = " " if key == "LD_PRELOAD" else os.pathsep
        if key in ours and env.get(key):
            ours[key] = sep.join((ours[key], env[key]))
    env.update(ours)
    return loopback.child_env(env)


class NativeReplica(WatchedProcess):
    """A replica as a local process group: mprof at its head, the server as mprof's child."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.url = spec.url
        self.log_path = spec.out_dir / "server.log"
        where = native_where(spec)
        self.program = server_argv(spec.service, spec.values(where), where.python,
                                   spec.out_dir)
        self.argv = mprof_argv(spec.out_dir / "mprofile.dat", spec.sample_interval,
                               self.program)
        self.started_at = time.time()
        self._seen_server = False
        # Descendants seen (pid -> start time) and the process groups of those that left ours
        # (BentoML's worker and Ray's actors lead their own): ended by stop() and, should the
        # harness die, by the watchdog, as our own group is.
        self._seen: dict[int, float] = {}
        self._groups: set[int] = set()
        try:
            self.group = proc.Group(self.argv, log_path=self.log_path, env=native_env(spec),
                                    cwd=ROOT)
        except OSError as e:
            raise LaunchError(f"cannot start {spec.label}: {e.strerror or e}") from None

    def _server_processes(self) -> list[psutil.Process]:
        try:
            found = proc.descendants(self.group.pid)
        except psutil.NoSuchProcess:
            return []
        for p in found:
            if p.pid not in self._seen:
                self._note(p)
        return found

    def _note(self, p: psutil.Process) -> None:
        with contextlib.suppress(psutil.Error, OSError):
            self._seen[p.pid] = p.create_time()
            pgid = os.getpgid(p.pid)
            if pgid != self.group.pgid and pgid not in self._groups:
                self._groups.add(pgid)
                proc.WATCHDOG.tell(f"group {pgid}")

    def _strays(self) -> list[psutil.Process]:
        """Descendants seen earlier that outlived our group (in a group of their own, orphaned
        when the server died): the same process, by its start time, still running."""
        out = []
        for pid, started in self._seen.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                if p.create_time() == started and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        return out

    def _end_strays(self) -> None:
        strays = self._strays()
        for p in strays:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(strays, timeout=GRACE_S)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        for pgid in self._groups:
            proc.WATCHDOG.tell(f"ungroup {pgid}")

    def info(self) -> dict[str, object]:
        return {"launcher": "native", "service": self.spec.service.name,
                "replica": self.spec.replica, "argv": self.argv, "url": self.url,
                "ports": self.spec.ports, "mprof_pid": self.group.pid,
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
        self._end_strays()


class NativeLauncher:
    name = "native"

    def check(self) -> None:
        """Nothing to check: the native runtime needs only this environment."""

    def prepare(self, variants: list[Variant], say: Callable[[str], None]) -> None:
        """Nothing to build beyond the model and images, which the run makes itself, and the
        peer environments the variants name; a preloaded allocator or redis-server must be
        installed, or nothing starts."""
        check_allocators(variants)
        # A missing peer environment is built (from its lock, side by side), never skipped.
        envs.ensure_all(sorted({s.venv for v in variants for s in v.services if s.venv}), say)
        if any(s.server == "redis" for v in variants for s in v.services) \
                and shutil.which(REDIS_BINARY) is None:
            raise LaunchError("a variant runs Redis, but there is no `redis-server` on PATH; "
                              "`make system` installs Debian's redis-server (root)")

    def start(self, spec: ReplicaSpec) -> NativeReplica:
        return NativeReplica(spec)
