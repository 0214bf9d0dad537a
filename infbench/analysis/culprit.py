"""What leaks and where: the culprit of a leak of Python objects, from the probes' files alone.

Two sources, both from servers/shared/probes.py, summed over the processes of a variant (each
Gunicorn or Uvicorn worker writes its own lines):

- **by type**, from the heap census at each rest (`"types"`: bytes and objects per type, the
  types over the census's floor): what grew from the first rest after warm-up to the last,
  per cycle. Free: the census runs anyway. A type under the floor at the first rest counts
  from zero, so a new type's growth is overstated by at most that floor (64 KiB, 1,000
  objects).
- **by line**, from the culprit window (infbench/measure/window.py): tracemalloc traces one
  more step of load and a rest after everything is measured, and what was allocated in it and
  is still alive is grouped by the most recent frame of the server's own code (frames of the
  standard library and installed packages folded). Cheap for the verdict: the window runs
  once, after the judged cycles, and only when the census climbed (or when asked).
"""

from __future__ import annotations

import collections
from typing import Any

TOP_TYPES = 5
TOP_LINES = 5
TYPE_FLOOR_MB = 0.05  # a type that grew less a cycle is not named
LINE_FLOOR_MB = 0.05


def census_series(events: list[dict[str, Any]]) -> dict[int, dict[int, dict[str, Any]]]:
    """The census events by cycle (0, the warm-up's start, left out) and pid."""
    out: dict[int, dict[int, dict[str, Any]]] = collections.defaultdict(dict)
    for e in events:
        if e.get("event") == "census" and isinstance(e.get("cycle"), int) and e["cycle"] > 0:
            out[e["cycle"]][int(e.get("pid") or 0)] = e
    return dict(sorted(out.items()))


def _types_at(by_pid: dict[int, dict[str, Any]]) -> dict[str, tuple[float, float]]:
    summed: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    for e in by_pid.values():
        for row in e.get("types") or []:
            if isinstance(row, list) and len(row) == 3:
                summed[str(row[0])][0] += float(row[1])
                summed[str(row[0])][1] += float(row[2])
    return {k: (b, n) for k, (b, n) in summed.items()}


def type_growth(events: list[dict[str, Any]], top: int = TOP_TYPES) -> list[dict[str, Any]]:
    """The types that grew most in bytes from the first rest after warm-up to the last, per
    cycle, largest first; [] with fewer than two censuses or none by type."""
    series = list(census_series(events).values())
    if len(series) < 2 or not any(e.get("types") for e in series[-1].values()):
        return []
    first, last = _types_at(series[0]), _types_at(series[-1])
    cycles = len(series) - 1
    rows: list[dict[str, Any]] = []
    for name, (b1, n1) in last.items():
        b0, n0 = first.get(name, (0.0, 0.0))
        mb = (b1 - b0) / cycles / 1024 / 1024
        if mb >= TYPE_FLOOR_MB:
            rows.append({"type": name, "mb_per_cycle": round(mb, 3),
                         "objects_per_cycle": round((n1 - n0) / cycles),
                         "mb": round(b1 / 1024 / 1024, 2), "objects": round(n1)})
    return sorted(rows, key=lambda r: -r["mb_per_cycle"])[:top]


def _summed(rows: list[dict[str, Any]], key: Any,
            mb_field: str) -> list[tuple[Any, float, int, dict[str, Any]]]:
    """Rows of several processes summed by `key(row)`: (key, MB, blocks, the first row of that
    key), largest first, those under LINE_FLOOR_MB left out."""
    kept: dict[Any, list[Any]] = {}
    for row in rows:
        entry = kept.setdefault(key(row), [0.0, 0, row])
        entry[0] += float(row.get(mb_field) or 0)
        entry[1] += int(row.get("blocks") or 0)
    return [(k, round(mb, 2), n, first) for k, (mb, n, first)
            in sorted(kept.items(), key=lambda kv: -kv[1][0]) if mb >= LINE_FLOOR_MB]


def window(events: list[dict[str, Any]], top: int = TOP_LINES) -> dict[str, Any] | None:
    """The culprit window's lines, summed by (line, allocating line) over the processes, and
    what the window cost; None if no window was opened."""
    starts = [e for e in events if e.get("event") == "window_start"]
    ends = [e for e in events if e.get("event") == "window"]
    if not starts and not ends:
        return None
    summed = _summed([site for e in ends for site in e.get("top") or []],
                     lambda site: (str(site.get("where")), str(site.get("at"))), "kept_mb")
    lines = [{"where": w, "at": a, "kept_mb": mb, "blocks": n, "stack": first.get("stack") or []}
             for (w, a), mb, n, first in summed][:top]
    skipped = sorted({str(e["skipped"]) for e in starts if e.get("skipped")})
    return {"processes": len({e.get("pid") for e in ends}),
            "opened_in": len({e.get("pid") for e in starts if not e.get("skipped")}),
            "skipped": skipped,
            "traced_mb": round(sum(float(e.get("traced_mb") or 0) for e in ends), 2),
            "snapshot_s": max((float(e.get("took_s") or 0) for e in ends), default=None),
            "frames": max((int(e.get("frames") or 0) for e in ends), default=None),
            "lines": lines}


def _count(n: float) -> str:
    n = round(n)
    return f"{n / 1e6:+,.1f}M" if abs(n) >= 1e6 else f"{n / 1e3:+,.1f}k" if abs(n) >= 1e4 \
        else f"{n:+,}"


def type_text(row: dict[str, Any]) -> str:
    """`str` +780.0k objects, +52.1 MB a cycle"""
    return (f"`{row['type']}` {_count(row['objects_per_cycle'])} objects, "
            f"{row['mb_per_cycle']:+,.1f} MB a cycle")


def line_text(row: dict[str, Any]) -> str:
    """`handlers.py:41` 110.0 MB in 2,795 blocks (allocated in json/decoder.py:353)"""
    via = "" if row["at"] == row["where"] else f" (allocated in {row['at']})"
    return f"`{row['where']}` {row['kept_mb']:,.1f} MB in {row['blocks']:,} blocks{via}"


def native(window_info: dict[str, Any] | None, top: int = TOP_LINES) -> dict[str, Any] | None:
    """The native stacks of what heaptrack's window left alive (phases.json `window`
    `native`), summed by (function, library) over processes; None if no such window."""
    found = (window_info or {}).get("native")
    if not found:
        return None
    summed = _summed([row for w in found.get("windows") or [] for row in w.get("top") or []],
                     lambda row: (str(row.get("function")), str(row.get("library"))), "bytes_mb")
    stacks = [{"function": f, "library": lib, "mb": mb, "blocks": n,
               "stack": first.get("stack") or []} for (f, lib), mb, n, first in summed][:top]
    return {"tool": "heaptrack", "processes": len(found.get("windows") or []),
            "unavailable": found.get("unavailable"), "errors": found.get("errors") or [],
            "files": sorted({f for w in found.get("windows") or [] for f in w.get("files") or []}),
            "stacks": stacks}


def of(events: list[dict[str, Any]],
       window_info: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """summary.json's verdict `culprit`: {"types", "window", "native"}; None when none says
    anything."""
    types = type_growth(events)
    win = window(events)
    stacks = native(window_info)
    if not types and win is None and stacks is None:
        return None
    return {"types": types, "window": win, "native": stacks}


def top_line(culprit: dict[str, Any] | None) -> str:
    """The top culprit in one line, for the console's verdict: its line, else its type."""
    if not culprit:
        return ""
    lines = (culprit.get("window") or {}).get("lines") or []
    said = []
    if culprit.get("types"):
        t = culprit["types"][0]
        said.append(f"`{t['type']}` {t['mb_per_cycle']:+,.1f} MB a cycle")
    if lines:
        said.append(f"kept at {lines[0]['where']}")
    stacks = (culprit.get("native") or {}).get("stacks") or []
    if stacks and not said:
        said.append(f"{stacks[0]['mb']:,.1f} MB alive from {stacks[0]['function']} "
                    f"({stacks[0]['library']})")
    return ", ".join(said)


# -- allocator retention, explained -------------------------------------------------------------
EXPLAINS = 0.5  # a share of the free memory that makes a fix apply
STUDY_PREFIX = "alloc-"  # the allocator study's variants (experiments.toml, studies.allocators)


def arenas(events: list[dict[str, Any]],
           trim_freed_mb: float | None = None) -> dict[str, Any] | None:
    """Which of glibc's arenas hold the free memory at the last rest (the census's `arenas`,
    summed over processes), the threads beside them, and which fix the allocator study
    measures would apply; None where no census read them."""
    series = list(census_series(events).values())
    last = [e for e in series[-1].values() if e.get("arenas")] if series else []
    if not last:
        return None
    rows = [(int(e.get("pid") or 0), int(a[0]), float(a[1]), float(a[2]))
            for e in last for a in e["arenas"]]
    free = sum(r[3] for r in rows)
    main_free = sum(r[3] for r in rows if r[1] == 0)
    threads = sum(int(e.get("threads") or 0) for e in last)
    out: dict[str, Any] = {
        "processes": len(last), "arenas": len(rows), "threads": threads,
        "free_mb": round(free, 1), "held_mb": round(sum(r[2] for r in rows), 1),
        "main_free_mb": round(main_free, 1), "thread_arenas_free_mb": round(free - main_free, 1),
        "largest": [{"pid": p, "arena": n, "held_mb": round(h, 1), "free_mb": round(f, 1)}
                    for p, n, h, f in sorted(rows, key=lambda r: -r[3])[:3]],
    }
    fixes = []
    if free > 0 and free - main_free >= EXPLAINS * free:
        fixes.append(f"an arena cap (MALLOC_ARENA_MAX=2, variant {STUDY_PREFIX}arena2): the "
                     f"threads' arenas hold {free - main_free:.0f} of the {free:.0f} MB free")
    if trim_freed_mb is not None and free > 0 and trim_freed_mb >= EXPLAINS * free:
        fixes.append(f"malloc_trim after requests ({STUDY_PREFIX}trim-each): malloc_trim(0) "
                     f"gave back {trim_freed_mb:.0f} MB at the end")
    if free > 0:
        fixes.append(f"another allocator ({STUDY_PREFIX}jemalloc, {STUDY_PREFIX}mimalloc), "
                     "which returns freed memory to the system")
    out["fixes"] = fixes
    return out


def arenas_text(a: dict[str, Any]) -> str:
    """glibc holds 360 MB free in 9 arenas (34 threads): 40 MB in the main arena, 320 in the
    threads' (the largest: arena 3 of pid 12, 80 MB free of 120)"""
    big = a["largest"][0] if a["largest"] else None
    return (f"glibc holds {a['free_mb']:,.0f} MB free in {a['arenas']} arena(s) "
            f"({a['threads']} threads in {a['processes']} process(es)): "
            f"{a['main_free_mb']:,.0f} MB in the main arena(s), "
            f"{a['thread_arenas_free_mb']:,.0f} in the threads'"
            + (f" (the largest: arena {big['arena']} of pid {big['pid']}, {big['free_mb']:,.0f} "
               f"MB free of {big['held_mb']:,.0f})" if big else ""))
