"""Server-side memory probes: the Python heap and the allocator's view, from inside the server.

Opt-in (INFBENCH_PROBE_DIR set) and cheap: a daemon thread in each server process (each
Gunicorn worker too) appends one JSON line a second to `<dir>/probes-<pid>.jsonl`. Our servers
call start_from_env(); any other Python server gets the same thread without a line changed,
from servers/inject/sitecustomize.py (the harness puts that folder first on PYTHONPATH when the
probes are on). One thread a process whoever asks first, and again in a forked child (a
Gunicorn worker), since fork keeps only the thread that forked. A file
written by a thread, not an HTTP endpoint: the load cannot starve it (an async endpoint that
runs the model on the event loop would hold up a debug route for seconds), and the harness
reads it from disk on the same clock as mprof and phases.json.

A sample line:
    {"t": unix time, "pid", "rss_mb", "threads",
     "py_blocks":   sys.getallocatedblocks() (live Python objects' memory blocks),
     "gc_counts":   gc.get_count(), "gc_collections": per generation,
     "tracemalloc_mb" / "tracemalloc_peak_mb": the Python heap as tracemalloc counts it, only
                    when tracemalloc runs (opt-in, below),
     "via":         who started the probe: "server" (start_from_env) or "hook",
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

Actions, each asked for by a file the harness creates in <dir>:
- `trim.request` (after the cooldown): each process calls malloc_trim(0) once and writes
  {"event": "trim", "rss_before_mb", "rss_after_mb", "freed_mb", ...}: what the allocator was
  holding that it could give back.
- `census-<cycle>.request` (at the end of each rest of a cycled profile, when the server is
  idle): a heap census, the Python heap in bytes. Each process walks gc.get_objects() and the
  untracked objects they reference (str, bytes, int...), sums sys.getsizeof and writes
  {"event": "census", "cycle", "py_bytes_mb", "objects", "took_s",
  "rss_before_mb", "rss_after_mb", "unsized" (objects whose size could not be read),
  "types": [[type name, bytes, objects], ...] (the types holding at least TYPE_FLOOR_BYTES or
  TYPE_FLOOR_OBJECTS, largest first: what grew, by type, from one rest to the next),
  "threads", "arenas": glibc's arenas one by one from malloc_info(0), [[number, MB held,
  MB free], ...] (None under another allocator): which arenas hold the free memory}.
  Counting by type makes the walk ~1.3 times longer (0.3 s more for ~860,000 objects here).
  `sys.getallocatedblocks()` counts one block per object whatever its size (a 64 KB bytes
  object is one block); the census sees its bytes, so a leak
  of big Python objects is named as one. It costs nothing under load (it runs only when asked,
  at a rest; the harness waits for every answer before the next cycle) but holds the idle
  process while it walks: `took_s`, 1.5-2.6 s for the ~750,000 objects of the `small`
  TensorFlow server here, ~0.05 s for a plain Starlette app, and about ten times longer while
  tracemalloc traces the walk's allocations. An untracked object reached from several holders
  is counted as a share per holder (references from it / its refcount), so no set of ids is
  kept: the walk's own lists are small and RSS moved by 0-3 MB (with a set of ids: +10 to
  +28 MB left in glibc's arenas, read as growth by the next rest). One more census, not judged
  (cycle 0), runs at `sites-base.request` (the start of the warm-up rest) so that whatever room
  it takes is taken before the verdict's reference. It does not see Python objects that only
  C code references (an extension's caches, tensors held by TensorFlow's C++), nor untracked
  ones that only the locals of a running function reference, nor memory that is not a Python
  object.
- the culprit window (the harness opens it after everything is measured, when the heap
  census climbed in every cycle, infbench/measure/window.py): `window-start.request` starts
  tracemalloc with WINDOW_FRAMES frames ({"event": "window_start", "frames"}; skipped if it
  already runs); the harness runs one more step of load and a rest; `window.request` takes a
  snapshot of what was allocated in the window and is still alive, stops tracemalloc, and
  writes {"event": "window", "traced_mb", "peak_mb", "traces", "took_s", "top": [{"where"
  (the most recent frame of the server's own code, file:line), "at" (the line that
  allocated, inside the standard library or a package: those frames are folded), "kept_mb",
  "blocks", "stack" (the server's own frames, innermost first)}]}.
- tracemalloc, where the leak is: opt-in, since it costs. INFBENCH_TRACEMALLOC:
    unset, "" or "0"   never started by the probes (the default; if the server runs
                       tracemalloc itself, its total is still sampled);
    "N" (N >= 1)       from start-up, N frames (`tracemalloc = true` sets "1"): traced from
                       the first import, a TensorFlow server started several times slower and
                       held ~150 MB more;
    "after-warm-up[:N]"  from the end of warm-up, N frames (default 1): cheaper to start, but
                       still about half the throughput of a TensorFlow server while it traces
                       (ABBA, see the README).
  With it on, `sites-base.request` (at the start of the warm-up rest) starts it or clears its
  traces ("tracemalloc_mb" stays continuous: the cleared amount is added,
  "tracemalloc_cleared_mb"), so that it traces only what is allocated after warm-up; and
  `sites.request` (after the final trim, when nothing more is measured) sums the live traces
  by allocation site (file:line): {"event": "sites", "top": [{"where", "kept_mb", "blocks"}]}.
  Without it both are ignored (but for the census at `sites-base.request`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import json
import os
import sys
import sysconfig
import threading
import time
import tracemalloc
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

MB = 1024.0 * 1024.0
ALLOCATORS = (("jemalloc", "libjemalloc"), ("mimalloc", "libmimalloc"),
              ("tcmalloc", "libtcmalloc"))
TRIM_REQUEST = "trim.request"
SITES_BASE_REQUEST = "sites-base.request"
SITES_REQUEST = "sites.request"
CENSUS_REQUEST = "census-{cycle}.request"
WINDOW_START_REQUEST = "window-start.request"
WINDOW_REQUEST = "window.request"
WINDOW_FRAMES = 32  # deep enough to climb out of a framework to the user's own line
TOP_WINDOW = 10
THREAD_NAME = "infbench-probe"
TOP_SITES = 10


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _libc() -> Any:
    # glibc's soname first: ctypes.util.find_library runs `ldconfig -p` in a child process,
    # a process the server would start mid-run for nothing.
    with contextlib.suppress(OSError):
        return ctypes.CDLL("libc.so.6")
    name = ctypes.util.find_library("c")  # not glibc: ask the linker's cache
    with contextlib.suppress(OSError, TypeError):
        return ctypes.CDLL(name)
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


def malloc_arenas(libc: Any) -> list[list[float]] | None:
    """glibc's arenas one by one, from malloc_info(0) into a memory stream: [[arena number,
    MB held from the system, MB free in it (fast bins + the rest)], ...] (arena 0 is the main
    one, the others the threads'); None where it cannot be read."""
    if libc is None or not hasattr(libc, "malloc_info") or not hasattr(libc, "open_memstream"):
        return None
    if libc.malloc_info.argtypes is None:  # the prototypes, once a process
        libc.open_memstream.restype = ctypes.c_void_p
        libc.open_memstream.argtypes = [ctypes.POINTER(ctypes.c_char_p),
                                        ctypes.POINTER(ctypes.c_size_t)]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        libc.free.argtypes = [ctypes.c_void_p]
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    if not stream:
        return None
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    try:
        root = ET.fromstring(ctypes.string_at(buf, size.value).decode(errors="replace"))
    except ET.ParseError:
        return None
    finally:
        libc.free(buf)
    out = []
    for heap in root.findall("heap"):
        totals = {t.get("type"): int(t.get("size", "0")) for t in heap.findall("total")}
        held = {t.get("type"): int(t.get("size", "0")) for t in heap.findall("system")}
        out.append([int(heap.get("nr", "0")), round(held.get("current", 0) / MB, 3),
                    round((totals.get("fast", 0) + totals.get("rest", 0)) / MB, 3)])
    return out


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


def tracemalloc_mode(value: str) -> tuple[str, int]:
    """INFBENCH_TRACEMALLOC as (when, frames): ("off", 0), ("start-up", N) or
    ("after-warm-up", N); anything else is off (a probe must not fail a server)."""
    value = value.strip().lower()
    if value.isdigit() and int(value) > 0:
        return "start-up", int(value)
    head, _, frames = value.partition(":")
    if head == "after-warm-up":
        return "after-warm-up", int(frames) if frames.isdigit() and int(frames) > 0 else 1
    return "off", 0


# Objects whose size could not be read in the current census (a __sizeof__ of someone's class
# that raises): skipped, and counted so the census line says how many ("unsized").
_unsized = [0]
# A census's types: those holding at least TYPE_FLOOR_BYTES or TYPE_FLOOR_OBJECTS are written
# (at most TOP_TYPES, by bytes), so that a type that grows is in every census after warm-up.
TYPE_FLOOR_BYTES = 64 * 1024
TYPE_FLOOR_OBJECTS = 1000
TOP_TYPES = 300


def _size(o: Any) -> int:
    try:
        return sys.getsizeof(o)
    except Exception:
        _unsized[0] += 1
        return 0


def _tally(o: Any, by_type: dict[type, list[float]], weight: float = 1.0) -> float:
    """The bytes of `o` (counted `weight` times), added by type into `by_type` ([bytes,
    objects])."""
    size = _size(o) * weight
    entry = by_type.get(type(o))
    if entry is None:
        by_type[type(o)] = [size, weight]
    else:
        entry[0] += size
        entry[1] += weight
    return size


def type_name(t: type) -> str:
    """`str`, `collections.OrderedDict`, `myapp.handlers.Session`."""
    module = getattr(t, "__module__", "") or ""
    name = getattr(t, "__qualname__", None) or t.__name__
    return name if module == "builtins" else f"{module}.{name}"


def top_types(by_type: dict[type, list[float]]) -> list[list[Any]]:
    """[[type name, bytes, objects]] of the types over either floor, largest first (two
    classes of one name, from two modules' reloads, are summed)."""
    named: dict[str, list[float]] = {}
    for t, (size, count) in by_type.items():
        entry = named.setdefault(type_name(t), [0.0, 0.0])
        entry[0] += size
        entry[1] += count
    kept = [[n, round(b), round(c)] for n, (b, c) in named.items()
            if b >= TYPE_FLOOR_BYTES or c >= TYPE_FLOOR_OBJECTS]
    return sorted(kept, key=lambda row: -row[1])[:TOP_TYPES]


def heap_census(chunk: int = 4096,
                by_type: dict[type, list[float]] | None = None) -> tuple[int, int]:
    """The bytes and the number of the Python objects the garbage collector can reach: every
    object it tracks (containers, instances, functions...) and every untracked one (str,
    bytes, int, float, a tuple or dict of those) such an object references, directly or
    through other untracked ones, by sys.getsizeof (which includes the data of a bytes, a str
    or a NumPy array that owns it); with `by_type`, also by type ({type: [bytes, objects]}).

    An untracked object counts, for each tracked object that references it, as a share of
    itself: references from that holder / all its references (its refcount). The shares add
    up to the object once when the census meets every holder, with no set of every id to
    remember (that set, tens of MB in a TensorFlow server, was memory the census left in
    glibc's arenas). Not seen, or seen in part: objects (or references) only C code holds,
    and the locals of functions still running (a running frame does not show them to the
    collector; a container it holds is tracked)."""
    tracked = gc.get_objects()
    types: dict[type, list[float]] = {} if by_type is None else by_type
    total = objects = 0.0
    for i in range(0, len(tracked), chunk):
        part = tracked[i:i + chunk]
        total += sum(_tally(o, types) for o in part)
        objects += len(part)
        # A chunk at a time (one C call each): the temporary lists stay small.
        stack: list[tuple[list[Any], float]] = [(gc.get_referents(*part), 1.0)]
        del part
        while stack:
            refs, weight = stack.pop()
            size, count = _shares(refs, weight, stack, types)
            total += size
            objects += count
    return round(total), round(objects)


def _shares(refs: list[Any], weight: float, stack: list[tuple[list[Any], float]],
            by_type: dict[type, list[float]]) -> tuple[float, float]:
    """The untracked objects among `refs` (the referents of some objects met with `weight`),
    each counted as the share of its references that `refs` holds; an untracked tuple or
    dict's own referents go on the stack with its share."""
    seen: dict[int, int] = {}
    distinct = []
    for o in refs:
        if not gc.is_tracked(o):
            k = id(o)
            if k in seen:
                seen[k] += 1
            else:
                seen[k] = 1
                distinct.append(o)
    total = objects = 0.0
    for o in distinct:
        held = seen[id(o)]
        # sys.getrefcount here counts `refs` (held), `distinct`, the loop variable, the call.
        share = weight * held / max(held, sys.getrefcount(o) - held - 3)
        total += _tally(o, by_type, share)
        objects += share
        if type(o) is tuple or type(o) is dict:
            stack.append((gc.get_referents(o), share))
    return total, objects


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if paths.get(k)}
    return tuple(sorted(os.path.join(r, "") for r in roots))


LIBRARY_ROOTS = _library_roots()


def is_library(filename: str) -> bool:
    """A frame of the standard library or of an installed package (folded in a culprit's
    stack), not of the server's own code."""
    return filename.startswith("<frozen") or filename.startswith(LIBRARY_ROOTS) \
        or "/site-packages/" in filename or "/dist-packages/" in filename


def short_path(filename: str) -> str:
    """A frame's file as a user reads it: inside the standard library or a package, from its
    root (`json/decoder.py`, `numpy/_core/numeric.py`); under the working folder, from there
    (`myapp/handlers.py`); else its last three parts."""
    for root in LIBRARY_ROOTS:
        if filename.startswith(root):
            inner = filename[len(root):]
            if not inner.startswith(("site-packages/", "dist-packages/")):
                return inner
    for marker in ("/site-packages/", "/dist-packages/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    with contextlib.suppress(ValueError, OSError):
        cwd = os.path.join(os.getcwd(), "")
        if filename.startswith(cwd):
            return filename[len(cwd):]
    return "/".join(Path(filename).parts[-3:])


def culprit_sites(snapshot: tracemalloc.Snapshot, top: int = TOP_WINDOW) -> list[dict[str, Any]]:
    """What a snapshot holds, by the allocating line of the server's own code: for each trace
    the most recent frame outside the standard library and installed packages (those frames
    are folded: `at` is the line that allocated, inside them), largest first."""
    grouped: dict[tuple[str, str], list[Any]] = {}
    for st in snapshot.statistics("traceback"):
        frames = list(st.traceback)  # oldest first
        if not frames:
            continue
        mine = [f for f in frames if not is_library(f.filename)]
        innermost = frames[-1]
        user = mine[-1] if mine else innermost
        where = f"{short_path(user.filename)}:{user.lineno}"
        at = f"{short_path(innermost.filename)}:{innermost.lineno}"
        entry = grouped.setdefault((where, at), [0, 0, None])
        entry[0] += st.size
        entry[1] += st.count
        if entry[2] is None:  # the server's own frames, innermost first, each line once
            stack: list[str] = []
            for f in reversed(mine):
                line = f"{short_path(f.filename)}:{f.lineno}"
                if line not in stack:
                    stack.append(line)
            entry[2] = stack[:6]
    rows = sorted(grouped.items(), key=lambda kv: -kv[1][0])[:top]
    return [{"where": w, "at": a, "kept_mb": round(b / MB, 3), "blocks": n,
             "stack": stack or []} for (w, a), (b, n, stack) in rows]


class MemoryProbe:
    """The sampling thread of one server process."""

    def __init__(self, out_dir: Path, interval: float = 1.0, via: str = "server",
                 tracemalloc: tuple[str, int] = ("off", 0)) -> None:
        self.dir = out_dir
        self.via = via
        self.tracemalloc = tracemalloc
        self.interval = interval
        self.pid = os.getpid()
        self.path = out_dir / f"probes-{self.pid}.jsonl"
        self._last_error = ""
        self.libc = _libc()
        self.allocator = loaded_allocator()
        self.has_mallinfo2 = self.libc is not None and hasattr(self.libc, "mallinfo2")
        if self.has_mallinfo2:
            self.libc.mallinfo2.restype = _MallInfo2
        if self.allocator == "glibc":
            # Once now: what the first read leaves for good (ctypes prototypes, the XML
            # parser's caches) is then there before any census, not growth between two.
            malloc_arenas(self.libc)
        self.trimmed = False
        self._stop = threading.Event()
        self.cleared_mb = 0.0  # traced memory when the traces were cleared (after warm-up)
        self.based = self.sited = False
        # The culprit window: None (not asked yet), "open" (tracing for the harness), "done";
        # a process that starts after it was asked (a restarted worker) does not take part.
        self.window: str | None = "done" if (out_dir / WINDOW_START_REQUEST).exists() else None
        # Census requests already there when the probe starts (a worker forked or restarted
        # mid-run) are past rests: not answered.
        self.censused = set(self._census_requests())

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
            "via": self.via,
        }
        if tracemalloc.is_tracing() and self.window != "open":  # the window's is not sampled
            current, peak = tracemalloc.get_traced_memory()
            row["tracemalloc_mb"] = round(current / MB + self.cleared_mb, 3)
            row["tracemalloc_peak_mb"] = round(peak / MB + self.cleared_mb, 3)
            if self.cleared_mb:
                row["tracemalloc_cleared_mb"] = round(self.cleared_mb, 3)
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

    def sites_base(self) -> dict[str, Any]:
        """From now on trace only what is allocated after warm-up."""
        row = {"t": round(time.time(), 3), "pid": self.pid, "event": "sites_base"}
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.tracemalloc[1])
            return {**row, "started": True}
        before = tracemalloc.get_traced_memory()[0] / MB
        tracemalloc.clear_traces()
        self.cleared_mb += before
        return {**row, "cleared_mb": round(before, 3)}

    def sites(self) -> dict[str, Any]:
        """Live Python memory allocated since the base, by allocation site, largest first."""
        kept: dict[str, tuple[int, int]] = {}
        for st in tracemalloc.take_snapshot().statistics("lineno"):
            frame = st.traceback[0]
            where = "/".join(Path(frame.filename).parts[-3:]) + f":{frame.lineno}"
            size, count = kept.get(where, (0, 0))
            kept[where] = (size + st.size, count + st.count)
        top = sorted(kept.items(), key=lambda kv: -kv[1][0])[:TOP_SITES]
        return {"t": round(time.time(), 3), "pid": self.pid, "event": "sites",
                "based": self.based,
                "top": [{"where": w, "kept_mb": round(sz / MB, 3), "blocks": n}
                        for w, (sz, n) in top]}

    def window_start(self) -> dict[str, Any]:
        """The culprit window opens: trace, with WINDOW_FRAMES frames, what is allocated from
        now on (unless tracemalloc already runs: its traces are the server's own business)."""
        row = {"t": round(time.time(), 3), "pid": self.pid, "event": "window_start"}
        if tracemalloc.is_tracing():
            self.window = "done"
            return {**row, "skipped": "tracemalloc was already running"}
        tracemalloc.start(WINDOW_FRAMES)
        self.window = "open"
        return {**row, "frames": WINDOW_FRAMES}

    def window_end(self) -> dict[str, Any]:
        """The culprit window closes: what was allocated in it and is still alive, by the
        server's own line, then tracemalloc stops (its tables are freed)."""
        t0 = time.monotonic()
        traced, peak = tracemalloc.get_traced_memory()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            (tracemalloc.Filter(False, tracemalloc.__file__),
             tracemalloc.Filter(False, __file__)))
        tracemalloc.stop()
        self.window = "done"
        top = culprit_sites(snapshot)
        traces = len(snapshot.traces)
        del snapshot
        return {"t": round(time.time(), 3), "pid": self.pid, "event": "window",
                "frames": WINDOW_FRAMES, "traced_mb": round(traced / MB, 3),
                "peak_mb": round(peak / MB, 3), "traces": traces,
                "took_s": round(time.monotonic() - t0, 3), "top": top}

    def _window(self, f: Any) -> None:
        if self.window is None and (self.dir / WINDOW_START_REQUEST).exists():
            f.write(json.dumps(self.window_start()) + "\n")
        elif self.window == "open" and (self.dir / WINDOW_REQUEST).exists():
            f.write(json.dumps(self.window_end()) + "\n")

    def _census_requests(self) -> list[int]:
        cycles = []
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.dir):
                head, _, tail = entry.name.partition("-")
                number = tail.removesuffix(".request")
                if head == "census" and tail.endswith(".request") and number.isdigit():
                    cycles.append(int(number))
        return sorted(cycles)

    def census(self, cycle: int) -> dict[str, Any]:
        """The Python heap in bytes, at a rest (see the module's docstring)."""
        before, _ = _rss_threads()
        t0 = time.monotonic()
        _unsized[0] = 0
        by_type: dict[type, list[float]] = {}
        size, objects = heap_census(by_type=by_type)
        types = top_types(by_type)
        del by_type
        took = time.monotonic() - t0
        after, threads = _rss_threads()
        arenas = malloc_arenas(self.libc) if self.allocator == "glibc" else None
        return {"t": round(time.time(), 3), "pid": self.pid, "event": "census", "cycle": cycle,
                "py_bytes_mb": round(size / MB, 3), "objects": objects,
                "took_s": round(took, 3), "rss_before_mb": round(before, 2),
                "rss_after_mb": round(after, 2), "unsized": _unsized[0], "types": types,
                "threads": threads, "arenas": arenas}

    def _requests(self, f: Any) -> None:
        for cycle in self._census_requests():
            if cycle not in self.censused:
                self.censused.add(cycle)
                f.write(json.dumps(self.census(cycle)) + "\n")
        if not self.based and (self.dir / SITES_BASE_REQUEST).exists():
            self.based = True
            # A census at the start of the warm-up rest too (cycle 0, not judged), so that the
            # room its temporary lists take in the allocator is taken before the rest whose
            # end is the verdict's reference, not counted as growth in the next cycle.
            if self.tracemalloc[0] != "off":
                f.write(json.dumps(self.sites_base()) + "\n")
            f.write(json.dumps(self.census(0)) + "\n")
        if self.tracemalloc[0] == "off":
            return
        if not self.sited and tracemalloc.is_tracing() and (self.dir / SITES_REQUEST).exists():
            self.sited = True
            f.write(json.dumps(self.sites()) + "\n")

    def run(self) -> None:
        with self.path.open("a") as f:
            while not self._stop.is_set():
                tick = time.monotonic()
                try:  # a probe must never take a server down, and never fail unsaid
                    f.write(json.dumps(self.sample()) + "\n")
                    if not self.trimmed and (self.dir / TRIM_REQUEST).exists():
                        self.trimmed = True
                        f.write(json.dumps(self.trim()) + "\n")
                    self._requests(f)
                    self._window(f)
                    f.flush()
                except Exception as e:
                    said = f"{type(e).__name__}: {e}"
                    if said != self._last_error:  # once per kind, not once a second
                        self._last_error = said
                        with contextlib.suppress(OSError, ValueError):
                            f.write(json.dumps({"t": round(time.time(), 3), "pid": self.pid,
                                                "event": "error", "error": said}) + "\n")
                            f.flush()
                        print(f"infbench probe {self.pid}: {said}", file=sys.stderr, flush=True)
                self._stop.wait(max(0.05, self.interval - (time.monotonic() - tick)))

    def start(self) -> MemoryProbe:
        t = threading.Thread(target=self.run, name=THREAD_NAME, daemon=True)
        t.infbench_probe = self  # type: ignore[attr-defined]
        t.start()
        return self

    def stop(self) -> None:
        self._stop.set()


def running() -> MemoryProbe | None:
    """The probe of this process, if one runs: by its thread, so that a second copy of this
    module (the hook loads it under another name) finds the first one's."""
    for t in threading.enumerate():
        probe = getattr(t, "infbench_probe", None)
        if t.name == THREAD_NAME and probe is not None and t.is_alive() \
                and not probe._stop.is_set():
            return probe  # type: ignore[no-any-return]
    return None


_FORK_HOOKED = False


def start_from_env(env: dict[str, str] | None = None, via: str = "server") -> MemoryProbe | None:
    """Start the probe if INFBENCH_PROBE_DIR names a folder (called in each server process);
    the one already running in this process if there is one."""
    global _FORK_HOOKED
    env = dict(os.environ) if env is None else env
    folder = env.get("INFBENCH_PROBE_DIR", "").strip()
    if not folder:
        return None
    if (probe := running()) is not None:
        return probe
    mode = tracemalloc_mode(env.get("INFBENCH_TRACEMALLOC", ""))
    if mode[0] == "start-up" and not tracemalloc.is_tracing():
        tracemalloc.start(mode[1])
    interval = float(env.get("INFBENCH_PROBE_INTERVAL", "1") or 1)
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    if not _FORK_HOOKED and hasattr(os, "register_at_fork"):
        # fork keeps only the forking thread: a forked worker starts its own probe. Registered
        # once a process (a forked child inherits the registration).
        _FORK_HOOKED = True
        os.register_at_fork(after_in_child=lambda: _restart(env, via))
    return MemoryProbe(out, interval, via, tracemalloc=mode).start()


def _restart(env: dict[str, str], via: str) -> None:
    with contextlib.suppress(Exception):  # never break the fork of someone else's server
        start_from_env(env, via)
