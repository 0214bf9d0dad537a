"""The peers' environments built: one venv per lock (infbench/config/envs.py), on first use.

Like `.venv`: created with this interpreter's `-m venv`, then `pip install --no-deps -r` the
lock (every package pinned, so pip resolves nothing and the build is the lock). A stamp inside
the environment holds the lock's hash (and the Python version); a changed lock rebuilds it
from scratch, a matching stamp is the whole check. The stamp is written last, so an
interrupted build is rebuilt, never used. Builds of one environment are serialised by a file
lock (pytest-xdist workers, two runs at once); different environments build side by side.

While a build runs, `say` gets a progress line every PROGRESS_S seconds; a failed build is one
LaunchError naming its log (the pip output, kept beside the environments).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infbench.config import envs
from infbench.launch.base import LaunchError
from infbench.launch.proc import tail

STAMP = ".infbench-lock"
PROGRESS_S = 15.0


def lock_hash(name: str) -> str:
    """What the environment is built from: the lock's bytes and the Python it runs on."""
    blob = envs.lock_file(name).read_bytes() + f"\npython {sys.version_info[:2]}".encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def log_path(name: str) -> Path:
    return envs.envs_dir() / f"{name}.log"


def ready(name: str) -> bool:
    """Built from this lock (the stamp matches) and its interpreter is there."""
    stamp = envs.env_dir(name) / STAMP
    try:
        return stamp.read_text().strip() == lock_hash(name) and envs.python_of(name).exists()
    except OSError:
        return False


def check_known(name: str) -> None:
    if name not in envs.known():
        raise LaunchError(f"unknown peer environment {name!r} (known: "
                          f"{', '.join(envs.known()) or 'none'}; one per "
                          f"servers/peers/<name>/{envs.LOCK_NAME})")


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    envs.envs_dir().mkdir(parents=True, exist_ok=True)
    with open(envs.envs_dir() / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(argv: Sequence[str], log: Path, name: str, what: str,
         say: Callable[[str], None], started: float) -> None:
    """One build step, its output appended to the log, a progress line while it runs."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        while True:
            try:
                code = proc.wait(timeout=PROGRESS_S)
                break
            except subprocess.TimeoutExpired:
                say(f"peer environment {name}: {what} ({time.monotonic() - started:.0f} s; "
                    f"log: {log})")
    if code != 0:
        raise LaunchError(f"peer environment {name!r}: {what} failed (exit {code}); see {log}"
                          f"\n--- tail of {log} ---\n{tail(log, 8)}")


def build(name: str, say: Callable[[str], None]) -> float:
    """Build the environment from its lock now (whatever is there is removed first); seconds."""
    check_known(name)
    target, log = envs.env_dir(name), log_path(name)
    digest = lock_hash(name)  # what is installed: the lock as it is now, not when it ends
    started = time.monotonic()
    shutil.rmtree(target, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"building {target} from {envs.lock_file(name)} ({digest})\n")
    say(f"peer environment {name}: building {target} from {envs.lock_file(name)} "
        f"(first time: minutes; log: {log})")
    _run([sys.executable, "-m", "venv", str(target)], log, name, "creating the venv", say,
         started)
    # --no-compile: byte-compiling every module of TensorFlow is two thirds of the install's
    # time here (180 s -> 61 s for MLServer's); a server compiles only what it imports, once.
    _run([str(envs.python_of(name)), "-m", "pip", "install", "--no-deps", "--no-compile",
          "--disable-pip-version-check", "--no-input", "-r", str(envs.lock_file(name))],
         log, name, "installing the lock", say, started)
    (target / STAMP).write_text(digest + "\n")
    took = time.monotonic() - started
    say(f"peer environment {name}: built in {took:.0f} s ({size_mb(name):.0f} MB)")
    return took


def ensure(name: str, say: Callable[[str], None]) -> Path:
    """The environment's interpreter, the environment built first if missing or stale."""
    check_known(name)
    if ready(name):
        return envs.python_of(name)
    with _locked(name):
        if not ready(name):  # another process may have built it while we waited
            build(name, say)
    return envs.python_of(name)


def ensure_all(names: Sequence[str], say: Callable[[str], None]) -> None:
    """Several environments, built side by side (each is mostly download and unpack)."""
    for name in names:
        check_known(name)
    missing = [n for n in dict.fromkeys(names) if not ready(n)]
    if not missing:
        return
    lock = threading.Lock()

    def said(line: str) -> None:
        with lock:
            say(line)

    with ThreadPoolExecutor(max_workers=len(missing)) as pool:
        futures = [pool.submit(ensure, n, said) for n in missing]
        errors = [f.exception() for f in futures]
    failed = [e for e in errors if e is not None]
    if failed:
        raise failed[0]


def size_mb(name: str) -> float:
    """The environment's size on disk (MB, files only)."""
    total = 0
    for p in envs.env_dir(name).rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
    return total / 2**20


LOCK_HEADER = """\
# The {name} peer's environment (infbench/launch/envs.py builds it with pip install --no-deps).
# Resolved on Python {python} with pip from servers/peers/{name}/requirements.in:
#   make peers-lock PEER={name}
"""


def resolve(name: str, say: Callable[[str], None]) -> Path:
    """Write the peer's lock: its requirements.in installed into a scratch venv by pip (which
    resolves), then that venv's pip freeze, every package pinned."""
    wanted = envs.lock_file(name).with_name("requirements.in")
    if not wanted.exists():
        raise LaunchError(f"peer environment {name!r}: no {wanted} to resolve")
    scratch = envs.envs_dir() / f".{name}.resolve"
    log = envs.envs_dir() / f"{name}.resolve.log"
    started = time.monotonic()
    shutil.rmtree(scratch, ignore_errors=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"resolving {wanted}\n")
    try:
        _run([sys.executable, "-m", "venv", str(scratch)], log, name, "creating a scratch venv",
             say, started)
        py = str(scratch / "bin" / "python")
        _run([py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r",
              str(wanted)], log, name, "resolving requirements.in", say, started)
        frozen = subprocess.run([py, "-m", "pip", "freeze", "--all"], capture_output=True,
                                text=True, check=True).stdout
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    pins = [line for line in frozen.splitlines()
            if line and not line.startswith(("pip==", "setuptools==", "wheel=="))]
    python = ".".join(map(str, sys.version_info[:2]))
    envs.lock_file(name).write_text(LOCK_HEADER.format(name=name, python=python)
                                    + "\n".join(pins) + "\n")
    say(f"peer environment {name}: {len(pins)} pins -> {envs.lock_file(name)} "
        f"in {time.monotonic() - started:.0f} s")
    return envs.lock_file(name)
