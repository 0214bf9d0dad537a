"""The one write path for a run's files: atomic, and an OS error becomes one line.

A full disk, a read-only folder or a file-size limit must not surface as a traceback in the
middle of a run, nor leave a half-written JSON behind: every harness write goes through here,
and a failure is a `WriteError` naming the file, which the run records (status `failed`) and
the CLI prints as one line.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


class WriteError(Exception):
    """A file of the run could not be written; the message names it and says why."""


def describe(e: OSError) -> str:
    return e.strerror or type(e).__name__


def write_text(path: Path, text: str, newline: str | None = None) -> None:
    """Write so a reader (or a crash) never sees half a file. `newline` is open()'s: None
    writes "\n" as the platform's line end, "" writes the text as it is."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline=newline) as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise WriteError(f"cannot write {path}: {describe(e)}") from None


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv(path: Path, rows: Iterable[Sequence[Any]]) -> None:
    """A CSV file (the csv module's dialect: "\r\n" line ends, quoted where needed), written
    whole like the others."""
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    write_text(path, buf.getvalue(), newline="")


def mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create folder {path}: {describe(e)}") from None


def check_writable(folder: Path) -> None:
    """Before anything starts: the results folder (or the nearest folder above it that
    exists, where it would be created) can be written to. Creates nothing."""
    at = folder
    while not at.exists() and at != at.parent:
        at = at.parent
    if not at.is_dir():
        raise WriteError(f"cannot write in {folder}: {at} is not a folder")
    if not os.access(at, os.W_OK | os.X_OK):
        raise WriteError(f"cannot write in {folder}: {at} is not writable (permission "
                         "denied)")
