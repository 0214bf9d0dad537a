"""The one writer of the servers' timing files: <dir>/timings-<pid>.jsonl, one JSON object a line
(and <dir>/calls-<pid>.jsonl, the model's calls: servers.shared.model's `forward`).

The queue APIs, the scoring API and the TF-Serving-compatible server write one line per request
(each study's docstring lists its fields: servers.queue.common, servers.scoring.common,
servers.tfserving); the harness reads every `timings-*.jsonl` of a service's folder
(infbench/analysis.py, infbench/profiling.py). A line is the record as given, serialised with
json.dumps(record, separators=(",", ":")), and ends with a newline.

How: append() puts the record on an in-memory list under a lock, so a request pays for a list
append; a daemon thread writes the pending lines every `flush_s` seconds, and close() (at the
app's shutdown, and at exit) writes the rest. Each write opens the file in append mode, writes
and closes it: no descriptor stays open, and the file is found again if it was removed. A record
must not be changed after append() (it is serialised later, on the writer's thread).

A forked child (a Gunicorn worker of a pre-loaded app) writes its own file: the pid is checked
on each append, so the child starts with an empty list and a thread of its own, and the lines
its parent still had pending are the parent's to write, never the child's.

Failure, the same for every server: an OSError while writing (a full disk, a folder removed or
no longer writable) drops the lines of that write and is reported once on stderr,

    infbench: cannot write timings to <path>: <error>; dropping timing lines until a write works

and the writer keeps trying at every flush; the first write that works again says so, with the
number of lines lost. A timing file never fails or slows a request, and what is kept in memory
stays bounded by one flush interval's lines. create() makes the folder and the file at once and
raises the OSError instead, for a server that would rather not start than run without them.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FLUSH_S = 1.0
SEPARATORS = (",", ":")
JOIN_TIMEOUT_S = 5.0


def timings_path(folder: Path, pid: int, stem: str = "timings") -> Path:
    """The timing file of process `pid` in `folder` (`stem`: "timings" for the per-request
    lines, "calls" for the model-call lines of servers.shared.model)."""
    return folder / f"{stem}-{pid}.jsonl"


class TimingsWriter:
    """Buffered timing lines of one process (see the module docstring); a no-op without a
    folder, so the measuring can stay on and cost nothing but its clock reads."""

    def __init__(self, folder: Path | None, flush_s: float = FLUSH_S,
                 stem: str = "timings") -> None:
        self.folder = folder
        self.flush_s = flush_s
        self.stem = stem
        self._lock = threading.Lock()  # the pending list and the process they belong to
        self._write_lock = threading.Lock()  # one write at a time: the thread's, close()'s
        self._pending: list[Mapping[str, Any]] = []
        self._pid = 0  # the process whose lines are pending and whose thread runs; 0: none yet
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = 0  # lines dropped since the last write that worked
        if folder is not None:
            atexit.register(self.close)
            os.register_at_fork(after_in_child=self._forked)

    @property
    def path(self) -> Path | None:
        """This process's file (None without a folder)."""
        return None if self.folder is None else timings_path(self.folder, os.getpid(),
                                                             self.stem)

    def create(self) -> None:
        """Make the folder and this process's (empty) file now: the OSError if they cannot be."""
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8"):
            pass

    def append(self, record: Mapping[str, Any]) -> None:
        """Queue one line; the writer's thread writes it within `flush_s`."""
        if self.folder is None:
            return
        with self._lock:
            if self._pid != os.getpid():
                self._start()
            self._pending.append(record)

    def _forked(self) -> None:
        """In a forked child: fresh locks (another thread may have held one at the fork)."""
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def _start(self) -> None:
        """This process's list and thread; called with the lock held."""
        self._pid = os.getpid()
        self._pending = []
        self._lost = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,),
                                        name="infbench-timings", daemon=True)
        self._thread.start()

    def _run(self, stop: threading.Event) -> None:
        while not stop.wait(self.flush_s):
            self.flush()

    def flush(self) -> None:
        """Write the pending lines now (the thread does, every `flush_s`)."""
        path = self.path
        if path is None:
            return
        with self._write_lock:
            with self._lock:
                if self._pid != os.getpid():
                    return  # nothing appended in this process (or only in its parent)
                pending, self._pending = self._pending, []
            if not pending:
                return
            text = "".join(json.dumps(r, separators=SEPARATORS) + "\n" for r in pending)
            try:
                with path.open("a", encoding="utf-8") as f:
                    f.write(text)
            except OSError as exc:
                if not self._lost:
                    _say(f"cannot write timings to {path}: {exc}; dropping timing lines "
                         "until a write works")
                self._lost += len(pending)
                return
            if self._lost:
                _say(f"timings to {path} are written again; {self._lost} lines were dropped")
                self._lost = 0

    def close(self) -> None:
        """Stop the thread and write what is pending (again at exit: a second call is cheap)."""
        self._stop.set()
        thread = self._thread
        if (thread is not None and self._pid == os.getpid()
                and thread is not threading.current_thread()):
            thread.join(timeout=JOIN_TIMEOUT_S)
        self.flush()


def _say(message: str) -> None:
    print(f"infbench: {message}", file=sys.stderr, flush=True)
