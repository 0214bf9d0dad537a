"""A server the harness does not start (server = "url"): a service that already runs elsewhere.

There is no process to start or stop. The replica is its url; it is alive while its health
check answers (after it first has: a server still coming up is waited for like ours), and
while the pid it was given, if any, exists. Given a pid (`pid`, or `pid_file` read at start),
its process tree is the replica's processes, so the /proc sampler writes them to
processes.csv as for our own services; without one, the run has no memory or CPU of it.
"""

from __future__ import annotations

import sys
import time
import urllib.parse
from pathlib import Path

import psutil

from infbench.launch import health, proc
from infbench.launch.base import LaunchError
from infbench.launch.contract import ReplicaSpec

# A failed health check is looked at again at most this often; this many in a row (after
# the first healthy answer) and the server has stopped answering: dead, as an exited one.
CHECK_EVERY_S = 1.0
FAILURES_DEAD = 3


def url_port(url: str) -> int:
    parts = urllib.parse.urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def read_pid(spec: ReplicaSpec) -> int | None:
    """The pid given for the service, checked to exist: a one-line LaunchError otherwise."""
    s = spec.service
    pid: int | None = s.pid or None
    if s.pid_file:
        try:
            text = Path(s.pid_file).read_text().strip()
        except OSError as e:
            raise LaunchError(f"{spec.label}: cannot read pid_file {s.pid_file}: "
                              f"{e.strerror or e}") from None
        if not text.isdigit() or int(text) <= 0:
            raise LaunchError(f"{spec.label}: pid_file {s.pid_file} holds {text[:40]!r}, "
                              "not a pid")
        pid = int(text)
    if pid is not None and not psutil.pid_exists(pid):
        raise LaunchError(f"{spec.label}: pid {pid} (of {s.url}) is not running here")
    return pid


def check_cgroup(spec: ReplicaSpec) -> None:
    """The cgroup folder given holds a memory usage file: a one-line LaunchError otherwise."""
    folder = Path(spec.service.cgroup)
    if not any((folder / n).is_file() for n in ("memory.current", "memory.usage_in_bytes")):
        raise LaunchError(f"{spec.label}: cgroup {folder} has no memory.current (v2) or "
                          "memory.usage_in_bytes (v1 memory controller): not a memory cgroup "
                          "this user can read")


class ExternalReplica:
    """A server at a url: started by someone else, never ended by us."""

    def __init__(self, spec: ReplicaSpec) -> None:
        self.spec = spec
        self.url = spec.service.url
        self.log_path = spec.out_dir / "server.log"
        self.pid = read_pid(spec)
        if spec.service.cgroup:
            check_cgroup(spec)
        self.started_at = time.time()
        self._answered = False
        self._failures = 0
        self._checked = 0.0
        self._dead = False
        self._note(f"{self.url}: a server the harness did not start"
                   + (f" (pid {self.pid})" if self.pid else " (no pid: no memory or CPU)"))

    def _note(self, line: str) -> None:
        """A line in the replica's server.log; if that cannot be written, on stderr instead
        (with why), so that nothing it would have said is lost."""
        try:
            with self.log_path.open("a") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        except OSError as e:
            print(f"infbench: {self.log_path} not written ({e.strerror}): {line}",
                  file=sys.stderr)

    def _pid_gone(self) -> bool:
        if self.pid is None:
            return False
        try:
            return psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
        except psutil.Error:
            return False

    def alive(self) -> bool:
        if self._dead:
            return False
        if self._pid_gone():
            self._dead = True
            self._note(f"pid {self.pid} exited")
            return False
        if self.spec.service.health != "http":
            return True
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return True
        self._checked = now
        probe = health.HealthCheck()
        if health.check_once(self, probe) is not None:
            self._answered = True
            self._failures = 0
            return True
        if not self._answered:
            return True  # still coming up: wait_healthy's timeout decides
        self._failures += 1
        if self._failures >= FAILURES_DEAD:
            self._dead = True
            self._note(f"stopped answering: {FAILURES_DEAD} health checks in a row failed "
                       f"(GET {self.url}{self.spec.service.health_path}; last: {probe.last})")
            return False
        return True

    def exit_code(self, wait: float = 3.0) -> int | None:
        return None  # not our child: its exit code is not ours to see

    def processes(self) -> list[psutil.Process]:
        if self.pid is None:
            return []
        try:
            p = psutil.Process(self.pid)
            return [p, *proc.descendants(p.pid)]
        except psutil.NoSuchProcess:
            return []

    def info(self) -> dict[str, object]:
        return {"launcher": "external", "service": self.spec.service.name,
                "replica": self.spec.replica, "url": self.url, "pid": self.pid,
                "server_pids": [p.pid for p in self.processes()],
                "started_at": self.started_at}

    def stop(self) -> None:
        """Nothing: the harness did not start it, so it does not end it."""
