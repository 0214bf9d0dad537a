"""What leaks, from the probes' lines alone: the types that grew (the census at each rest,
summed over a server's processes) and the culprit window's lines, and how each report says
them."""

from __future__ import annotations

from typing import Any

from infbench.analysis import culprit, verdict
from infbench.report import tables

MB = 1024 * 1024


def census(pid: int, cycle: int, types: list[list[Any]], mb: float = 10.0) -> dict[str, Any]:
    return {"t": 100.0 + cycle, "pid": pid, "event": "census", "cycle": cycle,
            "py_bytes_mb": mb, "objects": 1000, "types": types}


def test_types_that_grew_per_cycle_summed_over_workers() -> None:
    events = []
    for cycle in (0, 1, 2, 3):  # cycle 0 (the warm-up's start) is not compared
        for pid in (11, 12):  # two workers, each keeping 2 MB of bytes and 100 Session a cycle
            events.append(census(pid, cycle, [
                ["bytes", (5 + 2 * cycle) * MB, 1000 + 500 * cycle],
                ["app.Session", 100_000 * cycle, 100 * cycle],
                ["dict", 3 * MB, 2000]]))
    rows = culprit.type_growth(events)
    assert [r["type"] for r in rows] == ["bytes", "app.Session"]  # dict did not grow
    assert rows[0]["mb_per_cycle"] == 4.0 and rows[0]["objects_per_cycle"] == 1000
    assert rows[0]["mb"] == 22.0 and rows[0]["objects"] == 5000
    assert rows[1]["objects_per_cycle"] == 200
    assert culprit.type_text(rows[0]) == "`bytes` +1,000 objects, +4.0 MB a cycle"


def test_a_type_new_after_the_first_rest_counts_from_zero_and_crumbs_are_not_named() -> None:
    events = [census(1, 1, [["dict", MB, 10]]),
              census(1, 2, [["dict", MB + 1000, 10], ["Leaky", 3 * MB, 30_000]])]
    rows = culprit.type_growth(events)
    assert [(r["type"], r["mb_per_cycle"]) for r in rows] == [("Leaky", 3.0)]
    assert culprit.type_growth(events[:1]) == []  # one rest: nothing to compare


def test_the_window_sums_each_line_over_processes() -> None:
    line = {"where": "app/handlers.py:41", "at": "json/decoder.py:353", "kept_mb": 1.5,
            "blocks": 100, "stack": ["app/handlers.py:41", "app/main.py:9"]}
    crumb = {"where": "app/log.py:3", "at": "app/log.py:3", "kept_mb": 0.01, "blocks": 2,
             "stack": ["app/log.py:3"]}
    events = [{"event": "window_start", "pid": p, "frames": 32} for p in (1, 2, 3)]
    events += [{"event": "window", "pid": p, "frames": 32, "traced_mb": 2.0, "took_s": 0.5,
                "top": [line, crumb] if p != 1 else []} for p in (1, 2, 3)]
    win = culprit.window(events)
    assert win is not None
    assert win["processes"] == win["opened_in"] == 3 and win["traced_mb"] == 6.0
    assert win["lines"] == [{**line, "kept_mb": 3.0, "blocks": 200}]  # the crumb left out
    assert culprit.line_text(win["lines"][0]) == (
        "`app/handlers.py:41` 3.0 MB in 200 blocks (allocated in json/decoder.py:353)")
    assert culprit.window([]) is None


def test_the_headline_names_the_top_culprit() -> None:
    found = {"types": [{"type": "bytes", "mb_per_cycle": 4.0, "objects_per_cycle": 1000,
                        "mb": 22.0, "objects": 5000}],
             "window": {"lines": [{"where": "app/handlers.py:41", "at": "app/handlers.py:41",
                                   "kept_mb": 3.0, "blocks": 200, "stack": []}],
                        "skipped": []}}
    v = {"verdict": "leak", "where": "python objects", "culprit": found}
    assert verdict.headline(v) == ("leak (python objects): `bytes` +4.0 MB a cycle, kept at "
                                   "app/handlers.py:41")
    assert verdict.headline({**v, "verdict": "plateau", "where": None}) == "plateau"
    t = tables.culprit_table([{"variant": "a", "verdict": v}])
    assert [row[:3] for row in t.rows] == [("a", "type", "`bytes`"),
                                           ("a", "line", "`app/handlers.py:41`")]


def test_a_window_that_named_nothing_says_why() -> None:
    v = {"verdict": "leak", "culprit": {"types": [], "window": {
        "lines": [], "skipped": ["tracemalloc was already running"]}}}
    (row,) = tables.culprit_table([{"variant": "a", "verdict": v}]).rows
    assert row[-1] == "culprit window: tracemalloc was already running"


def test_retention_says_which_arenas_hold_the_free_memory_and_what_would_apply() -> None:
    events = [dict(census(pid, 3, []), threads=17, arenas=[[0, 40.0, 5.0], [1, 64.0, 50.0],
                                                          [2, 64.0, 30.0]]) for pid in (1, 2)]
    a = culprit.arenas(events, trim_freed_mb=150.0)
    assert a is not None
    assert (a["processes"], a["arenas"], a["threads"]) == (2, 6, 34)
    assert (a["free_mb"], a["main_free_mb"], a["thread_arenas_free_mb"]) == (170.0, 10.0, 160.0)
    assert a["largest"][0] == {"pid": 1, "arena": 1, "held_mb": 64.0, "free_mb": 50.0}
    assert [f.split(" (")[0] for f in a["fixes"]] == ["an arena cap", "malloc_trim after requests",
                                                      "another allocator"]
    assert culprit.arenas_text(a).startswith("glibc holds 170 MB free in 6 arena(s) (34 threads")
    # Free memory in the main arena, nothing trimmed: the cap would not apply.
    a = culprit.arenas([dict(census(1, 3, []), threads=2, arenas=[[0, 90.0, 80.0]])], None)
    assert a is not None and [f.split(" (")[0] for f in a["fixes"]] == ["another allocator"]
    assert culprit.arenas([census(1, 3, [])]) is None  # another allocator: not read


def test_native_stacks_are_summed_over_processes() -> None:
    row = {"bytes_mb": 10.0, "blocks": 160, "library": "libc.so.6", "function": "strdup",
           "stack": ["strdup (libc.so.6)", "ffi_call (libffi.so.8)"]}
    info = {"native": {"windows": [{"pid": p, "top": [row], "files": [f"heaptrack.{p}.zst"]}
                                   for p in (1, 2)]}}
    n = culprit.native(info)
    assert n is not None and n["processes"] == 2 and n["files"] == ["heaptrack.1.zst",
                                                                     "heaptrack.2.zst"]
    assert n["stacks"] == [{"function": "strdup", "library": "libc.so.6", "mb": 20.0,
                            "blocks": 320, "stack": row["stack"]}]
    assert culprit.top_line({"types": [], "window": None, "native": n}) == (
        "20.0 MB alive from strdup (libc.so.6)")
    assert culprit.native({"reason": "x"}) is None
