"""infbench/measure/procwatch.py: a new process of a service that runs one of the service's own
programs is a restarted worker (a fault); one that runs another program (ctypes' find_library
runs `/sbin/ldconfig -p`) is a helper the server ran, a note, and its exit is not a fault."""

from __future__ import annotations

import subprocess
import sys
import types
from typing import Any

import psutil
import pytest

from infbench.measure.phases import FAULTS
from infbench.measure.procwatch import ProcessWatch

pytestmark = pytest.mark.unit


class Log:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def event(self, kind: str, detail: str, **_: Any) -> None:
        self.events.append((kind, detail))


def test_a_helper_program_is_a_note_and_a_new_worker_is_a_fault() -> None:
    pids = [psutil.Process().pid]  # the service: this Python process
    replica = types.SimpleNamespace(
        spec=types.SimpleNamespace(label="server", service=types.SimpleNamespace(server="x")),
        processes=lambda: [psutil.Process(p) for p in pids], alive=lambda: True)
    log = Log()
    watch = ProcessWatch(types.SimpleNamespace(replicas=[replica]), log)  # type: ignore[arg-type]
    helper = subprocess.Popen(["sleep", "30"])
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids.append(helper.pid)
        watch.poll()
        assert [k for k, _ in log.events] == ["helper_process"]
        assert "sleep" in log.events[0][1] and "not a restarted worker" in log.events[0][1]
        pids.remove(helper.pid)
        watch.poll()  # the helper's exit: expected, nothing said
        assert len(log.events) == 1
        pids.append(worker.pid)
        watch.poll()
        assert log.events[-1][0] == "process_started" and "restarted worker" in log.events[-1][1]
        assert "process_started" in FAULTS and "helper_process" not in FAULTS
    finally:
        for p in (helper, worker):
            p.kill()
            p.wait()
