"""Where the memory is, over time: the server's RSS split into the parts we can name.

From the sampler (processes.csv, every process summed) and, where the variant runs the probes,
glibc's own figures (probes-<pid>.jsonl, mallinfo2, every process summed):

    file_mb          file-backed and shared pages (libraries, mapped files)
    malloc_in_use_mb memory malloc has handed out and not had back (in use + mmapped chunks):
                     NumPy arrays, TensorFlow's tensors, Python objects over 512 bytes
    malloc_free_mb   memory freed to malloc that it keeps in its arenas (retention)
    other_anon_mb    anonymous memory malloc does not account for: Python's small-object arenas
                     (pymalloc maps them itself), thread stacks, TensorFlow's own mappings;
                     without probes (or under another allocator) all anonymous memory

The four add up to RSS by construction, so the check of the split is the remainder: if
malloc's in-use + free exceeds the anonymous RSS, part of what malloc counts is not resident
(free chunks never touched, or handed back with madvise) and `other_anon_mb` is negative;
`named_pct` says how much of RSS the file-backed and malloc parts explain.

`python_traced_mb` (tracemalloc, only with `tracemalloc = true`) overlaps malloc in use and
the other anonymous part, so it is a line beside the stack, not a layer of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infbench.analysis.verdict import probe_totals
from infbench.results.variant import VariantFiles, files_of

PARTS = ("file_mb", "other_anon_mb", "malloc_in_use_mb", "malloc_free_mb")
GRID_S = 1.0  # the probes write once a second; finer would only repeat their figures


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def series(variant_dir: Path | VariantFiles) -> list[dict[str, Any]]:
    """One point a second: rss, anon, the four parts, and whether malloc's figures were there."""
    v = files_of(variant_dir)
    totals = v.process_totals
    probes, _ = v.probes
    out: list[dict[str, Any]] = []
    last = float("-inf")
    for row in totals:
        if row["time"] - last < GRID_S or row["rss_mb"] is None or row["anon_mb"] is None:
            continue
        last = row["time"]
        p = probe_totals(probes, row["time"]) if probes else {}
        in_use, free = p.get("malloc_in_use_mb"), p.get("malloc_free_mb")
        anon = row["anon_mb"]
        point = {"time": row["time"], "rss_mb": row["rss_mb"], "anon_mb": anon,
                 "file_mb": row["rss_mb"] - anon,  # RssFile + RssShmem
                 "malloc_in_use_mb": None, "malloc_free_mb": None, "other_anon_mb": anon,
                 "python_traced_mb": p.get("py_traced_mb"), "probed": False}
        if in_use is not None and free is not None:
            point.update(malloc_in_use_mb=in_use, malloc_free_mb=free,
                         other_anon_mb=anon - in_use - free, probed=True)
        out.append(point)
    return out


def _at(points: list[dict[str, Any]], t: float | None) -> dict[str, Any] | None:
    if t is None:
        return None
    before = [p for p in points if p["time"] <= t]
    return before[-1] if before else None


def _moment(p: dict[str, Any] | None) -> dict[str, Any] | None:
    if p is None:
        return None
    out = {k: _r(p[k]) for k in ("rss_mb", "anon_mb", *PARTS, "python_traced_mb")}
    named = p["file_mb"] + (p["malloc_in_use_mb"] or 0) + (p["malloc_free_mb"] or 0)
    out["named_pct"] = _r(100.0 * named / p["rss_mb"]) if p["probed"] and p["rss_mb"] else None
    out["probed"] = p["probed"]
    return out


def figures(points: list[dict[str, Any]],
            phase_list: list[dict[str, Any]]) -> dict[str, Any] | None:
    """From `series`: the split at the end of the baseline and at the end of the cooldown
    (before any trim), and what each part grew between them: where the growth went."""
    if not points:
        return None
    ends = {p["kind"]: p.get("end") for p in phase_list if p.get("kind") in
            ("baseline", "cooldown")}
    start, after = _moment(_at(points, ends.get("baseline"))), \
        _moment(_at(points, ends.get("cooldown")))
    growth = None
    if start and after:
        growth = {k: _r(after[k] - start[k]) if after[k] is not None and start[k] is not None
                  else None for k in ("rss_mb", "anon_mb", *PARTS, "python_traced_mb")}
    return {"start": start, "after_cooldown": after, "growth": growth,
            "probed": any(p["probed"] for p in points), "points": len(points)}
