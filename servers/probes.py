"""Server-side memory probes: the Python heap and the allocator's view, from inside the server.

Opt-in (INFBENCH_PROBE_DIR set) and cheap: a daemon thread in each server process (each
Gunicorn worker too) appends one JSON line a second to `<dir>/probes-<pid>.jsonl`. A file
written by a thread, not an HTTP endpoint: the load cannot starve it (an async endpoint that
runs the model on the event loop would hold up a debug route for seconds), and the harness
reads it from disk on the same clock as mprof and phases.json.

A sample line:
    {"t": unix time, "pid", "rss_mb", "threads",
     "py_blocks":   sys.getallocatedblocks() (live Python objects' memory blocks),
     "gc_counts":   gc.get_count(), "gc_collections": per generation,
     "tracemalloc_mb" / "tracemalloc_peak_mb": only if INFBENCH_TRACEMALLOC=1 (it costs),
     "malloc":      glibc mallinfo2() in MB, over all arenas -- "arena" (heap memory the
                    arenas hold), "mmap" (hblkhd: chunks mmapped on their own), "in_use"
                    (uordblks: allocated from the arenas), "free" (fordblks: free memory the
                    arenas hold), "releasable" (keepcost: trimmable top) -- or null when
                    another allocator serves malloc (its numbers would be glibc's idle ones),
     "glibc_heaps": glibc's arena heaps besides the main one (64 MiB-aligned anonymous
                    mappings in /proc/self/maps: about one per thread arena, an estimate),
                    "allocator": which malloc
                    is loaded: glibc, jemalloc, mimalloc or tcmalloc (read from /proc/self/maps,
                    so an LD_PRELOAD that silently failed shows up as glibc)}

Actions: when the harness creates `<dir>/trim.request`, each process calls malloc_trim(0) once
and writes {"event": "trim", "rss_before_mb", "rss_after_mb", "freed_mb", ...}: what the
allocator was holding that it could give back.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

MB = 1024.0 * 1024.0
ALLOCATORS = (("jemalloc", "libjemalloc"), ("mimalloc", "libmimalloc"),
              ("tcmalloc", "libtcmalloc"))
TRIM_REQUEST = "trim.request"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _libc() -> Any:
    with contextlib.suppress(OSError):
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return None


def loaded_allocator(maps: str | None = None) -> str:
    """Which malloc this process has mapped: a preloaded one wins over glibc's."""
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return "unknown"
    for name, lib in ALLOCATORS:
        if lib in maps:
            return name
    return "glibc"


def count_heaps(maps: str) -> int:
    """glibc's thread arenas live in heaps: anonymous reservations of at most 64 MiB aligned
    to 64 MiB (HEAP_MAX_SIZE on 64-bit). Counted as the anonymous mappings that start on that
    alignment and are no larger; an estimate (a full arena grows a second heap)."""
    n = 0
    for line in maps.splitlines():
        parts = line.split()
        if len(parts) != 5:
            continue  # file-backed or named ([heap], [stack], ...)
        start, _, end = parts[0].partition("-")
        with contextlib.suppress(ValueError):
            lo, hi = int(start, 16), int(end, 16)
            if lo % (64 << 20) == 0 and hi - lo <= (64 << 20):
                n += 1
    return n


def _rss_threads() -> tuple[float, int]:
    rss_kb = threads = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kb / 1024.0, threads


_LIBC: Any = None


def malloc_trim() -> bool | None:
    """glibc's malloc_trim(0): give free arena memory back to the system (None: no glibc)."""
    global _LIBC
    if _LIBC is None:
        _LIBC = _libc() or False
    if not _LIBC or not hasattr(_LIBC, "malloc_trim"):
        return None
    return bool(_LIBC.malloc_trim(0))


class Probe:
    """The sampling thread of one server process."""

    def __init__(self, out_dir: Path, interval: float = 1.0) -> None:
        self.dir = out_dir
        self.interval = interval
        self.pid = os.getpid()
        self.path = out_dir / f"probes-{self.pid}.jsonl"
        self.libc = _libc()
        self.allocator = loaded_allocator()
        self.has_mallinfo2 = self.libc is not None and hasattr(self.libc, "mallinfo2")
        if self.has_mallinfo2:
            self.libc.mallinfo2.restype = _MallInfo2
        self.trimmed = False
        self._stop = threading.Event()

    def malloc(self) -> dict[str, float] | None:
        if not self.has_mallinfo2 or self.allocator != "glibc":
            return None
        m = self.libc.mallinfo2()
        return {"arena": m.arena / MB, "mmap": m.hblkhd / MB, "in_use": m.uordblks / MB,
                "free": m.fordblks / MB, "releasable": m.keepcost / MB}

    def sample(self) -> dict[str, Any]:
        rss, threads = _rss_threads()
        maps = ""
        with contextlib.suppress(OSError):
            maps = Path("/proc/self/maps").read_text()
        row: dict[str, Any] = {
            "t": round(time.time(), 3), "pid": self.pid, "rss_mb": round(rss, 2),
            "threads": threads, "py_blocks": sys.getallocatedblocks(),
            "gc_counts": list(gc.get_count()),
            "gc_collections": [g["collections"] for g in gc.get_stats()],
            "malloc": self.malloc(), "allocator": loaded_allocator(maps),
            "glibc_heaps": count_heaps(maps) if self.allocator == "glibc" else None,
        }
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            row["tracemalloc_mb"] = round(current / MB, 3)
            row["tracemalloc_peak_mb"] = round(peak / MB, 3)
        return row

    def trim(self) -> dict[str, Any]:
        before, _ = _rss_threads()
        ok = bool(self.libc.malloc_trim(0)) if self.libc is not None and hasattr(
            self.libc, "malloc_trim") else None
        after, _ = _rss_threads()
        before, after = round(before, 2), round(after, 2)
        return {"t": round(time.time(), 3), "pid": self.pid, "event": "trim",
                "allocator": self.allocator, "released": ok, "rss_before_mb": before,
                "rss_after_mb": after, "freed_mb": round(before - after, 2)}

    def run(self) -> None:
        with self.path.open("a") as f:
            while not self._stop.is_set():
                tick = time.monotonic()
                with contextlib.suppress(Exception):  # a probe must never take a server down
                    f.write(json.dumps(self.sample()) + "\n")
                    if not self.trimmed and (self.dir / TRIM_REQUEST).exists():
                        self.trimmed = True
                        f.write(json.dumps(self.trim()) + "\n")
                    f.flush()
                self._stop.wait(max(0.05, self.interval - (time.monotonic() - tick)))

    def start(self) -> Probe:
        threading.Thread(target=self.run, name="infbench-probe", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()


def start_from_env(env: dict[str, str] | None = None) -> Probe | None:
    """Start the probe if INFBENCH_PROBE_DIR names a folder (called in each server process)."""
    env = dict(os.environ) if env is None else env
    folder = env.get("INFBENCH_PROBE_DIR", "").strip()
    if not folder:
        return None
    if env.get("INFBENCH_TRACEMALLOC", "") == "1" and not tracemalloc.is_tracing():
        tracemalloc.start()
    interval = float(env.get("INFBENCH_PROBE_INTERVAL", "1") or 1)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    return Probe(out, interval).start()
