"""The report of a run folder: summary.json per variant, summary.md/.csv, report.html and plots
per run.

Reads only files, so it works the same on a finished run, an interrupted one, or a run copied
from another machine (`make report RUN=<run-id>`). Every file goes through the one write path
(infbench/results/files.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from infbench.analysis import breakdown, summary
from infbench.report import html, markdown, plots
from infbench.report.tables import loadgen_cpu
from infbench.results import samples, schemas, store
from infbench.results.files import WriteError, write_csv, write_json, write_text
from infbench.results.variant import VariantFiles, files_of

CSV_MEMORY = ["start", "end", "peak", "after_cooldown", "growth", "retained"]
CSV_PROCESS = ("pss", "uss", "anon", "file")
STEP_CSV = ("requests", "failures", "cut_off", "rps", "p50_ms", "p95_ms", "mem_end_mb")
# Appended after each step's figures (infbench/analysis/trust.py): how far to trust them.
TRUST_CSV = ("stable", "memory_flat", "limited_by_loadgen", "efficiency")
# The step's "limit" (infbench/analysis/limit.py), named limit_<key>: added after the rest.
LIMIT_CSV = ("limit_images_per_s", "limit_fraction", "limit_fraction_net")


def damaged_summary(vd: Path, why: str) -> dict[str, Any]:
    """A variant whose files cannot be read: named, not a crash of the whole report."""
    return {"schema": schemas.SUMMARY_SCHEMA, "variant": vd.name, "status": "damaged",
            "stopped_in": None, "error": why, "memory_mb": summary.memory_figures([], []),
            "processes_mb": None, "verdict": {"verdict": "inconclusive", "reason": why,
                                              "cycles": 0},
            "breakdown_mb": None, "services": None, "events": [], "faults": 1,
            "totals": {"requests": None, "failures": None, "cut_off": None}, "steps": []}


def build(run_dir: Path) -> dict[str, Any]:
    """(Re)write every derived file of a run; returns the run-level summary."""
    info = store.read_run(run_dir)
    rows = []
    series = []
    for vd in store.variant_dirs(run_dir, info):
        try:
            v = VariantFiles(vd)
            points = breakdown.series(v)
            s = summary.summarize_variant(v, points)
            ph = v.phases
        except (OSError, ValueError, KeyError, TypeError) as e:
            s = damaged_summary(vd, f"cannot read {vd.name}'s files: {type(e).__name__}: "
                                f"{str(e)[:200]}")
            with contextlib.suppress(OSError, WriteError):
                write_json(vd / "summary.json", s)
            rows.append(s)
            continue
        write_json(vd / "summary.json", s)
        # The plots draw each line while its server ran: not its shutdown, nor mprof's
        # 0 MB after the process is gone (summary.while_running).
        stop_at = summary.stop_began(ph)
        mp = summary.variant_mprof(v, ph, running=True)
        cgroup = summary.while_running(  # docker runs only
            samples.parse_cgroup_csv(vd / samples.CGROUP_FILE), stop_at)
        per_service: tuple[tuple[str, plots.Series, str], ...] = ()
        if s.get("services") and list(s["services"]) != ["server"]:
            per = summary.replica_mprofs(v, ph, running=True)
            per_service = tuple(
                (f"service {name} (mprof, {sv['replicas']} replica(s))",
                 summary.sum_series([per[lb].mem for lb in sv["labels"] if lb in per]),
                 plots.SERVICE_COLORS[n % len(plots.SERVICE_COLORS)])
                for n, (name, sv) in enumerate(s["services"].items()))
        plots.variant_plot(mp, ph, s, vd / "memory.png", f"{s['variant']} — memory over time",
                           extra=(("container cgroup (docker stats)", cgroup, "#2a6f97"),
                                  *sampler_lines(v, stop_at), *per_service),
                           mem_label="all services, replicas summed (mprof MEM)"
                           if per_service else "server + children (mprof MEM)")
        if points:
            t0 = mp.mem[0][0] if mp.mem else points[0]["time"]
            plots.parts_plot(points, ph, t0, vd / "memory_parts.png",
                             f"{s['variant']} — where the memory is", parts_note(s))
        if s.get("split"):
            plots.split_plot(s["split"], s["steps"], vd / "time_split.png",
                             f"{s['variant']} — where the time goes (server's own timings)")
        series.append((s["variant"], mp))
        rows.append(s)
    title = f"{info.get('run_id', run_dir.name)}: memory, all variants (profile " \
            f"{info.get('profile')}, model {', '.join(info.get('models', []))})"
    plots.overlay_plot(series, run_dir / "memory_overlay.png", title)
    write_csv(run_dir / "summary.csv", csv_rows(rows))
    write_text(run_dir / "summary.md", markdown.render(info, rows))
    out: dict[str, Any] = {"run": info, "variants": rows, "html_error": None}
    try:  # the page embeds the plots: the largest file; its loss must not lose the report
        html.write(run_dir, info, rows)
    except WriteError as e:
        out["html_error"] = str(e)
    return out


def parts_note(s: dict[str, Any]) -> str:
    """One line under the stacked plot's title: how far the named parts explain RSS."""
    b = s.get("breakdown_mb") or {}
    probes = (s.get("verdict") or {}).get("probes") or {}
    others = [a for a in probes.get("allocators", []) if a != "glibc"]
    if others:
        return f"{', '.join(others)} serves malloc: glibc's figures do not apply; " \
            "anonymous vs file-backed only"
    if not b.get("probed"):
        return "no probes (probes = true splits malloc's share out): anonymous vs file-backed"
    after = b.get("after_cooldown") or b.get("start") or {}
    if after.get("named_pct") is None:
        return ""
    other = after.get("other_anon_mb")
    extra = f", other anonymous {other:,.0f} MB" if other is not None and other >= 0 else \
        f"; malloc counts {-other:,.0f} MB more than is resident" if other is not None else ""
    return (f"end of cooldown: file-backed + malloc (in use + free) = "
            f"{after['named_pct']:.0f}% of RSS{extra}")


def sampler_lines(variant_dir: Path | VariantFiles,
                  stop_at: float | None = None) -> tuple[tuple[str, plots.Series, str], ...]:
    """PSS and anonymous memory summed over the server's processes (processes.csv), while
    they ran (summary.while_running)."""
    tot = files_of(variant_dir).process_totals
    pss = summary.while_running([(t["time"], t["pss_mb"]) for t in tot
                                  if t["pss_mb"] is not None], stop_at)
    anon = summary.while_running([(t["time"], t["anon_mb"]) for t in tot], stop_at)
    return (("PSS, all processes (sampler)", pss, "#6a4c93"),
            ("anonymous, all processes (sampler)", anon, "#8d99ae"))


def csv_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """summary.csv: a header, then one line per variant (an empty cell for no figure)."""
    batches: list[tuple[int, int]] = []
    for r in rows:
        for st in r["steps"]:
            key = (st["index"], st["batch"])
            if key not in batches:
                batches.append(key)
    header = ["variant", "status"] + [f"{k}_mb" for k in CSV_MEMORY] + \
        [f"{m}_{k}_mb" for m in CSV_PROCESS for k in ("start", "end")] + \
        ["requests", "failures", "cut_off"]
    for i, b in batches:
        header += [f"s{i}_b{b}_{k}" for k in (*STEP_CSV, *TRUST_CSV)]
    cgroup = any("cgroup_memory_mb" in r for r in rows)  # docker runs: appended columns
    if cgroup:
        header += [f"cgroup_{k}_mb" for k in CSV_MEMORY]
    # Added later than the rest, so last: a reader that counts columns still finds its own.
    header += [f"s{i}_b{b}_loadgen_cpu_pct" for i, b in batches]
    header += [f"s{i}_b{b}_{k}" for i, b in batches for k in LIMIT_CSV]
    out: list[list[Any]] = [header]
    for r in rows:
        line: list[Any] = [r["variant"], r["status"]]
        line += [r["memory_mb"].get(k) for k in CSV_MEMORY]
        procs = r.get("processes_mb") or {}
        line += [procs.get(m, {}).get(k) for m in CSV_PROCESS for k in ("start", "end")]
        line += [r["totals"].get(k) for k in ("requests", "failures", "cut_off")]
        by_key = {(s["index"], s["batch"]): s for s in r["steps"]}
        for key in batches:
            s = by_key.get(key, {})
            line += [s.get(k) for k in STEP_CSV]
            line += [s.get(k) for k in TRUST_CSV[:3]]
            line += [(s.get("efficiency") or {}).get("efficiency")]
        if cgroup:
            line += [(r.get("cgroup_memory_mb") or {}).get(k) for k in CSV_MEMORY]
        line += [loadgen_cpu(by_key.get(key, {})) for key in batches]
        line += [(by_key.get(key, {}).get("limit") or {}).get(k.removeprefix("limit_"))
                 for key in batches for k in LIMIT_CSV]
        out.append(["" if x is None else x for x in line])
    return out
