"""The run store: which folder a run is, its run.json (with a dead harness's run marked
`interrupted`), and its variant folders in the run's order.

Reads only files (and asks the OS whether the run's harness still lives), so it works the
same on a finished run, an interrupted one, or a run copied from another machine.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psutil

from infbench.results import readers
from infbench.results.files import WriteError, write_json


class ReportError(Exception):
    """No such run, or a run.json that cannot be read: one line for the CLI."""


def resolve_run(results: Path, run: str) -> Path:
    """A run id, 'latest', or a path to a run folder."""
    candidate = Path(run)
    if candidate.is_dir() and (candidate / "run.json").exists():
        return candidate
    d = results / run
    if d.is_dir() and (d / "run.json").exists():
        return d.resolve() if run == "latest" else d
    runs = sorted(p.parent.name for p in results.glob("*/run.json")) if results.exists() else []
    hint = f" (recent: {', '.join(runs[-3:])})" if runs else ""
    raise ReportError(f"no run {run!r} under {results}{hint}")


def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json, with a run left `running` by a harness that is gone marked `interrupted`
    (and the file rewritten, so the next reader agrees)."""
    try:
        info = readers.run_json(run_dir)  # version-checked; a version 1 file is migrated
    except readers.ReadError as e:
        raise ReportError(f"run.json is damaged, unreadable or too new: {e}") from None
    if info.get("status") == "running" and not harness_alive(info.get("harness")):
        info["status"] = "interrupted"
        info["stopped_in"] = info.get("stopped_in") or info.get("current")
        info["error"] = info.get("error") or "the harness died while the run was going"
        with contextlib.suppress(OSError, WriteError):
            write_json(run_dir / "run.json", info)
    return info


def harness_alive(who: Any) -> bool:
    """Is the process that wrote this run.json still the same live process? (Version 1 files
    do not say: then assume it is, as before.)"""
    if not isinstance(who, dict) or "pid" not in who:
        return True
    try:
        p = psutil.Process(int(who["pid"]))
        return abs(p.create_time() - float(who.get("create_time", 0))) < 1.0
    except (psutil.Error, ValueError, TypeError):
        return False


def variant_dirs(run_dir: Path, info: dict[str, Any] | None = None) -> list[Path]:
    """The run's variant folders (those with a phases.json): first in the order run.json
    lists them, then any others by name. `info` is the run's run.json, read (`read_run`)
    when not given."""
    if info is None:
        info = read_run(run_dir)
    order = [run_dir / v for v in info.get("variants", [])
             if (run_dir / v / "phases.json").exists()]
    extra = sorted(p.parent for p in run_dir.glob("*/phases.json") if p.parent not in order)
    return order + extra
