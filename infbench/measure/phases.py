"""The phase record of one variant's run: when each baseline, step, drain, pause and cooldown
began and ended, on the same clock as mprofile.dat (Unix seconds, `time.time()`).

It is rewritten atomically after every change, so an interrupted run keeps an accurate record
of everything up to the moment it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from infbench.results.files import write_json
from infbench.results.schemas import PHASE_KINDS, PHASES_SCHEMA

KINDS = PHASE_KINDS
# Events that are faults: they mark the phase they fall in `degraded` and keep the variant
# from `complete`. Other kinds are notes (shown, not held against the run).
FAULTS = ("process_exited", "process_started", "replica_died", "load_failed",
          "step_all_failed", "artifact_damaged", "write_failed", "window_unanswered",
          "native_stacks_failed", "energy_failed", "tool_failed", "metrics_failed",
          "cgroup_failed", "load_worker_died")


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
            "services": {},
            "events": [],
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

    def service(self, what: str, detail: dict[str, Any]) -> None:
        """A service replica started, turned healthy or stopped (topology.Topology.mark)."""
        entry = self.data["services"].setdefault(detail["replica"], {})
        entry.update({k: v for k, v in detail.items() if k != "replica"})
        entry[what] = time.time()
        if what == "done" and entry.get("start"):  # a setup task: a phase of its own
            self.data["phases"].append({"kind": "setup", "replica": detail["replica"],
                                        "start": entry["start"], "end": entry["done"]})
        self.save()

    def event(self, kind: str, detail: str, t: float | None = None, **fields: Any) -> None:
        """A fault or a note, on the run's clock; a fault marks the open phase degraded."""
        fault = kind in FAULTS
        ev = {"t": time.time() if t is None else t, "kind": kind, "fault": fault,
              "detail": detail, "phase": describe(self._open) if self._open else None,
              **fields}
        self.data["events"].append(ev)
        if fault and self._open is not None:
            self._open["degraded"] = True
        self.save()

    @property
    def faults(self) -> list[dict[str, Any]]:
        return [e for e in self.data["events"] if e.get("fault")]

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

