"""The Docker engine as the harness uses it: is one there, short CLI calls that cannot hang,
and long commands (builds, downloads) with one live progress line."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from infbench.launch import proc
from infbench.paths import ROOT

ENGINE_HINT = "start one with `make docker-engine` (scripts/docker-engine.sh start)"


def docker_exe() -> str | None:
    return shutil.which("docker")


def engine_problem(timeout: float = 15.0) -> str | None:
    """None if a Docker engine answers, else one line saying what is wrong."""
    exe = docker_exe()
    if exe is None:
        return "no `docker` command on PATH"
    try:
        res = subprocess.run([exe, "info", "--format", "{{.ServerVersion}}"],
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return f"`docker info` did not answer within {timeout:.0f} s"
    except OSError as e:
        return f"cannot run {exe}: {e.strerror}"
    if res.returncode == 0 and res.stdout.strip():
        return None
    lines = [ln.strip() for ln in (res.stderr + "\n" + res.stdout).splitlines() if ln.strip()]
    return (lines[0][:200] if lines else f"`docker info` exited {res.returncode}")


def docker(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """A short docker CLI call; a hung engine is an error, not a hang."""
    try:
        return subprocess.run(["docker", *args], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(["docker", *args], 124, "",
                                           f"docker {args[0]}: timed out after {timeout:.0f} s")


def image_id(ref: str) -> str | None:
    res = docker("image", "inspect", "--format", "{{.Id}}", ref)
    return (res.stdout.strip() or None) if res.returncode == 0 else None


def _fmt(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 60}:{s % 60:02d}"


def run_logged(argv: list[str], log: Path, label: str, stream: TextIO | None = None,
               env: dict[str, str] | None = None, every: float = 10.0,
               detail: Callable[[Path], str] | None = None) -> int:
    """Run a long command with its output in `log`, showing one live line (label, elapsed,
    detail); on a terminal the line rewrites itself, in a log it repeats every `every` s."""
    stream = stream or sys.stdout
    tty = bool(getattr(stream, "isatty", lambda: False)())
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    started = time.monotonic()
    last = started
    width = 0
    group = proc.Group(argv, log_path=log, env=env, cwd=ROOT)
    try:
        while group.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if tty or now - last >= every:
                last = now
                extra = detail(log) if detail else ""
                line = f"  {label} ... {_fmt(now - started)}" + (f" ({extra})" if extra else "")
                if tty:
                    stream.write("\r" + line.ljust(width))
                    width = len(line)
                else:
                    stream.write(line + "\n")
                stream.flush()
    finally:
        code = group.stop(grace=10.0)
        if tty and width:
            stream.write("\r" + " " * width + "\r")
            stream.flush()
    return code if code is not None else 1





