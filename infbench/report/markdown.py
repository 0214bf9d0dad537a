"""The report of a run folder: summary.json per variant, summary.md/.csv and plots per run.

Reads only files, so it works the same on a finished run, an interrupted one, or a run copied
from another machine (`make report RUN=<run-id>`).
"""

from __future__ import annotations

import contextlib
import csv
import time
from pathlib import Path
from typing import Any

import psutil

from infbench.analysis import breakdown, summary, verdict
from infbench.report import html, plots
from infbench.results import readers, samples, schemas
from infbench.results.files import WriteError, write_json

CSV_MEMORY = ["start", "end", "peak", "after_cooldown", "growth", "retained"]
CSV_PROCESS = ("pss", "uss", "anon", "file")
STEP_CSV = ("requests", "failures", "cut_off", "rps", "p50_ms", "p95_ms", "mem_end_mb")
# Appended after each step's figures (infbench/analysis/trust.py): how far to trust them.
TRUST_CSV = ("stable", "memory_flat", "limited_by_loadgen", "efficiency")


class ReportError(Exception):
    pass


def resolve_run(results: Path, run: str) -> Path:
    """A run id, 'latest', or a path to a run folder."""
    candidate = Path(run)
    if candidate.is_dir() and (candidate / "run.json").exists():
        return candidate
    d = results / run
    if d.is_dir() and (d / "run.json").exists():
        return d.resolve() if run == "latest" else d
    runs = sorted(p.parent.name for p in results.glob("*/run.json")) if results.exists() else []
    hint = f" (recent: {', '.join(runs[-3:])})" if runs else ""
    raise ReportError(f"no run {run!r} under {results}{hint}")


def variant_dirs(run_dir: Path) -> list[Path]:
    info = read_run(run_dir)
    order = info.get("variants", [])
    found = [run_dir / v for v in order if (run_dir / v / "phases.json").exists()]
    extra = sorted(p.parent for p in run_dir.glob("*/phases.json") if p.parent not in found)
    return found + extra


def fmt(x: Any, nd: int = 0) -> str:
    """A figure for a table: "-" for none, thousands separated, `nd` decimals for floats."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+,.0f}"


def read_run(run_dir: Path) -> dict[str, Any]:
    """run.json, with a run left `running` by a harness that is gone marked `interrupted`
    (and the file rewritten, so the next reader agrees)."""
    try:
        info = readers.run_json(run_dir)  # version-checked; a version 1 file is migrated
    except readers.ReadError as e:
        raise ReportError(f"run.json is damaged, unreadable or too new: {e}") from None
    if info.get("status") == "running" and not harness_alive(info.get("harness")):
        info["status"] = "interrupted"
        info["stopped_in"] = info.get("stopped_in") or info.get("current")
        info["error"] = info.get("error") or "the harness died while the run was going"
        with contextlib.suppress(OSError, WriteError):
            write_json(run_dir / "run.json", info)
    return info


def harness_alive(who: Any) -> bool:
    """Is the process that wrote this run.json still the same live process? (Version 1 files
    do not say: then assume it is, as before.)"""
    if not isinstance(who, dict) or "pid" not in who:
        return True
    try:
        p = psutil.Process(int(who["pid"]))
        return abs(p.create_time() - float(who.get("create_time", 0))) < 1.0
    except (psutil.Error, ValueError, TypeError):
        return False


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
    info = read_run(run_dir)
    rows = []
    series = []
    for vd in variant_dirs(run_dir):
        try:
            points = breakdown.series(vd)
            s = summary.summarize_variant(vd, points)
            ph = readers.phases_json(vd)
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
        mp = summary.variant_mprof(vd, ph, running=True)
        cgroup = summary.while_running(  # docker runs only
            samples.parse_cgroup_csv(vd / samples.CGROUP_FILE), stop_at)
        per_service: tuple[tuple[str, plots.Series, str], ...] = ()
        if s.get("services") and list(s["services"]) != ["server"]:
            per = summary.replica_mprofs(vd, ph, running=True)
            per_service = tuple(
                (f"service {name} (mprof, {sv['replicas']} replica(s))",
                 summary.sum_series([per[lb].mem for lb in sv["labels"] if lb in per]),
                 plots.SERVICE_COLORS[n % len(plots.SERVICE_COLORS)])
                for n, (name, sv) in enumerate(s["services"].items()))
        plots.variant_plot(mp, ph, s, vd / "memory.png", f"{s['variant']} — memory over time",
                           extra=(("container cgroup (docker stats)", cgroup, "#2a6f97"),
                                  *sampler_lines(vd, stop_at), *per_service),
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
    _write_csv(run_dir / "summary.csv", rows)
    (run_dir / "summary.md").write_text(markdown(info, rows))
    out: dict[str, Any] = {"run": info, "variants": rows, "html_error": None}
    try:  # the page embeds the plots: the largest file; its loss must not lose the report
        html.write(run_dir, info, rows)
    except WriteError as e:
        out["html_error"] = str(e)
    return out


def fault_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Every fault of the run, one line each, on the run's clock."""
    out = []
    for r in rows:
        for e in r.get("events") or []:
            if e.get("fault"):
                when = time.strftime("%H:%M:%S", time.localtime(e["t"])) if e.get("t") else "?"
                out.append(f"- {when} **{r['variant']}** {e['kind']}"
                           + (f" in {e['phase']}" if e.get("phase") else "")
                           + f": {e.get('detail', '')}")
        if r.get("status") == "damaged":
            out.append(f"- **{r['variant']}**: {r.get('error')}")
    return out


def print_faults(summary: dict[str, Any]) -> None:
    lines = fault_lines(summary["variants"])
    if lines:
        print("\nfaults (each keeps the run from `complete`):")
        print("\n".join(lines))


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


def sampler_lines(variant_dir: Path,
                  stop_at: float | None = None) -> tuple[tuple[str, plots.Series, str], ...]:
    """PSS and anonymous memory summed over the server's processes (processes.csv), while
    they ran (summary.while_running)."""
    tot = samples.totals(samples.process_rows(variant_dir / "processes.csv"))
    pss = summary.while_running([(t["time"], t["pss_mb"]) for t in tot
                                  if t["pss_mb"] is not None], stop_at)
    anon = summary.while_running([(t["time"], t["anon_mb"]) for t in tot], stop_at)
    return (("PSS, all processes (sampler)", pss, "#6a4c93"),
            ("anonymous, all processes (sampler)", anon, "#8d99ae"))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
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
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
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
            w.writerow(["" if x is None else x for x in line])


def memory_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| variant | after API start (MB) | after test (MB) | growth (MB) | peak (MB) | "
           "after cooldown (MB) | requests | failures | cut off | status |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        m, t = r["memory_mb"], r["totals"]
        out.append(f"| {r['variant']} | {fmt(m['start'])} | {fmt(m['end'])} | "
                   f"{_signed(m['growth'])} | {fmt(m['peak'])} | {fmt(m['after_cooldown'])} | "
                   f"{fmt(t['requests'])} | {fmt(t['failures'])} | {fmt(t['cut_off'])} | "
                   f"{r['status']} |")
    return out


def _table(columns: list[str], lines: list[list[str]]) -> list[str]:
    """A markdown table; a column named with a leading '>' is right-aligned. No rows: []."""
    if not lines:
        return []
    names = [c.lstrip(">") for c in columns]
    align = ["---:" if c.startswith(">") else "---" for c in columns]
    return ["| " + " | ".join(names) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def cgroup_table(rows: list[dict[str, Any]]) -> list[str]:
    """Docker runs: the container's cgroup memory (`docker stats`) beside mprof's figures."""
    lines = []
    for r in rows:
        c = r.get("cgroup_memory_mb")
        if not c:
            continue
        mp = r["memory_mb"].get("peak")
        diff = c["peak"] - mp if c.get("peak") is not None and mp is not None else None
        lines.append([r["variant"], fmt(c["start"]), fmt(c["end"]), _signed(c["growth"]),
                      fmt(c["peak"]), fmt(c["after_cooldown"]), _signed(diff)])
    return _table(["variant", ">after API start (MB)", ">after test (MB)", ">growth (MB)",
                   ">peak (MB)", ">after cooldown (MB)", ">peak - mprof peak (MB)"], lines)


def processes_table(rows: list[dict[str, Any]]) -> list[str]:
    """Where the memory is: the sampler's figures, start -> end, summed over processes."""
    lines = []
    for r in rows:
        p = r.get("processes_mb")
        if not p:
            continue
        spans = [f"{fmt(p[k]['start'])} → {fmt(p[k]['end'])} ({_signed(p[k]['growth'])})"
                 for k in ("rss", "pss", "uss", "anon", "file")]
        lines.append([r["variant"], str(p["processes_max"]), *spans, str(p["threads_max"])])
    return _table(["variant", ">processes", "RSS sum (MB)", "PSS (MB)", "USS (MB)",
                   "anonymous (MB)", "file-backed (MB)", ">threads (max)"], lines)


def growth_parts_table(rows: list[dict[str, Any]]) -> list[str]:
    """Where the growth went: each part of RSS, end of baseline -> end of cooldown."""
    lines = []
    for r in rows:
        b = r.get("breakdown_mb") or {}
        a, s, g = b.get("after_cooldown"), b.get("start"), b.get("growth")
        if not (b.get("probed") and a and s and g):
            continue
        lines.append([r["variant"], f"{fmt(s['rss_mb'])} → {fmt(a['rss_mb'])}",
                      _signed(g["rss_mb"]), _signed(g["malloc_in_use_mb"]),
                      _signed(g["malloc_free_mb"]), _signed(g["other_anon_mb"]),
                      _signed(g["file_mb"]), _signed(g["python_traced_mb"]),
                      fmt(a["named_pct"])])
    return _table(["variant", "RSS (MB)", ">growth", ">malloc in use", ">malloc free (kept)",
                   ">other anonymous", ">file-backed", ">Python heap (traced)",
                   ">named at end (% of RSS)"], lines)


def verdict_table(rows: list[dict[str, Any]]) -> list[str]:
    """Leak / allocator retention / plateau per variant, with the figures that decided it,
    ranked by growth after warm-up (least first)."""
    judged = [r for r in rows if (r.get("verdict") or {}).get("cycles", 0) >= 2]

    def growth(r: dict[str, Any]) -> float:
        g = r["verdict"].get("growth_after_warmup_mb")
        return float("inf") if g is None else float(g)

    lines = []
    for r in sorted(judged, key=growth):
        v = r["verdict"]
        per = " → ".join(fmt(x) for x in v.get("post_rest_mb") or []) or "-"
        said = v.get("headline") or verdict.headline(v)
        loaded = ", ".join((v.get("probes") or {}).get("allocators") or ["-"])
        lines.append([r["variant"], loaded, f"**{v['verdict']}**{said[len(v['verdict']):]}", per,
                      _signed(v.get("growth_after_warmup_mb")),
                      _signed(v.get("growth_per_cycle_mb")),
                      fmt(v.get("growth_per_1000_requests_mb"), 2),
                      fmt(v.get("trim_freed_mb")), v.get("reason", "")])
    return _table(["variant", "malloc (loaded)", "verdict", "post-rest MB per cycle",
                   ">growth after warm-up (MB)", ">growth / cycle (MB)",
                   ">per 1,000 requests (MB)", ">malloc_trim gave back (MB)", "why"], lines)


def verdict_notes(rows: list[dict[str, Any]]) -> list[str]:
    """How each verdict was read: probes injected or the server's own, glibc read from outside
    (and the longest pause that cost), probes that did not start, where a leak is kept."""
    out = []
    for r in rows:
        v = r.get("verdict") or {}
        if v.get("cycles", 0) < 2:
            continue
        said = []
        pr = v.get("probes")
        if pr:
            how = "injected (sitecustomize, no code change)" if pr.get("injected") \
                else "started by the server"
            census = pr.get("census") or {}
            said.append(f"probes {how} in {pr['processes']} process(es)"
                        + (f", tracemalloc {pr['tracemalloc']}" if pr.get("tracemalloc")
                           else "")
                        + (f", heap census at {census['rests']} rest(s) (pauses up to "
                           f"{census['max_took_s']:.1f} s)" if census.get("rests") else ""))
        ou = v.get("outside")
        if ou:
            said.append(f"glibc read from outside (gdb) {ou['reads']} time(s) in "
                        f"{ou['processes']} process(es)"
                        + (f", pauses up to {ou['max_pause_s']:.1f} s"
                           if ou.get("max_pause_s") is not None else "")
                        + (f"; could not: {'; '.join(ou['errors'])}" if ou.get("errors")
                           else ""))
        said += [w.split(": ", 1)[1] for w in probe_warnings([r])]
        if said:
            out.append(f"- {r['variant']}: " + "; ".join(said))
        for site in v.get("kept_at") or []:
            out.append(f"  - kept at `{site['where']}`: {site['kept_mb']:,.1f} MB in "
                       f"{site['blocks']:,} blocks allocated after warm-up, alive at the end")
    return out


def probe_warnings(rows: list[dict[str, Any]]) -> list[str]:
    """`probes = true` that started in no process of a replica (phases.json events)."""
    return [f"{r['variant']}: {e.get('detail', '')}" for r in rows
            for e in r.get("events") or [] if e.get("kind") == "probes_missing"]


def verdict_lines(summary: dict[str, Any]) -> list[str]:
    """The verdict per variant, one line each, for the console (`run` and `report`), and the
    probes that did not start."""
    rows = summary.get("variants", [])
    judged = [r for r in rows if (r.get("verdict") or {}).get("cycles", 0) >= 2]
    out = []
    if judged:
        width = max(len(r["variant"]) for r in judged)
        out += ["", "verdict (leak, allocator retention or plateau; the why is in summary.md):"]
        for r in judged:
            v = r["verdict"]
            g = v.get("growth_after_warmup_mb")
            grew = f"  [{g:+,.1f} MB after warm-up]" if g is not None else ""
            said = v.get("headline") or verdict.headline(v)
            out.append(f"  {r['variant']:<{width}}  {said}{grew}")
    elif verdict.no_cycles(rows):
        out += ["", f"{schemas.NO_VERDICT}: {schemas.NO_CYCLES}"]
    warnings = probe_warnings(rows)
    if warnings:
        out += ["", *[f"WARNING {w}" for w in warnings]]
    return out


def split_table(rows: list[dict[str, Any]], cores: int) -> list[str]:
    lines = []
    for r in rows:
        steps = {s["index"]: s for s in r.get("steps", [])}
        for sp in r.get("split") or []:
            st = steps.get(sp["index"], {})
            split = sp.get("split") or {}
            parts = ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {fmt(v)}"
                              for k, v in split.items() if k.endswith("_ms") and k != "total_ms"
                              and v is not None)
            kinds = ", ".join(f"{k}: {n}" for k, n in sorted(sp["failures_by_kind"].items()))
            lines.append([r["variant"], str(sp["index"]), fmt(st.get("users")),
                          fmt(st.get("rps"), 2), fmt(st.get("p50_ms")), fmt(st.get("p95_ms")),
                          kinds or "0", fmt(split.get("total_ms")), parts or "-",
                          fmt(split.get("mean_batch"), 1),
                          summary.bottleneck(split, r.get("services"), sp["index"], cores),
                          fmt(loadgen_cpu(st))])
    return _table(["variant", ">step", ">users", ">req/s", ">p50 (ms)", ">p95 (ms)",
                   "failures by kind", ">server median (ms)", "of it (median ms)",
                   ">jobs per model call", "bottleneck", ">load gen CPU (%)"], lines)


def breaking_table(rows: list[dict[str, Any]], bound: float) -> list[str]:
    lines = []
    for r in rows:
        b = summary.breaking_point(r.get("steps", []), bound)
        if b:
            lines.append([r["variant"], fmt(b["sustainable_rps"], 2), fmt(b["at_users"]),
                          fmt(b["broke_at_users"]), b["why"]])
    return _table(["variant", ">sustainable req/s", ">at users", ">broke at users", "why"],
                  lines)


def ranking_table(rows: list[dict[str, Any]]) -> list[str]:
    """Variants ranked by images/s at each batch size (studies that sweep the batch)."""
    by_batch: dict[int, list[tuple[float, str, dict[str, Any]]]] = {}
    for r in rows:
        for s in r.get("steps", []):
            if s.get("images_per_s") is not None:
                by_batch.setdefault(s["batch"], []).append((s["images_per_s"], r["variant"], s))
    if len(rows) < 2 or len(by_batch) < 2:
        return []
    by_name = {r["variant"]: r for r in rows}
    lines = []
    for batch in sorted(by_batch):
        for rank, (ips, name, s) in enumerate(sorted(by_batch[batch], key=lambda x: -x[0]), 1):
            server, model, cpu = step_server_figures(by_name[name], s["index"])
            share = f"{100.0 * model / server:.0f}%" if model is not None and server else "-"
            lines.append([str(batch), str(rank), name, fmt(ips, 1), fmt(s.get("p50_ms")),
                          fmt(s.get("p95_ms")), fmt(s.get("failures")), fmt(server),
                          fmt(model), share, fmt(cpu), fmt(loadgen_cpu(s))])
    return _table([">img/req", ">rank", "variant", ">img/s", ">p50 (ms)", ">p95 (ms)",
                   ">failures", ">server median (ms)", ">model (ms)", ">model share",
                   ">busiest service CPU (%)", ">load gen CPU (%)"], lines)


def step_server_figures(row: dict[str, Any], index: int
                        ) -> tuple[float | None, float | None, float | None]:
    """(server median ms, model median ms, the busiest service's CPU % of a core) of a step,
    from the servers' timing lines and processes.csv; None where a run has no such figure."""
    sp = next((x for x in row.get("split") or [] if x.get("index") == index), None)
    split = (sp or {}).get("split") or {}
    server, model = split.get("total_ms"), split.get("model_ms")
    cpus = [st["cpu_pct"] for sv in (row.get("services") or {}).values()
            for st in sv.get("steps", []) if st.get("index") == index
            and st.get("cpu_pct") is not None]
    return server, model, max(cpus) if cpus else None


def _pct(new: float | None, old: float | None) -> str:
    if new is None or old in (None, 0):
        return "-"
    assert old is not None
    return f"{100.0 * (new - old) / old:+.0f}%"


def versus_table(rows: list[dict[str, Any]]) -> list[str]:
    if len(rows) < 2:
        return []
    base = {s["index"]: s for s in rows[0].get("steps", [])}
    lines = []
    for r in rows[1:]:
        for s in r.get("steps", []):
            b = base.get(s["index"])
            if not b:
                continue
            lines.append([r["variant"], str(s["index"]), fmt(s.get("users")),
                          f"{fmt(b.get('rps'), 2)} → {fmt(s.get('rps'), 2)}",
                          _pct(s.get("rps"), b.get("rps")),
                          f"{fmt(b.get('p50_ms'))} → {fmt(s.get('p50_ms'))}",
                          _pct(s.get("p50_ms"), b.get("p50_ms")),
                          _pct(s.get("p95_ms"), b.get("p95_ms"))])
    return _table(["variant", ">step", ">users", "req/s", ">req/s change", "p50 (ms)",
                   ">p50 change", ">p95 change"], lines)


def loadgen_cpu(step: dict[str, Any]) -> float | None:
    """Locust's CPU over the step's load, all its processes, % of one core (a summary from
    before `total_cpu_pct` gives its busiest process's, the same figure for one process)."""
    g = step.get("loadgen") or {}
    return g.get("total_cpu_pct", g.get("cpu_pct"))


def services_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for r in rows:
        steps = {st["index"]: st for st in r.get("steps", [])}
        for name, sv in (r.get("services") or {}).items():
            m = sv["memory_mb"]
            cpu = " / ".join(fmt(st["cpu_pct"]) for st in sv["steps"]) or "-"
            gen = " / ".join(fmt(loadgen_cpu(steps.get(st["index"], {})))
                             for st in sv["steps"]) or "-"
            rss = " / ".join(fmt(st["rss_mb"]) for st in sv["steps"]) or "-"
            lines.append([r["variant"], name, str(sv["replicas"]), fmt(m["start"]),
                          fmt(m["end"]), _signed(m["growth"]), fmt(m["peak"]), cpu, gen, rss])
    return _table(["variant", "service", ">replicas", ">start (MB)", ">after test (MB)",
                   ">growth (MB)", ">peak (MB)", "CPU % per step", "load gen CPU % per step",
                   "RSS MB per step"], lines)


def _busy(step: dict[str, Any]) -> str:
    if step.get("server_busy_after_s") is not None:
        return f"{step['server_busy_after_s']:.1f}"
    return "whole pause" if step.get("pause_s") else "-"


def _load_of(step: dict[str, Any]) -> str:
    """Who sent the load: users (closed loop) or a rate (open loop, `arrival`)."""
    ol = step.get("open_loop")
    if ol:
        return f"{ol['rate']:g}/s {ol.get('arrival') or ''}".strip()
    return f"{fmt(step.get('users'))} users"


def _yes_no(x: Any) -> str:
    return "-" if x is None else "yes" if x else "**no**"


def _gen(step: dict[str, Any]) -> str:
    g = step.get("loadgen")
    if not g:
        return "-"
    return f"{g['peak_demand_pct']:.0f}" + (" **limited**" if g.get("limited") else "")


def _eff(step: dict[str, Any]) -> str:
    e = step.get("efficiency") or {}
    return fmt(e.get("efficiency"), 2)


def steps_table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| variant | step | img/req | load | requests | failures | cut off | req/s | img/s | "
           "p50 (ms) | p95 (ms) | stable | memory flat | load gen (% core) | efficiency | "
           "MB at end | server busy after (s) |",
           "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | "
           "--- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        for s in r["steps"]:
            out.append(f"| {r['variant']} | {s['index']} | {s['batch']} | {_load_of(s)} | "
                       f"{fmt(s['requests'])} "
                       f"| {fmt(s['failures'])} | {fmt(s['cut_off'])} | {fmt(s['rps'], 2)} | "
                       f"{fmt(s['images_per_s'], 1)} | {fmt(s['p50_ms'])} | "
                       f"{fmt(s['p95_ms'])} | {_yes_no(s.get('stable'))} | "
                       f"{_yes_no(s.get('memory_flat'))} | {_gen(s)} | {_eff(s)} | "
                       f"{fmt(s['mem_end_mb'])} | {_busy(s)} |")
    return out


def trust_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Every step whose figures should be read with care, and why (infbench/analysis/trust.py)."""
    out = [f"- **{r['variant']}**: {e.get('detail', '')}" for r in rows
           for e in r.get("events") or [] if e.get("kind") == "keepalive_stall"]
    for r in rows:
        for s in r["steps"]:
            for note in s.get("notes") or []:
                out.append(f"- **{r['variant']}** step {s['index']} (b{s['batch']}): {note}")
    return out


def _section(title: str, table: list[str], caption: str) -> list[str]:
    """A summary.md section: heading, table and caption, or nothing when the table is empty."""
    return ["", f"## {title}", "", *table, "", caption] if table else []


def markdown(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = info.get("machine", {})
    started = info.get("started")
    lines = [f"# infbench run {info.get('run_id')}", ""]
    lines.append(f"- status: **{info.get('status')}**"
                 + (f" (stopped in {info['stopped_in']})" if info.get("stopped_in") else ""))
    lines.append(f"- profile: `{info.get('profile')}`, model: "
                 f"`{', '.join(info.get('models', []))}`, runtime: `{info.get('runtime')}`")
    if started:
        lines.append(f"- started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
                     f", wall time {fmt(info.get('wall_seconds'))} s")
    lines.append(f"- machine: {m.get('cpus')} CPUs ({m.get('cpu')}), {m.get('memory_gib')} GiB, "
                 f"Python {m.get('python')}, {m.get('platform')}")
    git = info.get("git", {})
    if git.get("revision"):
        lines.append(f"- git: `{git['revision'][:12]}`" + (" (dirty)" if git.get("dirty") else ""))
    lines += ["", "## Memory (server + children, mprof)", "", *memory_table(rows)]
    lines += _section(
        "Memory of the container (cgroup, as `docker stats` shows it)", cgroup_table(rows),
        "The container's memory cgroup: usage minus inactive file cache, sampled at "
        "mprof's interval. It counts each page once, with kernel memory; file pages "
        "(the libraries' code) count only if this container read them first, so it "
        "can sit far below mprof's RSS sum (which counts them in every process) and "
        "still grow by the same amount. Source: `<variant>/cgroup_memory.csv`.")
    lines += _section(
        "Where the memory is (per-process sampler, after API start → after test)",
        processes_table(rows),
        "RSS summed over processes counts shared pages (libraries, a forked "
        "master's pages) once per process, as mprof's MEM does; PSS counts them "
        "once. Anonymous memory is the heap, allocator arenas, thread stacks and "
        "tensors: where growth under load lives. Source: `<variant>/processes.csv`.")
    lines += _section(
        "Where the growth went (probed variants, end of baseline → end of cooldown, MB)",
        growth_parts_table(rows),
        "malloc in use and free are glibc's own figures (mallinfo2, all processes); "
        "other anonymous is the anonymous RSS malloc does not account for (Python's "
        "small-object arenas, thread stacks, TensorFlow's own mappings); the four "
        "parts add up to RSS. Plots: `<variant>/memory_parts.png`.")
    judged = verdict_table(rows)
    if not judged:
        why = ("No verdict: this profile has no cycles (it runs its sweep once)"
               if verdict.no_cycles(rows) else
               "No leak/retention/plateau verdict: no variant measured two cycles (the reason "
               "of each is in its summary.json)")
        lines += ["", f"{why}. `PROFILE=cycles` repeats the sweep with a rest after each cycle "
                  "(and variants with `probes = true` say where the memory is)."]
        lines += [f"- WARNING {w}" for w in probe_warnings(rows)]
    else:
        notes = verdict_notes(rows)
        lines += ["", "## Leak, allocator retention or plateau", "", *judged, "",
                  *([*notes, ""] if notes else []),
                  "Memory is compared at the end of each cycle's rest, with the first cycle "
                  "as warm-up; a verdict needs at least "
                  f"{schemas.MIN_CYCLES} cycles (a profile with `cycles`, e.g. "
                  "`PROFILE=cycles`). What the allocator holds is read by the server probes "
                  "(`probes = true`, injected into any Python server) or from outside by a "
                  "debugger (any glibc process); the Python heap in bytes (tracemalloc, on "
                  "with the probes) tells a leak of Python objects from a native one. The "
                  "rules and thresholds are in `summary.json` and the README."]
    lines += ["", "## Load per step (Locust)", "", *steps_table(rows), "",
              "stable: the last windows' throughput and p50 agreed (see Definitions); load "
              "gen: the busiest 5 s of Locust's CPU + run-queue wait, **limited** from 90%; "
              "efficiency: served images/s over the model's own (model_alone.json). "
              "An open-loop load (`N/s`) measures latency from each request's intended send "
              "time."]
    trust_notes = trust_lines(rows)
    if trust_notes:
        lines += ["", "## Read with care", "", *trust_notes]
    faults = fault_lines(rows)
    if faults:
        lines += ["", "## Faults", "", *faults, "",
                  "A fault (a process that exited or appeared, a replica that died, a load "
                  "generator that failed, a step whose requests all failed, a damaged file) "
                  "marks its step degraded and keeps the run from `complete`. Source: "
                  "`<variant>/phases.json` → `events`."]
    split = split_table(rows, int(m.get("cpus") or 1))
    if split:
        lines += ["", "## Where the time goes, and the bottleneck (per step)", "", *split, "",
                  "Medians over the requests each step received, from the servers' own timing "
                  "lines (`<service>-<i>/timings-<pid>.jsonl`): for the queue, wait = dequeued "
                  "- enqueued, model = model done - model start, API = the rest of the API's "
                  "time. Failures by kind from Locust's `*_failures.csv`. The sentence names the "
                  "largest part, with the busiest service's CPU; load gen CPU: Locust's, all "
                  "its processes over the step's load, % of one core."]
    bound = float((rows[0].get("profile") or {}).get("p95_bound_ms") or 0) if rows else 0.0
    broke = breaking_table(rows, bound)
    if broke:
        lines += ["", f"## Breaking point (p95 ≤ {bound:g} ms, failures ≤ 1%)", "", *broke,
                  "", "The highest requests/s among the steps before the first that broke, "
                  "and the users at which it broke (per-step figures from Locust)."]
    ranking = ranking_table(rows)
    if ranking:
        lines += ["", "## Ranking by images/s at each batch size", "", *ranking]
    versus = versus_table(rows)
    if versus:
        lines += ["", f"## Against {rows[0]['variant']} (per step)", "", *versus, "",
                  "Change in throughput and latency from the first variant of the run, step "
                  "by step: a positive req/s change and a negative latency change are "
                  "improvements. One run each: read differences under ~15% as noise."]
    services = services_table(rows)
    if services:
        lines += ["", "## Per service (memory by mprof, replicas summed; CPU % of one core "
                  "and RSS at the end of each step, from processes.csv)", "", *services, "",
                  "load gen CPU: Locust's own over each step's load, all its processes, % of "
                  "one core (`step*_loadgen.csv`), beside the service's: both share the "
                  "machine's cores. The Load table's load gen column is its busiest 5 s of "
                  "CPU + run-queue wait, the figure that flags **limited**."]
    problems = [r for r in rows if r["status"] != "complete"]
    if problems:
        lines += ["", "## Not complete", ""]
        for r in problems:
            lines.append(f"- **{r['variant']}**: {r['status']}"
                         + (f" in {r['stopped_in']}" if r.get("stopped_in") else "")
                         + (f": {r['error']}" if r.get("error") else ""))
    lines += ["", "## Definitions", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.DEFINITIONS.items()]
    lines += ["- **cut off**: requests still in flight when a step's drain timeout ended "
              "(started - finished, counted by the locustfile; Locust itself drops them)",
              "- **server busy after**: seconds into the following pause until the server's "
              "CPU fell below 10% of a core for a second - it keeps working on requests whose "
              "clients are gone; 'whole pause' means it never went idle",
              "", "Plots: `memory_overlay.png` here, `<variant>/memory.png` per variant, "
              "`<variant>/memory_parts.png` (RSS as a stack of its parts). "
              "Raw data: `<variant>/mprofile.dat` (`mprof plot` reads it), `phases.json`, "
              "`processes.csv`, "
              "Locust `step*_stats*.csv` / `.html`.", ""]
    return "\n".join(lines)
