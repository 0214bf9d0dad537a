"""glibc's view of any server process, read from outside: no probe, no line of its code.

The probes (servers/shared/probes.py) read mallinfo2() from inside a Python server. A server they
cannot reach (a C++ server, a Python server started with -S or -I, or where they failed to
start) still has glibc's malloc, and glibc answers anyone who asks from inside the process: a
debugger attaches (ptrace), calls glibc in the stopped process, and detaches.

  at the end of each rest  malloc_info(0, <a memory stream>): per-arena XML whose totals are
                           the memory the arenas hold from the system, what is free in them
                           (the bins and the top chunk) and the mmapped chunks; in use is held
                           minus free, as mallinfo2's uordblks.
  at the end of the run    malloc_trim(0), with VmRSS read before and after: what glibc was
                           holding that it could give back (the last step: nothing is measured
                           after it but the trim itself).

Each row goes to `<replica folder>/outside.jsonl` with the pause the process saw (the
debugger's wall time, attach to detach: an upper bound). gdb loads the symbols of libc alone
(`set auto-solib-add off`), so the pause is about a second however many libraries the server
maps; attaching is the cost, not the calls.

It cannot work (and says why, in the row's "error"): without gdb; where ptrace is not allowed
(kernel.yama.ptrace_scope >= 1 for a non-root harness, which is not the server's parent; a
container without CAP_SYS_PTRACE); for a static binary or another libc (no libc.so mapped); for
another allocator (jemalloc, mimalloc, tcmalloc preloaded: glibc's figures would be its idle
ones). A process that is inside malloc with a lock held when the debugger stops it would make
the call wait for that lock: the read is done at rest, when the server is idle, and bounded by
a timeout.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import re
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import psutil

from infbench.measure import probecheck

MB = 1024.0 * 1024.0
GDB = "gdb"
TIMEOUT_S = 30.0
FILE = "outside.jsonl"
BEGIN, END = "@@infbench-begin@@", "@@infbench-end@@"
OTHER_ALLOCATORS = (("jemalloc", "libjemalloc"), ("mimalloc", "libmimalloc"),
                    ("tcmalloc", "libtcmalloc"))
LIBC = re.compile(r"/libc(?:-[\d.]+)?\.so")
PYTHON = re.compile(r"(?:^|/)(?:lib)?python\d")

# gdb reads its own settings only (-nx), loads no symbols but libc's, fetches nothing
# (debuginfod) and runs nothing from the inferior's files (auto-load).
_SETUP = ["-nx", "-batch", "-iex", "set auto-solib-add off", "-iex", "set debuginfod enabled off",
          "-iex", "set auto-load off", "-iex", "set pagination off",
          "-ex", r"sharedlibrary /libc[.-]", "-ex", "set print elements 0"]
# malloc_info into an open_memstream buffer that gdb prints, then frees: no file, so it works
# the same for a process in a container (another mount namespace).
_MALLOC_INFO = [
    "set $p = (char **) calloc(2, sizeof(char *))",
    "set $m = (void *) open_memstream($p, (unsigned long *) ($p + 1))",
    "call (int) malloc_info(0, $m)",
    "call (int) fclose($m)",
    f'printf "{BEGIN}%s{END}\\n", *$p',
    "call (void) free(*$p)",
    "call (void) free($p)",
]
_TRIM = ["call (int) malloc_trim(0)"]


def unavailable() -> str | None:
    """Why nothing can be read from outside on this machine, or None."""
    return None if shutil.which(GDB) else "no gdb on PATH (apt-get install gdb)"


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def allocator(maps: str) -> str:
    """glibc, another allocator preloaded, or `none` (no libc.so: static, or another libc)."""
    for name, lib in OTHER_ALLOCATORS:
        if lib in maps:
            return name
    return "glibc" if LIBC.search(maps) else "none"


def is_python(pid: int, maps: str | None = None) -> bool:
    """A Python interpreter: its executable or a mapped libpython is python3.x."""
    with contextlib.suppress(OSError):
        if PYTHON.search(Path(f"/proc/{pid}/exe").resolve().name):
            return True
    with contextlib.suppress(OSError):
        maps = _maps(pid) if maps is None else maps
        return "libpython" in maps
    return False


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return None


def parse_malloc_info(xml: str) -> dict[str, float]:
    """malloc_info's totals in MB, with mallinfo2's names: arena (held from the system by the
    arenas), free (bins + top chunks: fordblks), in_use (held - free: uordblks), mmap (chunks
    mmapped on their own: hblkhd)."""
    root = ET.fromstring(xml)
    totals = {t.get("type"): int(t.get("size", "0")) for t in root.findall("total")}
    system = {s.get("type"): int(s.get("size", "0")) for s in root.findall("system")}
    held = system.get("current", 0)
    free = totals.get("fast", 0) + totals.get("rest", 0)
    return {"arena": round(held / MB, 3), "free": round(free / MB, 3),
            "in_use": round((held - free) / MB, 3), "mmap": round(totals.get("mmap", 0) / MB, 3)}


def _gdb(pid: int, commands: list[str], timeout: float) -> tuple[str, str, float]:
    argv = [GDB, *_SETUP, "-p", str(pid)]
    for c in commands:
        argv += ["-ex", c]
    started = time.monotonic()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    return res.stdout, res.stderr, round(time.monotonic() - started, 3)


def _refusal(pid: int) -> tuple[dict[str, Any], str | None]:
    """What the row says of the process, and why it cannot be asked (None if it can)."""
    try:
        maps = _maps(pid)
    except OSError as e:
        return {}, f"cannot read /proc/{pid}/maps: {e.strerror or e}"
    alloc = allocator(maps)
    info = {"allocator": alloc, "python": is_python(pid, maps)}
    if alloc == "none":
        return info, "no libc.so mapped (a static binary or another libc): glibc is not there"
    if alloc != "glibc":
        return info, f"{alloc} serves malloc: glibc's figures would be its idle ones"
    return info, unavailable()


def _why(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "ptrace" in ln or "Operation not permitted" in ln or "No such process" in ln:
            return ln[:300]
    return (lines[-1] if lines else "gdb said nothing")[:300]


def read_malloc(pid: int, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """glibc's totals in one process, from outside; {"error": why} where it cannot."""
    row: dict[str, Any] = {"t": round(time.time(), 3), "pid": pid, "event": "malloc"}
    info, refusal = _refusal(pid)
    row.update(info)
    if refusal:
        return {**row, "error": refusal}
    try:
        out, err, pause = _gdb(pid, _MALLOC_INFO, timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"gdb took over {timeout:g} s"}
    row["pause_s"] = pause
    m = re.search(re.escape(BEGIN) + r"(.*?)" + re.escape(END), out, re.S)
    if not m:
        return {**row, "error": _why(err)}
    try:
        row["malloc"] = parse_malloc_info(m.group(1))
    except (ET.ParseError, ValueError) as e:
        return {**row, "error": f"malloc_info: {e}"}
    row["alive"] = rss_mb(pid) is not None
    return row


def trim(pid: int, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """malloc_trim(0) in one process, from outside: what its RSS lost."""
    row: dict[str, Any] = {"t": round(time.time(), 3), "pid": pid, "event": "trim",
                           "via": "gdb"}
    info, refusal = _refusal(pid)
    row.update(info)
    if refusal:
        return {**row, "error": refusal}
    before = rss_mb(pid)
    try:
        out, err, pause = _gdb(pid, _TRIM, timeout)
    except subprocess.TimeoutExpired:
        return {**row, "error": f"gdb took over {timeout:g} s"}
    after = rss_mb(pid)
    row.update({"pause_s": pause, "alive": after is not None})
    m = re.search(r"^\$1 = (-?\d+)", out, re.M)
    if not m or before is None or after is None:
        return {**row, "error": _why(err) if not m else "the process is gone"}
    row.update({"released": m.group(1) != "0", "rss_before_mb": round(before, 2),
                "rss_after_mb": round(after, 2), "freed_mb": round(before - after, 2)})
    return row


def each(pids: list[int], fn: Any) -> list[dict[str, Any]]:
    """fn over the processes at once (each pause is the process's own; the wall time is one)."""
    if not pids:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(4, len(pids))) as pool:
        return list(pool.map(fn, pids))


def append(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


class OutsideWatch:
    """The run's use of the above: at the end of each rest, glibc's totals in every server
    process the probes do not cover; at the end, malloc_trim(0) in those processes."""

    def __init__(self, topology: Any, log: Any) -> None:
        self.topology = topology
        self.log = log
        self.why_not = unavailable()
        self.rows = 0
        if self.why_not:
            log.data["outside"] = {"unavailable": self.why_not}

    def _targets(self) -> list[tuple[Path, list[int]]]:
        """Per replica folder, its server processes that write no probe file."""
        out = []
        for r in self.topology.replicas:
            with contextlib.suppress(psutil.Error):
                pids = [p.pid for p in r.processes()
                        if probecheck.probe_file(r.spec.out_dir, p.pid) is None]
                if pids:
                    out.append((r.spec.out_dir, pids))
        return out

    def _do(self, fn: Any, **fields: Any) -> list[dict[str, Any]]:
        if self.why_not:
            return []
        targets = self._targets()
        rows = each([pid for _, pids in targets for pid in pids], fn)
        by_pid = {row["pid"]: row for row in rows}
        for folder, pids in targets:
            with contextlib.suppress(OSError):
                append(folder / FILE, [{**by_pid[p], **fields} for p in pids])
        self.rows += len(rows)
        done = [r for r in rows if "error" not in r]
        summary = self.log.data.setdefault("outside", {"rows": 0, "max_pause_s": 0.0})
        summary["rows"] = self.rows
        summary["max_pause_s"] = max([summary.get("max_pause_s", 0.0)]
                                     + [r.get("pause_s", 0.0) for r in done])
        errors = sorted({r["error"] for r in rows if "error" in r})
        if errors:
            summary["errors"] = sorted(set(summary.get("errors", [])) | set(errors))
        if any(r.get("alive") is False for r in rows):
            self.log.event("outside_lost_process", "a process was gone after gdb detached")
        return rows

    def rest(self, cycle: int) -> list[dict[str, Any]]:
        return self._do(read_malloc, cycle=cycle)

    def trim(self) -> list[dict[str, Any]]:
        return self._do(trim)
