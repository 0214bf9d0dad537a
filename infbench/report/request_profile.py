"""Request profiling, the words: profile.md and the console lines, from each variant's
profile.json (infbench/analysis/request_profile.py makes the numbers)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infbench.analysis import stall
from infbench.analysis.request_profile import PASSES, ROWS, change, count_note
from infbench.results import files


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def table(builds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The "where the time goes" table, builds side by side (markdown); with two builds or
    more, the % change of each build's median over the first's."""
    names = list(builds)
    head = ["ms per request"]
    for n in names:
        head += [f"{n} median", f"{n} p95"]
    head += [f"{n} vs {names[0]} (median)" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in ROWS:
        cells = [label]
        for n in names:
            s = builds[n].get(key) or {}
            cells += [_f(s.get("median")), _f(s.get("p95"))]
        base = (builds[names[0]].get(key) or {}).get("median")
        cells += [change(base, (builds[n].get(key) or {}).get("median")) for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def concurrency_line(name: str, doc: Mapping[str, Any]) -> str:
    mc = doc.get("model_calls") or {}
    share = mc.get("timing_overlap_median")
    pct = "-" if share is None else f"{share * 100:.0f}%"
    return (f"{name}: model_a and model_b ran {mc.get('timing_lines')} (timing lines: median "
            f"overlap {pct} of the shorter call; pyinstrument: {mc.get('pyinstrument')}; "
            f"yappi: {mc.get('yappi')})")


def notes(name: str, doc: Mapping[str, Any]) -> list[str]:
    """What makes a variant's table less than it looks: short timing lines, a keep-alive stall."""
    out = []
    passes = doc.get("passes") or {}
    for kind in PASSES:
        note = count_note(name, kind, passes.get(kind) or {})
        if note:
            out.append(note)
    found = (passes.get("off") or {}).get("keepalive") or {}
    if found.get("stalled"):
        out.append(f"{name}: keep-alive stall: {stall.message(found)}; the outside-the-app "
                   "time includes it")
    return out


def markdown(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """profile.md: the table side by side, the concurrency lines, the cross-check and the cost."""
    names = list(docs)
    n = next(iter(docs.values())).get("settings", {}).get("requests")
    out = [f"# Where the time goes: {', '.join(names)}", "",
           f"{n} sequential POST /score requests per pass after warm-ups; the table is the "
           "unprofiled pass's timing lines (exact), JSON from the yappi pass (profiled, so an "
           "upper bound).", ""]
    out += table({k: d.get("table") or {} for k, d in docs.items()})
    out += [""] + [f"- {concurrency_line(k, d)}" for k, d in docs.items()]
    out += [f"- {note}" for k, d in docs.items() for note in notes(k, d)]
    out += ["", "## Cross-check: the profilers against the timing lines of the same pass", "",
            "| build | pass | feature read: profiler / timing | model stage: profiler / timing "
            "wall / timing a+b | model calls |", "|---|---|---|---|---|"]
    for k, d in docs.items():
        for kind in ("pyinstrument", "yappi"):
            cc = (d.get("passes", {}).get(kind) or {}).get("cross_check") or {}
            if not cc:
                continue

            def m(key: str, c: Mapping[str, Any] = cc) -> str:
                return _f((c.get(key) or {}).get("median"))

            out.append(f"| {k} | {kind} | {m('profiler_features_ms')} / "
                       f"{m('timing_features_ms')} | {m('profiler_call_model_ms')} / "
                       f"{m('timing_models_ms')} / {m('timing_model_calls_ms')} | "
                       f"{cc.get('model_calls')} |")
    out += ["", "## What profiling costs (median server total, and client-observed, against "
            "the unprofiled pass)", "", "| build | profiler | server total | change | client "
            "change |", "|---|---|---|---|---|"]
    for k, d in docs.items():
        for kind, c in (d.get("profiler_cost") or {}).items():
            out.append(f"| {k} | {kind} | {_f(c.get('server_total_median_ms'))} | "
                       f"{c.get('server_change')} | {c.get('client_change')} |")
    return out


def report(run_dir: Path, names: Sequence[str], say: Callable[[str], None]) -> bool:
    """Print (and for several variants write run_dir/profile.md) the side-by-side table; False
    when a variant left no profile.json."""
    docs: dict[str, dict[str, Any]] = {}
    for name in names:
        path = run_dir / name / "profile" / "profile.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            say(f"{name}: no profile ({path} missing or unreadable)")
            continue
        if "table" in doc:
            docs[name] = doc
    if not docs:
        return False
    lines = markdown(docs)
    if len(docs) > 1:
        files.write_text(run_dir / "profile.md", "\n".join(lines) + "\n")
    say("\n".join(lines))
    return len(docs) == len(names)
