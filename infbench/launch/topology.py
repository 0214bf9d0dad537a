"""A variant's services, started in dependency order and stopped in reverse.

Each replica gets its own ports (chosen here), its own folder (the variant's own for a
one-service variant, `<service>-<i>/` beside the others otherwise), its own process group or
container, and must turn healthy - from its own process tree - before anything that depends on
it starts. `stop()` ends everything it started, last started first, and is safe to call on
every exit path (twice, or after a partial start).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from infbench.config import Service, Variant, start_order
from infbench.launch import health, proc
from infbench.launch.argv import SERVER_KINDS, fill
from infbench.launch.base import Launcher, LaunchError, Replica, check_allocator_loaded
from infbench.launch.contract import ReplicaSpec, peer_values
from infbench.launch.external import ExternalReplica, url_port
from infbench.paths import HOST, ROOT
from infbench.results import files


def free_ports(n: int, host: str = HOST) -> list[int]:
    """n distinct free ports. They are released before the server binds them, so another
    process can still take one: health.wait_healthy checks who listens before trusting it."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def replica_dir(variant_dir: Path, v: Variant, service: Service, replica: int) -> Path:
    return variant_dir if v.single else variant_dir / f"{service.name}-{replica}"


@dataclass
class Topology:
    variant: Variant
    launcher: Launcher
    out_dir: Path
    model_path: Path | None
    sample_interval: float
    run_id: str
    max_images: int
    max_body_bytes: int
    mark: Callable[[str, dict[str, Any]], None] = lambda _k, _d: None
    replicas: list[Replica] = field(default_factory=list)
    healthy: dict[str, dict[str, Any]] = field(default_factory=dict)
    peers: dict[str, str] = field(default_factory=dict)
    peer_env: dict[str, str] = field(default_factory=dict)
    stopped: bool = False

    def start(self, on_tick: Callable[[str], None] | None = None) -> None:
        for service in start_order(f"variants.{self.variant.name}", self.variant):
            started = []
            for i in range(service.replicas):
                if SERVER_KINDS[service.server].external:
                    ports = {service.ports[0]: url_port(service.url)}
                else:
                    ports = dict(zip(service.ports, free_ports(len(service.ports)),
                                     strict=True))
                out = replica_dir(self.out_dir, self.variant, service, i)
                files.mkdir(out)
                spec = ReplicaSpec(
                    variant=self.variant, service=service, replica=i, ports=ports, out_dir=out,
                    model_path=self.model_path if service.gets_model else None,
                    sample_interval=self.sample_interval, run_id=self.run_id,
                    max_images=self.max_images, max_body_bytes=self.max_body_bytes,
                    peers=dict(self.peers), peer_env=dict(self.peer_env))
                replica: Replica = ExternalReplica(spec) \
                    if SERVER_KINDS[service.server].external else self.launcher.start(spec)
                self.replicas.append(replica)
                started.append(replica)
                self.mark("start", {"replica": spec.label, "service": service.name,
                                    "index": i, "ports": ports, "url": spec.url})
            for replica in started:
                label = replica.spec.label
                if service.once:
                    self._finish_task(replica)
                    continue
                t0 = time.monotonic()

                def tick(lb: str = label, t: float = t0) -> None:
                    if on_tick is not None:
                        on_tick(f"starting {lb} ({time.monotonic() - t:.0f} s)")

                try:
                    body = health.wait_healthy(replica, service.startup_timeout, on_tick=tick)
                except LaunchError as e:
                    raise LaunchError(f"{e}\n--- tail of {replica.log_path} ---\n"
                                      f"{proc.tail(replica.log_path)}") from None
                check_allocator_loaded(replica)
                self.healthy[label] = body
                self.mark("healthy", {"replica": label, "health": body,
                                      "pids": [p.pid for p in replica.processes()]})
            if service.replicas == 1:
                values, env = peer_values(service, started[0].spec.ports)
                self.peers.update(values)
                self.peer_env.update(env)

    def load_settings(self) -> dict[str, Any]:
        """The variant's own Locust file and its environment, placeholders filled."""
        out: dict[str, Any] = {}
        if self.variant.locustfile:
            out["locustfile"] = ROOT / self.variant.locustfile
        if self.variant.load_env:
            out["extra_env"] = {k: fill(v, self.peers) for k, v in self.variant.load_env.items()}
        return out

    @property
    def entry(self) -> Replica:
        for r in self.replicas:
            if r.spec.service.name == self.variant.entry:
                return r
        raise LaunchError(f"entry service {self.variant.entry!r} is not running")

    def processes(self) -> list[tuple[psutil.Process, str, int]]:
        out = []
        for r in self.replicas:
            with contextlib.suppress(psutil.Error):
                out += [(p, r.spec.service.name, r.spec.replica) for p in r.processes()]
        return out

    def dead(self) -> list[Replica]:
        """Replicas that ended (a setup task that finished is not one)."""
        return [r for r in self.replicas if not r.spec.service.once and not r.alive()]

    def _finish_task(self, replica: Replica) -> None:
        """A setup task (once = true) runs to its end; anything but exit 0 stops the run."""
        label = replica.spec.label
        deadline = time.monotonic() + replica.spec.service.startup_timeout
        code = None
        while code is None and time.monotonic() < deadline:
            code = replica.exit_code(wait=0.5)
            if code is None and not replica.alive():
                code = replica.exit_code(wait=5.0)
        if code != 0:
            why = "did not finish" if code is None else f"exited {code}"
            raise LaunchError(f"setup task {label} {why} within "
                              f"{replica.spec.service.startup_timeout:.0f} s\n--- tail of "
                              f"{replica.log_path} ---\n{proc.tail(replica.log_path)}")
        self.mark("done", {"replica": label, "exit_code": code,
                           "output": proc.tail(replica.log_path, 3)})

    def stop(self) -> None:
        """Everything started, in reverse order; safe to call again."""
        for replica in reversed(self.replicas):
            if getattr(replica, "_stopped", False):
                continue
            replica.stop()
            with contextlib.suppress(AttributeError):
                replica._stopped = True  # type: ignore[attr-defined]
            self.mark("stop", {"replica": replica.spec.label, "exit_code": replica.exit_code()})
        self.stopped = True
