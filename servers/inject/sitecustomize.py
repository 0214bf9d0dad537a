"""The memory probes in any Python server, without a line of its code changed.

With the probes on, the harness puts this folder first on the service's PYTHONPATH
(infbench/launch/contract.py), so every Python process of the service imports this module at
start-up (site.py does, before the server's own code), and each starts the probe thread of
servers/shared/probes.py: the user's server, its Gunicorn workers (a forked child restarts the
thread), a worker spawned by Uvicorn. Our own servers also call start_from_env(); one thread a
process all the same.

Not in processes that are not the server: mprof (Python too, at the head of the process
group) and multiprocessing's resource tracker. A failure here is swallowed: the probes are
ours, the process is the user's. Then whatever sitecustomize this one shadows is run, so a
site's own customisation still happens.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROBES = HERE.parent / "shared" / "probes.py"
MODULE = "_infbench_probes"
# Python processes of the tree that are not the server.
NOT_SERVERS = ("mprof", "multiprocessing.resource_tracker", "multiprocessing.forkserver")


def cmdline() -> list[str]:
    """This process's command line as exec'd: sys.argv is not complete yet at site time."""
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
    except OSError:
        return list(sys.argv)
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def is_server(argv: list[str]) -> bool:
    """False for mprof (`python -m mprof ...` or its script) and multiprocessing's helpers."""
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "-m" and i + 1 < len(argv):
            return argv[i + 1] not in NOT_SERVERS
        if arg == "-c" and i + 1 < len(argv):
            return not any(name in argv[i + 1] for name in NOT_SERVERS)
        if not arg.startswith("-"):
            return Path(arg).name not in NOT_SERVERS
    return True


def start() -> None:
    if not os.environ.get("INFBENCH_PROBE_DIR", "").strip() or not is_server(cmdline()):
        return
    spec = importlib.util.spec_from_file_location(MODULE, PROBES)
    if spec is None or spec.loader is None:
        return
    # Loaded from its file under a name of its own: the server may have a `servers` package
    # of its own, which an `import servers.shared.probes` here would shadow.
    module = sys.modules.get(MODULE) or importlib.util.module_from_spec(spec)
    if MODULE not in sys.modules:
        sys.modules[MODULE] = module
        spec.loader.exec_module(module)
    module.start_from_env(via="hook")


def chain() -> None:
    """Run the sitecustomize this one shadows, if the path has another."""
    rest = [p for p in sys.path if p and Path(p).resolve() != HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)


with contextlib.suppress(Exception):
    start()
try:
    chain()
except Exception as exc:  # the site's own sitecustomize failed: say so, as Python would
    sys.stderr.write(f"sitecustomize (the site's own, chained by infbench): {exc!r}\n")
