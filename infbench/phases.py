"""The phase record of one variant's run: when each baseline, step, drain, pause and cooldown
began and ended, on the same clock as mprofile.dat (Unix seconds, `time.time()`).

It is rewritten atomically after every change, so an interrupted run keeps an accurate record
of everything up to the moment it stopped.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

# Version of phases.json. 1: first version.
PHASES_SCHEMA = 1
KINDS = ("baseline", "step", "drain", "pause", "rest", "cooldown", "trim")


def write_json(path: Path, data: Any) -> None:
    """Write JSON so a reader (or a crash) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


class PhaseLog:
    def __init__(self, path: Path, variant: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {
            "schema": PHASES_SCHEMA,
            "clock": "unix seconds (time.time), the clock of mprofile.dat",
            "variant": variant,
            "status": "running",
            "stopped_in": None,
            "error": None,
            "server_start": None,
            "healthy": None,
            "server_stop": None,
            "phases": [],
        }
        self._open: dict[str, Any] | None = None
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)

    def mark(self, key: str, t: float | None = None) -> None:
        self.data[key] = time.time() if t is None else t
        self.save()

    def begin(self, kind: str, t: float | None = None, **fields: Any) -> dict[str, Any]:
        if kind not in KINDS:
            raise ValueError(f"unknown phase kind {kind!r}")
        if self._open is not None:
            self.end()
        phase: dict[str, Any] = {"kind": kind, **fields,
                                 "start": time.time() if t is None else t, "end": None}
        self.data["phases"].append(phase)
        self._open = phase
        self.save()
        return phase

    def end(self, t: float | None = None, **fields: Any) -> None:
        if self._open is None:
            return
        self._open.update(fields)
        self._open["end"] = time.time() if t is None else t
        self._open = None
        self.save()

    @property
    def current(self) -> dict[str, Any] | None:
        return self._open

    def finish(self, status: str, error: str | None = None) -> None:
        """Close the record: complete, interrupted (Ctrl-C/SIGTERM) or failed (and where)."""
        where = None
        if self._open is not None:
            where = describe(self._open)
            self._open["end"] = time.time()
            self._open["cut_short"] = True
            self._open = None
        self.data["status"] = status
        self.data["stopped_in"] = where if status != "complete" else None
        self.data["error"] = error
        self.save()


def describe(phase: dict[str, Any]) -> str:
    kind = phase.get("kind", "?")
    if kind in ("step", "drain", "pause") and "index" in phase:
        return f"{kind} {phase['index']} (batch {phase.get('batch', '?')})"
    return str(kind)


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    if data.get("schema") != PHASES_SCHEMA:
        raise ValueError(f"{path}: phases schema {data.get('schema')!r}, "
                         f"this infbench reads {PHASES_SCHEMA}")
    return data
