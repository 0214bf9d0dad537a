"""The peers' own environments, as data: one lock file per peer under servers/peers/<name>/.

A peer serving stack (MLServer, BentoML, Ray Serve) pins FastAPI, Starlette, Uvicorn, pydantic
and grpcio differently from ours, so none can live in `.venv`. A service names one with
`venv = "<name>"`; `{python}` in its command (and `server = "module"`'s interpreter) is then
that environment's. The names are the folders of servers/peers/ that hold a
`requirements.lock`; the launcher builds the environment from it on first use
(infbench/launch/envs.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from infbench.paths import ROOT

PEERS_SRC = ROOT / "servers" / "peers"
LOCK_NAME = "requirements.lock"
# Where the environments live: .peers/ beside .venv, unless INFBENCH_PEER_ENVS says (several
# checkouts of one machine can share one set of environments: they are keyed by the lock).
ENVS_VAR = "INFBENCH_PEER_ENVS"


def known() -> tuple[str, ...]:
    """The peer environments this checkout can build (a folder of servers/peers/ with a lock)."""
    if not PEERS_SRC.is_dir():
        return ()
    return tuple(sorted(p.parent.name for p in PEERS_SRC.glob(f"*/{LOCK_NAME}")))


def lock_file(name: str) -> Path:
    return PEERS_SRC / name / LOCK_NAME


def envs_dir() -> Path:
    raw = os.environ.get(ENVS_VAR, "").strip()
    return Path(raw).expanduser() if raw else ROOT / ".peers"


def env_dir(name: str) -> Path:
    return envs_dir() / name


def python_of(name: str) -> Path:
    """The environment's interpreter (it exists once the environment is built)."""
    return env_dir(name) / "bin" / "python"
