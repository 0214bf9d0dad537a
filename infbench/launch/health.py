"""Is a replica up, and is it really ours? Health strategies and the port-owner check.

A 200 on /health proves only that *something* answers on the port. Ports are chosen by the
harness and released before the server binds them, so another process can take one in
between (and our server then dies with "address in use" while the other answers). So every
strategy also checks who listens: the socket on the port must belong to a process of the
replica's own tree (/proc/net/tcp's inode, found among /proc/<pid>/fd). A port held by anyone
else is a one-line error naming that process, before any load.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import time
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from infbench.launch import loopback
from infbench.launch.argv import SERVER_KINDS, fill
from infbench.launch.base import LaunchError, Replica
from infbench.paths import HOST

POLL_S = 0.5


def listening_inodes(port: int) -> set[int]:
    """Socket inodes in LISTEN state on `port` (IPv4 and IPv6), from /proc/net."""
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10 or parts[3] != "0A":
                continue
            with contextlib.suppress(ValueError):
                if int(parts[1].rsplit(":", 1)[1], 16) == port:
                    found.add(int(parts[9]))
    return found


def socket_pids(inodes: set[int], pids: list[int] | None = None) -> set[int]:
    """The processes (of `pids`, or all) holding one of these socket inodes."""
    wanted = {f"socket:[{i}]" for i in inodes}
    owners: set[int] = set()
    for pid in pids if pids is not None else [p for p in psutil.pids()]:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/fd/{fd}") in wanted:
                    owners.add(pid)
                    break
    return owners


def describe_pid(pid: int) -> str:
    try:
        p = psutil.Process(pid)
        return f"pid {pid} ({' '.join(p.cmdline())[:80] or p.name()})"
    except psutil.Error:
        return f"pid {pid}"


def port_owner(port: int, ours: list[int]) -> str | None:
    """None when nobody listens or one of `ours` does; else who holds the port."""
    inodes = listening_inodes(port)
    if not inodes or socket_pids(inodes, ours):
        return None
    others = socket_pids(inodes)
    if not others:
        return None  # a listener we cannot see into (another namespace): give it the benefit
    return ", ".join(describe_pid(p) for p in sorted(others))


def ours(replica: Replica) -> list[int]:
    pids = [p.pid for p in replica.processes()]
    with contextlib.suppress(AttributeError):
        pids += [p.pid for p in replica.group.members()]  # type: ignore[attr-defined]
    return pids


def namespace_pids(pids: list[int]) -> set[int]:
    """Our processes' pids as they know themselves: in a container a server reports the pid of
    its own namespace (NSpid's last field), not the host's."""
    out = set(pids)
    for pid in pids:
        with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    out.update(int(x) for x in line.split()[1:])
                    break
    return out


@dataclass
class HealthCheck:
    """The last thing a health check saw, for the message when it never turns healthy."""

    last: str = "no answer yet"
    detail: dict[str, Any] = field(default_factory=dict)


def _http(url: str, probe: HealthCheck) -> dict[str, Any] | None:
    try:
        with loopback.urlopen(url, timeout=2.0) as r:
            body = r.read(65536)
            status = r.status
    except urllib.error.HTTPError as e:
        text = e.read(300).decode("utf-8", "replace").strip().replace("\n", " ")
        probe.last = f"HTTP {e.code}" + (f": {text[:160]}" if text else "")
        return None
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        probe.last = f"no answer ({reason})"
        return None
    if status != 200:
        probe.last = f"HTTP {status}"
        return None
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        data = {"body": body[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"body": data}


def _redis_ping(port: int, probe: HealthCheck) -> dict[str, Any] | None:
    """PING and INFO over Redis's own protocol (no client library in the harness)."""
    try:
        with socket.create_connection((HOST, port), timeout=2.0) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            if not s.recv(64).startswith(b"+PONG"):
                probe.last = "Redis did not answer PONG"
                return None
            s.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            data = b""
            deadline = time.monotonic() + 2.0
            while b"\r\n\r\n" not in data[-8:] and time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as e:
        probe.last = f"no answer ({e.strerror or e})"
        return None
    info = dict(line.split(":", 1) for line in data.decode("latin-1").splitlines()
                if ":" in line and not line.startswith("#"))
    return {"status": "ok", "redis_version": info.get("redis_version"),
            "pid": int(info["process_id"]) if info.get("process_id", "").isdigit() else None}


def check_once(replica: Replica, probe: HealthCheck) -> dict[str, Any] | None:
    s = replica.spec.service
    port = replica.spec.port
    kind = s.health
    if kind == "http":
        return _http(replica.url + s.health_path, probe)
    if kind == "redis":
        return _redis_ping(port, probe)
    if kind == "tcp":
        try:
            with socket.create_connection((HOST, port), timeout=2.0):
                return {"status": "ok", "tcp": port}
        except OSError as e:
            probe.last = f"no connection ({e.strerror or e})"
            return None
    if kind == "command":
        values = {"port": str(port), "host": HOST}
        argv = [fill(a, values) for a in s.health_command]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                 stdin=subprocess.DEVNULL, env=loopback.child_env())
        except (OSError, subprocess.TimeoutExpired) as e:
            probe.last = f"health command failed: {e}"
            return None
        if res.returncode != 0:
            probe.last = f"health command exited {res.returncode}: " \
                         f"{(res.stderr or res.stdout).strip()[:160]}"
            return None
        return {"status": "ok", "command": argv}
    return {"status": "ok"}  # "none": alive is healthy


def wait_healthy(replica: Replica, timeout: float,
                 on_tick: Callable[[], None] | None = None) -> dict[str, Any]:
    """Poll until the replica answers from its own process tree, dies, or time runs out."""
    deadline = time.monotonic() + timeout
    probe = HealthCheck()
    label = replica.spec.label
    port = replica.spec.port
    while True:
        if not replica.alive():
            code = replica.exit_code()
            raise LaunchError(f"{label} exited before it was healthy"
                              + (f" (exit code {code})" if code is not None else ""))
        mine = ours(replica)
        # A server we did not start (server = "url") may be anywhere: who listens on its port
        # is not ours to judge; a health answer's pid is still checked against its pid's tree.
        external = SERVER_KINDS[replica.spec.service.server].external
        squatter = None if external else port_owner(port, mine)
        if squatter is not None:
            # A process that started and bound between the two looks (mprof forks the server,
            # which may listen at once: CI saw our own redis-server called a squatter) is ours
            # too: look at our tree again before calling it a squatter.
            mine = ours(replica)
            squatter = port_owner(port, mine)
        if squatter is not None:
            raise LaunchError(f"{label}: port {port} is taken by another process, not ours: "
                              f"{squatter}")
        body = check_once(replica, probe)
        if body is not None:
            pid = body.get("pid")
            if isinstance(pid, int) and mine and pid not in namespace_pids(mine):
                # A worker that booted between the two looks (Gunicorn forks them while the
                # master already listens) is ours too: look again before calling it a squatter.
                mine = ours(replica)
            if isinstance(pid, int) and mine and pid not in namespace_pids(mine):
                raise LaunchError(f"{label}: the health answer on port {port} came from "
                                  f"{describe_pid(pid)}, which is not one of ours")
            if replica.spec.service.health in ("http", "tcp", "redis") and not external \
                    and not socket_pids(listening_inodes(port), mine) and mine:
                # An answer, but our tree holds no listener on the port (yet): not ours.
                probe.last = "an answer on the port, but no process of ours listens on it"
            else:
                return body
        if time.monotonic() > deadline:
            raise LaunchError(f"{label} not healthy after {timeout:.0f} s "
                              f"({s_kind(replica)}; last: {probe.last})")
        if on_tick is not None:
            on_tick()
        time.sleep(POLL_S)


def s_kind(replica: Replica) -> str:
    s = replica.spec.service
    if s.health == "http":
        return f"GET {replica.url}{s.health_path}"
    return f"{s.health} check on port {replica.spec.port}"
