"""A service replica's command lines: its server's (made by the server kind's registration in
infbench/config/servers.py), and mprof's around it.

The same functions serve both runtimes; only the interpreter differs (the harness's Python
natively, the image's in a container).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from infbench.config import Service
from infbench.config.servers import GRACE_S, REDIS_BINARY, SERVER_KINDS, fill

__all__ = ["GRACE_S", "REDIS_BINARY", "SERVER_KINDS", "fill", "mprof_argv", "server_argv"]


def server_argv(service: Service, values: Mapping[str, str], python: str = sys.executable,
                out: Path | str = ".") -> list[str]:
    """`values`: the placeholders of this replica ({port}, {ports.x}, {services.y.url}, ...)."""
    kind = SERVER_KINDS.get(service.server)
    if kind is None:
        raise ValueError(f"unknown server {service.server!r}")
    return kind.argv(service, values, python, out)


def mprof_argv(out: Path | str, interval: float, program: list[str],
               python: str = sys.executable) -> list[str]:
    # --include-children sums the workers into MEM; --multiprocess also writes each child as
    # CHLD lines, so Gunicorn's workers are counted and can still be told apart; --exit-code
    # makes mprof exit with the server's own exit code.
    return [python, "-m", "mprof", "run", "--include-children", "--multiprocess", "--exit-code",
            "--interval", f"{interval:g}", "-o", str(out), *program]
