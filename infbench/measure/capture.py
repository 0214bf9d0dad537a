"""A packet capture of each step's loopback traffic to the variant's services (`capture = true`
in a profile, or CAPTURE=1): Debian's tcpdump, one pcap a step, and the wire view read from it.

For each step of the sweep, `tcpdump -i lo -s SNAPLEN -w wire/step-<i>.pcap -C MAX_MB` with a
filter on every port of every replica of every service (the entry and, in a topology, each
inner hop; not Redis, not setup tasks). The load starts only once tcpdump says it is
"listening on" (READY_S at most, else the step runs uncaptured and that is a fault). At the
step's end tcpdump is sent SIGTERM; its exit code and its "packets captured / received by
filter / dropped by kernel" lines are recorded in phases.json (`wire.steps`).

The size cap: tcpdump's -C starts a second file once the first holds MAX_MB millions of bytes;
a watcher sees it appear (within WATCH_S) and stops tcpdump there, the spill-over file is
removed, and the step's capture is recorded as `truncated` (when), a note said in the report:
the wire figures of that step cover its start only. A tcpdump that fails, drops packets or
leaves no file is a fault (`capture_failed`, `capture_incomplete`): never silent.

After each step the pcap is read (infbench/results/pcap.py) and summarized
(infbench/analysis/wire.py) into wire.json (infbench/results/schemas.py WIRE_SCHEMA); its
findings are notes on the run's clock (`wire_<finding>` events) and said on the console.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from infbench.analysis import wire
from infbench.config import ConfigError, Profile
from infbench.launch import proc
from infbench.results import files, pcap
from infbench.results.files import WriteError, write_json
from infbench.results.schemas import WIRE_SCHEMA

TCPDUMP = "tcpdump"
READY_S = 10.0
WATCH_S = 0.25
STOP_GRACE_S = 5.0
BUFFER_KB = 32768
DIR = "wire"
_STATS = re.compile(r"^(\d+) packets? (captured|received by filter|dropped by kernel)", re.M)


def argv(out: Path, ports: list[int], profile: Profile) -> list[str]:
    """tcpdump's command line for one step's capture (as root, -Z root: tcpdump would drop to
    its own user before opening a file of -C, which then cannot write in our folder).
--immediate-mode: without it libpcap hands packets over in blocks (up to a second late), and
those still in a block when tcpdump is stopped are lost without being counted as dropped.
-B: a 32 MB kernel buffer (libpcap's default is 2 MB, some 15 segments of 64 KB on lo), so a
burst while tcpdump waits for a core is kept, not dropped (a drop is a capture_incomplete fault)."""
    filt = "tcp and (" + " or ".join(f"port {p}" for p in sorted(ports)) + ")"
    user = ["-Z", "root"] if os.geteuid() == 0 else []
    return [TCPDUMP, "-i", "lo", "-n", "--immediate-mode", "-B", str(BUFFER_KB),
            "-s", str(profile.capture_snaplen),
            *user,
            "-C", str(profile.capture_max_mb), "-w", str(out), filt]


def preflight(tcpdump: str | None = None) -> None:
    """A ConfigError (one line) unless tcpdump is installed and may capture on lo: it is run
    for a moment on a port nothing uses, and must say it is listening."""
    exe = shutil.which(tcpdump or TCPDUMP)
    if exe is None:
        raise ConfigError("capture = true needs tcpdump, which is not installed "
                          "(make system installs it: scripts/system-packages.sh)")
    p = subprocess.Popen([exe, "-i", "lo", "-n", "-c", "1", "-w", os.devnull, "tcp port 9"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    # tcpdump says "listening on" or its error at once; a silent one is ended after READY_S.
    timer = threading.Timer(READY_S, lambda: os.killpg(p.pid, signal.SIGKILL))
    timer.start()
    try:
        assert p.stderr is not None
        first = p.stderr.readline().strip()
    finally:
        timer.cancel()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if p.stderr is not None:
            p.stderr.close()
    if "listening on" not in first:
        said = first or "no output"
        raise ConfigError(f"capture = true: tcpdump cannot capture on lo ({said}); it needs "
                          "root or CAP_NET_RAW")


def stats(text: str) -> dict[str, int]:
    """tcpdump's closing lines: captured, received by filter, dropped by kernel."""
    return {m.group(2).split()[0]: int(m.group(1)) for m in _STATS.finditer(text)}


def captured_ports(topology: Any) -> dict[int, str]:
    """Every port of every service replica the load reaches (Redis and setup tasks are not
    HTTP or gRPC and are left out)."""
    return {port: r.spec.service.name for r in topology.replicas
            if r.spec.service.server != "redis" and not r.spec.service.once
            for port in r.spec.ports.values()}


class StepCapture:
    """tcpdump for one step: started, watched for the cap, stopped."""

    def __init__(self, index: int, folder: Path, ports: list[int], profile: Profile) -> None:
        self.index = index
        self.file = folder / f"step-{index}.pcap"
        self.log = folder / f"step-{index}.log"
        self.record: dict[str, Any] = {"index": index, "file": f"{DIR}/{self.file.name}",
                                       "started": time.time(), "ready": None, "stopped": None,
                                       "exit_code": None, "truncated": None, "stats": {},
                                       "cpu_s": None, "error": None}
        self.group = proc.Group(argv(self.file, ports, profile), log_path=self.log)
        self._done = threading.Event()
        self._watch: threading.Thread | None = None

    def wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_S
        while time.monotonic() < deadline:
            if "listening on" in self._log_text():
                self.record["ready"] = time.time()
                self._watch = threading.Thread(target=self._watch_cap, daemon=True,
                                               name=f"capture-cap-{self.index}")
                self._watch.start()
                return True
            if self.group.poll() is not None:
                break
            time.sleep(0.02)
        return False

    def _log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def _spill(self) -> list[Path]:
        return sorted(self.file.parent.glob(self.file.name + "[0-9]*"))

    def _watch_cap(self) -> None:
        while not self._done.wait(WATCH_S):
            if self._spill():
                self.record["truncated"] = time.time()
                self.group.signal_group(signal.SIGTERM)
                return

    def stop(self) -> dict[str, Any]:
        self._done.set()
        with contextlib.suppress(psutil.Error):  # tcpdump's own CPU: a part of its cost
            t = psutil.Process(self.group.pid).cpu_times()
            self.record["cpu_s"] = round(t.user + t.system, 3)
        code = self.group.stop(grace=STOP_GRACE_S)
        if self._watch is not None:
            self._watch.join(timeout=2)
        self.record["stopped"] = time.time()
        self.record["exit_code"] = code
        self.record["stats"] = stats(self._log_text())
        for extra in self._spill():  # past the cap: not kept
            with contextlib.suppress(OSError):
                extra.unlink()
        return self.record


class Capture:
    """The captures of one variant's steps (its monitor: infbench/measure/monitors.py).
    `ctx`: the monitors' Context (variant, profile, topology, log, out, say)."""

    def __init__(self, ctx: Any) -> None:
        self.ctx = ctx
        self.ports = captured_ports(ctx.topology)
        self.folder = ctx.out / DIR
        files.mkdir(self.folder)
        self.current: StepCapture | None = None
        self.steps: dict[int, dict[str, Any]] = {}
        self.data: dict[str, Any] = {
            "schema": WIRE_SCHEMA, "ports": {str(p): s for p, s in sorted(self.ports.items())},
            "snaplen": ctx.profile.capture_snaplen, "max_mb": ctx.profile.capture_max_mb,
            "steps": []}
        ctx.log.data["wire"] = {"ports": self.data["ports"], "steps": []}

    def step_start(self, index: int, kind: str) -> None:
        if kind != "step" or not self.ports:
            return
        try:
            cap = StepCapture(index, self.folder, list(self.ports), self.ctx.profile)
        except OSError as e:
            self._fault("capture_failed", index, f"cannot start tcpdump: {e.strerror or e}")
            return
        if cap.wait_ready():
            self.current = cap
            return
        rec = cap.stop()
        tail = proc.tail(cap.log, 3)[-300:]
        rec["error"] = f"tcpdump was not listening within {READY_S:.0f} s: {tail}"
        self.ctx.log.data["wire"]["steps"].append(rec)
        self._fault("capture_failed", index, f"step {index}: {rec['error']}")

    def step_end(self, index: int, kind: str) -> None:
        cap, self.current = self.current, None
        if cap is None or cap.index != index:
            return
        rec = cap.stop()
        self.ctx.log.data["wire"]["steps"].append(rec)
        st = rec["stats"]
        code = rec["exit_code"]
        if code not in (0, None) or not cap.file.exists():
            self._fault("capture_failed", index, f"step {index}: tcpdump exit code {code}"
                        + ("" if cap.file.exists() else ", no capture file") + f"; see "
                        f"{DIR}/{cap.log.name}: {proc.tail(cap.log, 2)[-200:]}")
        elif "captured" not in st:
            self._fault("capture_failed", index, f"step {index}: tcpdump did not report its "
                        f"counts (see {DIR}/{cap.log.name})")
        elif st.get("dropped", 0):
            self._fault("capture_incomplete", index, f"step {index}: {st['dropped']} packets "
                        "dropped by the kernel: the wire figures miss them")
        if rec["truncated"]:
            line = (f"step {index}: the capture reached its cap ({self.ctx.profile.capture_max_mb}"
                    f" MB) {rec['truncated'] - (rec['ready'] or rec['started']):.1f} s in and "
                    "stopped: the wire figures cover the step's start only")
            self.ctx.log.event("capture_truncated", line, step=index)
            self.ctx.say(f"  NOTE {self.ctx.variant.name}: {line}")
        if cap.file.exists():
            self._summarize(index, cap.file, rec)
        self.ctx.log.save()

    def _summarize(self, index: int, path: Path, rec: dict[str, Any]) -> None:
        try:
            figures = wire.step(pcap.read(path), self.ports)
        except pcap.PcapError as e:
            self._fault("capture_failed", index, f"step {index}: {e}")
            return
        batch = next((p.get("batch") for p in reversed(self.ctx.log.data["phases"])
                      if p.get("kind") == "step" and p.get("index") == index), None)
        self.data["steps"].append({"index": index, "batch": batch, "file": rec["file"],
                                   "truncated": rec["truncated"] is not None,
                                   "dropped": rec["stats"].get("dropped"), **figures})
        try:
            write_json(self.ctx.out / "wire.json", self.data)
        except WriteError as e:
            self._fault("write_failed", index, str(e))
        for f in figures["findings"]:
            where = "" if self.ctx.variant.single else f"{f['service']}: "
            line = f"step {index}: {where}{f['detail']}"
            self.ctx.log.event(f"wire_{f['kind']}", line, step=index)
            self.ctx.say(f"  NOTE {self.ctx.variant.name}: {line}")

    def _fault(self, kind: str, index: int, detail: str) -> None:
        self.ctx.log.event(kind, detail, step=index)
        self.ctx.say(f"  {self.ctx.variant.name}: {detail}")

    def stop(self) -> None:
        """An exit path mid-step: tcpdump ended, what it wrote kept and recorded."""
        if self.current is not None:
            rec = self.current.stop()
            self.current = None
            self.ctx.log.data["wire"]["steps"].append(rec)

