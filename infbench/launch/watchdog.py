"""The watchdog: ends what the harness started if the harness dies without doing it.

Started once per harness process (infbench/launch/proc.py), in a session of its own so that neither
Ctrl-C nor a closed terminal reaches it, with a pipe from the harness as its standard input.
The harness writes one line per change:

    group <pgid>        a process group it started     ungroup <pgid>        ended by the harness
    container <name>    a container it started         uncontainer <name>    removed by it
    run <run.json>      the run in progress            done                  a clean exit

When the pipe closes - the harness exited, was killed with SIGKILL, lost its terminal - every
group still registered gets SIGTERM, a grace period, then SIGKILL; every container is removed;
and a run whose run.json still says `running` is marked `interrupted`, with the reason.
Only groups and containers the harness registered are ever touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

GRACE_S = 3.0


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def end_groups(pgids: set[int], grace: float = GRACE_S) -> None:
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_alive(g) for g in pgids):
        time.sleep(0.1)
    for pgid in pgids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def remove_containers(names: set[str]) -> None:
    for name in names:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["docker", "rm", "--force", "--volumes", name], timeout=60,
                           capture_output=True, stdin=subprocess.DEVNULL)


def mark_interrupted(run_json: Path, harness_pid: int) -> None:
    try:
        info = json.loads(run_json.read_text())
    except (OSError, ValueError):
        return
    if info.get("status") != "running":
        return
    info["status"] = "interrupted"
    info["ended"] = time.time()
    info["stopped_in"] = info.get("stopped_in") or info.get("current")
    info["error"] = (f"the harness (pid {harness_pid}) died without ending the run; the "
                     "watchdog ended what it had started")
    tmp = run_json.with_name(run_json.name + ".tmp")
    with contextlib.suppress(OSError):
        tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
        os.replace(tmp, run_json)


def main(argv: list[str]) -> int:
    harness = int(argv[1]) if len(argv) > 1 else os.getppid()
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # only the pipe's end ends us
    groups: set[int] = set()
    containers: set[str] = set()
    runs: list[Path] = []
    clean = False
    for raw in sys.stdin:
        word, _, arg = raw.strip().partition(" ")
        if word == "group" and arg.isdigit():
            groups.add(int(arg))
        elif word == "ungroup" and arg.isdigit():
            groups.discard(int(arg))
        elif word == "container" and arg:
            containers.add(arg)
        elif word == "uncontainer":
            containers.discard(arg)
        elif word == "run" and arg:
            runs.append(Path(arg))
        elif word == "done":
            clean = True
    if groups:
        end_groups(groups)
    if containers:
        remove_containers(containers)
    if not clean:
        for run in runs:
            mark_interrupted(run, harness)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
