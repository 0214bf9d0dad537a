"""Did the probes start? `probes = true` on a server they cannot reach (not Python, started
with -S, a crash in the hook) would otherwise be silent: no file, no figures, a verdict that
says only "without the probes". Checked once, a few seconds after the service is healthy."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from infbench.launch.contract import PROBE_HOOK
from infbench.launch.health import namespace_pids

WAIT_S = 5.0


def _via(path: Any) -> str | None:
    with contextlib.suppress(OSError, json.JSONDecodeError, AttributeError), path.open() as f:
        via = json.loads(f.readline()).get("via")
        return str(via) if via else None
    return None


def probe_file(out_dir: Path, pid: int) -> Path | None:
    """The probe file of host process `pid`, if it wrote one: a process in a container names
    its file by the pid of its own namespace."""
    for n in sorted(namespace_pids([pid])):
        f = out_dir / f"probes-{n}.jsonl"
        if f.exists():
            return f
    return None


def check(topology: Any, healthy_at: float, wait: float = WAIT_S,
          sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Per probed replica: its server processes, which of them write probe files and who
    started them (`hook`: injected; `server`: the server's own call). Waits until every
    process has one or `wait` seconds after healthy have passed."""
    probed = [r for r in topology.replicas if r.spec.service.probes]
    out: dict[str, Any] = {}
    while True:
        out = {}
        for r in probed:
            pids: list[int] = []
            with contextlib.suppress(psutil.Error):
                pids = [p.pid for p in r.processes()]
            files = {pid: probe_file(r.spec.out_dir, pid) for pid in pids}
            started = [pid for pid, f in files.items() if f is not None]
            out[r.spec.label] = {"processes": len(pids), "probed": len(started),
                                 "via": sorted({v for v in (_via(files[p]) for p in started)
                                                if v}),
                                 "hook": PROBE_HOOK}
        if all(v["probed"] >= v["processes"] for v in out.values()) \
                or time.time() >= healthy_at + wait:
            return out
        sleep(0.5)


def warnings(found: dict[str, Any]) -> list[str]:
    """One line per replica where no process started the probes."""
    return [f"{label}: probes = true, but none of its {v['processes']} process(es) started "
            f"them within {WAIT_S:g} s (not a Python server, or Python started with -S/-I?); "
            "its verdict has only what can be read from outside"
            for label, v in found.items() if v["probed"] == 0]
