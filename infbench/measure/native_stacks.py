"""Native leaks, named: which native stacks allocated what is still alive after a window, read
from outside a running process that we did not start under any tool (we know its pid).

heaptrack's attach mode is the mechanism, driven step by step from here rather than through the
`heaptrack -p` script (whose options are order-sensitive and whose exit path runs gdb, kills
and prints on its own): a FIFO, `heaptrack_interpret < FIFO | zstd > heaptrack.<pid>.zst` in a
process group of ours, then gdb attaches, dlopens libheaptrack_inject.so in the process (the
call `heaptrack_env dlopen` spells for this glibc) and calls heaptrack_inject(FIFO), which
rewrites the GOT entries of malloc, free, realloc, calloc, posix_memalign... in every loaded
object and in every object loaded later, and detaches. stop() attaches again and calls
heaptrack_stop(), which puts the GOT entries back and closes the FIFO; the interpreter writes the
file and exits. The library stays mapped (dlclose would crash a process that still holds a
pointer into it; heaptrack's own script does the same). `heaptrack_print --print-leaks
--merge-backtraces=0` lists every backtrace of what was allocated in the window and not freed
by its end, with the function and library of each frame; we merge the backtraces that share
their first STACK_DEPTH frames and keep the TOP largest.

Why heaptrack, from what was measured here (Debian 12, heaptrack 1.4.0, memray 1.20.0, gdb 13,
Python 3.11.7, 2 cores):

- What each sees. A test process allocated, after the attach: 20 x 64 KiB from a C extension
  built with gcc (malloc through its PLT), 10 x 64 KiB through libc's strdup (libc's own PLT),
  10 x 64 KiB through ctypes' `libc.malloc` (a function pointer resolved before the attach) and
  30 x 64 KiB through a `calloc` dlsym'd after it. heaptrack and `memray attach --native` both
  found exactly the first two (1.31 MB leak_block in libleaky.so, 655 KB strdup in libc.so.6)
  and neither of the last two: both attach by rewriting the GOT, so a call through a function
  pointer taken with dlsym never passes through them. That is what ctypes does, so the planted
  server's `PLANTED_NATIVE_KB` leak (ctypes malloc) is invisible to either (200 x 64 KiB sent,
  2 KB found); a real extension's or libtensorflow's malloc/new through its PLT is seen.
  tests/fixtures/planted_app.py's PLANTED_NATIVE_VIA=strdup plants the same bytes through
  libc's strdup, which is seen.
- What each needs in the process. memray's attach runs `import memray` inside the process, so
  it works only where memray is installed in the server's own environment (not an untouched
  server's); it waits for the process to call malloc or a Python API under its gdb
  breakpoints, so a process blocked in a read hung the attach until it woke; and its own
  injected thread's allocations are in the result. heaptrack needs nothing of the process but
  glibc's dynamic loader.
- Cost (benchmarks/native_stacks_overhead.py: the planted server, two keep-alive client
  threads, ABBA phases of 3-5 s, on this shared 2-core machine). start() took 0.25-0.63 s and
  stop() 0.31-0.90 s (heaptrack_stop, the interpreter's last writes and heaptrack_print) over
  10 windows; `memray attach` took 0.9 s and `memray detach` 1.0 s. Requests/s with the window
  open over without: 1.03 and 0.86 on a healthy server (the same as the noise between the two
  A phases here), 0.70 and 0.63 on one that mallocs 64 KiB a request (every malloc and free is
  a record through the FIFO; a single urllib client saw 1165 -> 491 requests/s, 0.42). So it is
  a window to open for a minute on a suspect, not a monitor for every run.

Limits: blind to calls through function pointers resolved with dlsym (above) and to memory that
is not malloc's (mmap, a pool that never returns to malloc: pymalloc's arenas are mmapped);
the frames are heaptrack's own unwinding (libunwind), symbols from the libraries' symbol tables
and debug info (a stripped library shows addresses in its name); a process without glibc, or
where ptrace is refused (kernel.yama.ptrace_scope, a container without CAP_SYS_PTRACE), cannot
be attached, and available() says so. A window pauses the process twice for the attach
(under a second each, above); a thread inside malloc while gdb calls heaptrack_stop could make
the call wait, so stop() is bounded by a timeout, after which the process is told SIGCONT.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infbench.launch import proc

TOOL = "heaptrack"
HEAPTRACK_LIB = Path("/usr/lib/heaptrack")
INJECT = HEAPTRACK_LIB / "libheaptrack_inject.so"
INTERPRET = HEAPTRACK_LIB / "libexec" / "heaptrack_interpret"
ENVCHECK = HEAPTRACK_LIB / "libexec" / "heaptrack_env"
PRINT = "heaptrack_print"
GDB = "gdb"
START_TIMEOUT_S = 12.0  # start() returns within ~15 s, whatever gdb does
STOP_TIMEOUT_S = 30.0
PRINT_TIMEOUT_S = 120.0
TOP = 10
STACK_DEPTH = 8
PRINT_LIMIT = 500  # backtraces heaptrack_print lists before we merge them by their first frames
LEAKS_TXT = "heaptrack-leaks.txt"
LOG = "heaptrack.log"
MB = 1024.0 * 1024.0

_GDB_SETUP = ["-nx", "-batch", "-iex", "set auto-solib-add off", "-iex",
              "set debuginfod enabled off", "-iex", "set auto-load off", "-iex",
              "set pagination off", "-iex", "set unwindonsignal on"]
_SIZE = re.compile(r"^([\d.]+)([KMGTP]?)B?$")
_UNITS = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}  # heaptrack's are 1000s
_ENTRY = re.compile(r"^(\S+) leaked over (\d+) calls? from:?$")


class NativeStacksError(Exception):
    """One line: why the window could not be opened or closed."""


def available() -> str | None:
    """None if a window can be opened on this machine, else a one-line reason."""
    for path, package in ((INJECT, "libheaptrack"), (INTERPRET, "libheaptrack"),
                          (ENVCHECK, "libheaptrack")):
        if not path.exists():
            return f"no {path} (apt-get install {package}; make system)"
    for exe, package in ((PRINT, "heaptrack"), (GDB, "gdb")):
        if not shutil.which(exe):
            return f"no {exe} on PATH (apt-get install {package}; make system)"
    scope = _ptrace_scope()
    if scope is not None and scope >= 3:
        return "ptrace is disabled (kernel.yama.ptrace_scope = 3)"
    if scope is not None and scope >= 1 and os.geteuid() != 0 and not _has_cap_ptrace():
        return (f"ptrace of a process that is not our child is refused "
                f"(kernel.yama.ptrace_scope = {scope}, not root, no CAP_SYS_PTRACE)")
    return None


def _ptrace_scope() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip())
    return None


def _has_cap_ptrace() -> bool:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 19))  # CAP_SYS_PTRACE
    return False


def _status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def _resume_if_stopped(pid: int) -> None:
    """A gdb that died mid-attach leaves the process detached, maybe in a group stop."""
    if _status(pid).get("State", "").startswith("T"):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGCONT)


# --- heaptrack_print's leak listing ------------------------------------------------------------

def parse_size(text: str) -> float:
    """heaptrack_print's sizes ("1.31M", "655.36K", "960B"; powers of 1000) in bytes."""
    m = _SIZE.match(text.strip())
    if not m:
        raise ValueError(f"not a heaptrack size: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


@dataclass
class Trace:
    """One backtrace of heaptrack_print's leak listing: frames innermost first."""

    bytes: float
    blocks: int
    frames: list[tuple[str, str]] = field(default_factory=list)  # (function, library)


def parse_leaks(text: str) -> list[Trace]:
    """The MEMORY LEAKS section of `heaptrack_print -l 1 -m 0`: each entry a line "<size> leaked
    over <n> calls from", then its frames, two spaces in, each a function (or an address)
    followed by "at <file>:<line>" and "in <library>" lines four spaces in. A frame without an
    "in" line (an inlined one, or the same object as the frame before) is in the previous
    frame's library."""
    traces: list[Trace] = []
    inside = False
    current: Trace | None = None
    library = "?"
    for raw in text.splitlines():
        line = raw.rstrip()
        if line == "MEMORY LEAKS":
            inside = True
            continue
        if not inside:
            continue
        if line.startswith(("total runtime:", "PEAK MEMORY", "MOST CALLS", "MOST TEMPORARY")):
            break
        entry = _ENTRY.match(line)
        if entry:
            current = Trace(parse_size(entry.group(1)), int(entry.group(2)))
            traces.append(current)
            library = "?"
            continue
        if current is None or not line.strip():
            continue
        body = line.strip()
        if body.startswith("in ") and line.startswith("    "):
            library = Path(body[3:].strip()).name
            if current.frames:
                current.frames[-1] = (current.frames[-1][0], library)
        elif body.startswith("at ") and line.startswith("    "):
            continue
        elif line.startswith("  "):
            current.frames.append((body, library))
    return traces


def top_stacks(traces: list[Trace], top: int = TOP,
               depth: int = STACK_DEPTH) -> list[dict[str, Any]]:
    """Backtraces merged by their first `depth` frames, the `top` largest by bytes alive."""
    merged: dict[tuple[tuple[str, str], ...], list[float]] = {}
    for t in traces:
        key = tuple(t.frames[:depth])
        acc = merged.setdefault(key, [0.0, 0])
        acc[0] += t.bytes
        acc[1] += t.blocks
    rows = []
    for key, (size, blocks) in sorted(merged.items(), key=lambda kv: -kv[1][0])[:top]:
        function, library = key[0] if key else ("?", "?")
        rows.append({"bytes_mb": round(size / MB, 3), "blocks": int(blocks), "library": library,
                     "function": function,
                     "stack": [f"{fn} ({lib})" for fn, lib in key]})
    return rows


# --- the window ----------------------------------------------------------------------------------

class Window:
    """heaptrack attached to `pid` from start() to stop(); its files go to `out_dir`."""

    def __init__(self, pid: int, out_dir: Path) -> None:
        self.pid = pid
        self.out_dir = Path(out_dir)
        self.data = self.out_dir / f"heaptrack.{pid}.zst"
        self._tmp: Path | None = None
        self._reader: proc.Group | None = None
        self._injected = False

    # gdb, bounded, in its own session; its output goes to the window's log
    def _gdb(self, commands: list[str], timeout: float) -> tuple[int, str]:
        argv = [GDB, *_GDB_SETUP, "-p", str(self.pid)]
        for c in commands:
            argv += ["-ex", c]
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            _resume_if_stopped(self.pid)
            self._log(out)
            raise NativeStacksError(f"gdb took over {timeout:g} s on pid {self.pid}; "
                                    "it was ended and the process resumed") from None
        self._log(out)
        _resume_if_stopped(self.pid)
        return p.returncode, out

    def _log(self, text: str) -> None:
        with contextlib.suppress(OSError), (self.out_dir / LOG).open("a") as f:
            f.write(text if text.endswith("\n") or not text else text + "\n")

    def _fifo_open_by_process(self, fifo: Path) -> bool:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{self.pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == str(fifo):
                        return True
        return False

    def _prepare(self, status: dict[str, str]) -> Path:
        """The FIFO, and our reader on it: heaptrack_interpret, compressed into out_dir."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.data.exists():
            raise OSError(f"{self.data} exists: one window per folder and pid")
        self._tmp = Path(tempfile.mkdtemp(prefix="infbench-heaptrack-"))
        fifo = self._tmp / "fifo"
        os.mkfifo(fifo, 0o600)
        uid = int(status.get("Uid", "0").split()[0] or 0)
        if uid != os.geteuid():
            os.chown(fifo, uid, -1)  # the process opens it for writing as its own user
            os.chmod(self._tmp, 0o711)
        compress = "zstd -q -c" if shutil.which("zstd") else None
        if compress is None:
            self.data = self.data.with_suffix(".gz")
            compress = "gzip -c"
        # The shell blocks in open() until the process opens the FIFO's writing end.
        script = f'"$0" < "$1" | {compress} > "$2"'
        self._reader = proc.Group(["sh", "-c", script, str(INTERPRET), str(fifo), str(self.data)],
                                  log_path=self._tmp / "interpret.log")
        return fifo

    def start(self) -> None:
        """Attach, inject heaptrack and return: allocations are tracked from now on."""
        why = available()
        if why:
            raise NativeStacksError(why)
        status = _status(self.pid)
        if not status:
            raise NativeStacksError(f"no process {self.pid}")
        if status.get("TracerPid", "0") != "0":
            raise NativeStacksError(f"pid {self.pid} is already traced by pid "
                                    f"{status['TracerPid']}")
        if self._reader is not None:
            raise NativeStacksError("this window was started already")
        try:
            dlopen = subprocess.run([str(ENVCHECK), "dlopen", str(INJECT)], capture_output=True,
                                    text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError) as e:
            raise NativeStacksError(f"heaptrack_env dlopen failed: {e}") from None
        if "(" not in dlopen:
            raise NativeStacksError(f"heaptrack_env gave no dlopen call: {dlopen!r}")
        try:
            fifo = self._prepare(status)
        except (OSError, subprocess.SubprocessError) as e:
            self._abandon()
            raise NativeStacksError(f"cannot prepare the window on pid {self.pid}: {e}") from None
        started = time.monotonic()
        try:
            self._injected = True  # from here on, undo it if it got in (_abandon looks first)
            rc, out = self._gdb(["sharedlibrary libc.so", f"call (void *) {dlopen}",
                                 "sharedlibrary libheaptrack_inject",
                                 f'call (void) heaptrack_inject("{fifo}")', "detach"],
                                START_TIMEOUT_S)
            if not self._fifo_open_by_process(fifo):
                deadline = started + START_TIMEOUT_S
                while time.monotonic() < deadline and not self._fifo_open_by_process(fifo):
                    if self._reader is None or self._reader.poll() is not None:
                        break
                    time.sleep(0.05)
            if not self._fifo_open_by_process(fifo):
                raise NativeStacksError(f"heaptrack was not injected into pid {self.pid}: "
                                        f"{_why(out, rc)}")
        except BaseException:
            self._abandon(timeout=max(2.0, 14.0 - (time.monotonic() - started)))
            raise

    def _injected_here(self) -> bool:
        with contextlib.suppress(OSError):
            return INJECT.name in Path(f"/proc/{self.pid}/maps").read_text()
        return False

    def _abandon(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Undo a start that failed half-way: stop the injection if it got in, end our reader."""
        if self._injected and self._injected_here():
            with contextlib.suppress(NativeStacksError, OSError):
                self._gdb(["sharedlibrary libheaptrack_inject", "call (void) heaptrack_stop()",
                           "detach"], timeout)
        self._injected = False
        if self._reader is not None:
            self._reader.stop(grace=2.0)
            self._reader = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def stop(self) -> dict[str, Any]:
        """Stop tracking, detach, and name the top stacks of what the window left alive."""
        if self._reader is None:
            raise NativeStacksError("the window was not started")
        started = time.monotonic()
        reader = self._reader
        try:
            if _status(self.pid).get("State", "Z").startswith(("Z", "X")):
                raise NativeStacksError(f"pid {self.pid} ended during the window")
            rc, out = self._gdb(["sharedlibrary libheaptrack_inject",
                                 "call (void) heaptrack_stop()", "detach"], STOP_TIMEOUT_S)
            self._injected = False
            if rc != 0 or "No symbol" in out:
                raise NativeStacksError(f"heaptrack_stop failed in pid {self.pid}: "
                                        f"{_why(out, rc)}")
            try:
                reader.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise NativeStacksError(f"heaptrack_interpret did not finish within "
                                        f"{STOP_TIMEOUT_S:g} s of heaptrack_stop") from None
            if reader.popen.returncode != 0:
                raise NativeStacksError(f"heaptrack_interpret exited {reader.popen.returncode}"
                                        f": {_tail(reader.log_path)}")
        finally:
            self._abandon()
        try:
            res = subprocess.run([PRINT, "-f", str(self.data), "--print-leaks", "1",
                                  "--print-peaks", "0", "--print-allocators", "0",
                                  "--print-temporary", "0", "--merge-backtraces", "0",
                                  "--peak-limit", str(PRINT_LIMIT)],
                                 capture_output=True, text=True, timeout=PRINT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise NativeStacksError(f"heaptrack_print took over {PRINT_TIMEOUT_S:g} s on "
                                    f"{self.data.name}") from None
        (self.out_dir / LEAKS_TXT).write_text(res.stdout)
        if res.returncode != 0 or "MEMORY LEAKS" not in res.stdout:
            raise NativeStacksError(f"heaptrack_print failed on {self.data.name}: "
                                    f"{_why(res.stderr or res.stdout, res.returncode)}")
        try:
            top = top_stacks(parse_leaks(res.stdout))
        except ValueError as e:
            raise NativeStacksError(f"{LEAKS_TXT}: {e}") from None
        files = sorted(p.name for p in (self.data, self.out_dir / LEAKS_TXT,
                                        self.out_dir / LOG) if p.exists())
        return {"tool": TOOL, "pid": self.pid, "top": top,
                "took_s": round(time.monotonic() - started, 3), "files": files}


def _why(out: str, rc: int) -> str:
    lines = [ln.strip() for ln in out.splitlines() if ln.strip()]
    for ln in lines:
        if any(k in ln for k in ("ptrace", "not permitted", "No such process", "No symbol",
                                 "Cannot", "cannot", "error")):
            return ln[:300]
    return (lines[-1][:300] if lines else f"exit status {rc}, no output")


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        if lines:
            return lines[-1][:300]
    return "no output"
