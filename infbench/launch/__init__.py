"""Launchers: how a service replica is started and stopped - a local process group (native) or
a container (docker). Everything above them is the same code path for both runtimes.

    argv.py      the known servers as data: a service's command line, mprof's
    contract.py  what a replica is told (placeholders, environment): one copy for both runtimes
    base.py      LaunchError, the Replica/Launcher protocols, the watched process group
    native.py    the native runtime
    external.py  a server the harness does not start (server = "url"): its url and health
    docker/      the Docker runtime: engine, image, container, cgroup memory
"""

from __future__ import annotations

from infbench.launch.base import Launcher, LaunchError, Replica
from infbench.launch.native import NativeLauncher

RUNTIMES = ("native", "docker")
LAUNCHERS: dict[str, Launcher] = {"native": NativeLauncher()}

__all__ = ["LAUNCHERS", "RUNTIMES", "LaunchError", "Launcher", "Replica", "get_launcher"]


def get_launcher(runtime: str) -> Launcher:
    """The launcher of a runtime, checked (e.g. that a Docker engine answers): a one-line
    LaunchError before anything starts."""
    if runtime == "docker" and runtime not in LAUNCHERS:
        from infbench.launch.docker import DockerLauncher

        LAUNCHERS[runtime] = DockerLauncher()
    if runtime not in LAUNCHERS:
        raise LaunchError(f"unknown runtime {runtime!r} (known: {', '.join(RUNTIMES)})")
    launcher = LAUNCHERS[runtime]
    launcher.check()
    return launcher
