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
  "rss_before_mb", "rss_after_mb", "unsized" (objects whose size could not be read)}.
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
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

MB = 1024.0 * 1024.0
ALLOCATORS = (("jemalloc", "libjemalloc"), ("mimalloc", "libmimalloc"),
              ("tcmalloc", "libtcmalloc"))
TRIM_REQUEST = "trim.request"
SITES_BASE_REQUEST = "sites-base.request"
SITES_REQUEST = "sites.request"
CENSUS_REQUEST = "census-{cycle}.request"
THREAD_NAME = "infbench-probe"
TOP_SITES = 10


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


def _size(o: Any) -> int:
    try:
        return sys.getsizeof(o)
    except Exception:
        _unsized[0] += 1
        return 0


def _sizes(objs: list[Any]) -> int:
    try:
        return sum(map(sys.getsizeof, objs))
    except Exception:  # one object's __sizeof__ failed: size them one by one, count it
        return sum(map(_size, objs))


def heap_census(chunk: int = 4096) -> tuple[int, int]:
    """The bytes and the number of the Python objects the garbage collector can reach: every
    object it tracks (containers, instances, functions...) and every untracked one (str,
    bytes, int, float, a tuple or dict of those) such an object references, directly or
    through other untracked ones, by sys.getsizeof (which includes the data of a bytes, a str
    or a NumPy array that owns it).

    An untracked object counts, for each tracked object that references it, as a share of
    itself: references from that holder / all its references (its refcount). The shares add
    up to the object once when the census meets every holder, with no set of every id to
    remember (that set, tens of MB in a TensorFlow server, was memory the census left in
    glibc's arenas). Not seen, or seen in part: objects (or references) only C code holds,
    and the locals of functions still running (a running frame does not show them to the
    collector; a container it holds is tracked)."""
    tracked = gc.get_objects()
    total = objects = 0.0
    for i in range(0, len(tracked), chunk):
        part = tracked[i:i + chunk]
        total += _sizes(part)
        objects += len(part)
        # A chunk at a time (one C call each): the temporary lists stay small.
        stack: list[tuple[list[Any], float]] = [(gc.get_referents(*part), 1.0)]
        del part
        while stack:
            refs, weight = stack.pop()
            size, count = _shares(refs, weight, stack)
            total += size
            objects += count
    return round(total), round(objects)


def _shares(refs: list[Any], weight: float,
            stack: list[tuple[list[Any], float]]) -> tuple[float, float]:
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
        total += share * _size(o)
        objects += share
        if type(o) is tuple or type(o) is dict:
            stack.append((gc.get_referents(o), share))
    return total, objects


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
        self.trimmed = False
        self._stop = threading.Event()
        self.cleared_mb = 0.0  # traced memory when the traces were cleared (after warm-up)
        self.based = self.sited = False
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
        if tracemalloc.is_tracing():
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
        size, objects = heap_census()
        took = time.monotonic() - t0
        after, _ = _rss_threads()
        return {"t": round(time.time(), 3), "pid": self.pid, "event": "census", "cycle": cycle,
                "py_bytes_mb": round(size / MB, 3), "objects": objects,
                "took_s": round(took, 3), "rss_before_mb": round(before, 2),
                "rss_after_mb": round(after, 2), "unsized": _unsized[0]}

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
