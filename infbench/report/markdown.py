"""summary.md, and the console's tables and lines: the report's tables (report/tables.py) as
Markdown, with the run's header, the verdict notes, faults and definitions around them.

Pure: summary dicts in, text out; report/build.py writes the file.
"""

from __future__ import annotations

import time
from typing import Any

from infbench.analysis import culprit, summary, verdict
from infbench.report import tables
from infbench.report.tables import Table, fmt
from infbench.results import schemas


def lines(t: Table) -> list[str]:
    """A table as Markdown lines (header and alignment even with no rows); a column named
    with a leading '>' is right-aligned."""
    names = [c.lstrip(">") for c in t.columns]
    align = ["---:" if c.startswith(">") else "---" for c in t.columns]
    return ["| " + " | ".join(names) + " |", "| " + " | ".join(align) + " |",
            *("| " + " | ".join(cells) + " |" for cells in t.rows)]


def section(t: Table) -> list[str]:
    """A summary.md section: heading, table and caption, or nothing when the table is empty."""
    if not t.rows:
        return []
    return ["", f"## {t.title}", "", *lines(t), *(["", t.caption] if t.caption else [])]


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


def wire_lines(rows: list[dict[str, Any]]) -> list[str]:
    """What the packet captures found (summary.json `wire.findings`), one line each."""
    return [f"- **{r['variant']}** step {f.get('step')}"
            + ("" if len({s for st in (r.get("wire") or {}).get("steps") or []
                          for s in st.get("services") or {}}) < 2 else f", {f['service']}")
            + f": {f['detail']}" for r in rows for f in (r.get("wire") or {}).get("findings")
            or []]


def print_faults(summary: dict[str, Any]) -> None:
    found = fault_lines(summary["variants"])
    if found:
        print("\nfaults (each keeps the run from `complete`):")
        print("\n".join(found))


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
        if v.get("settled"):
            st = v["settled"]
            out.append(f"  - settled after {st['after_cycles']} of {st['of']} cycles "
                       f"({st['reason']}), {st['time_to_verdict_s']:,.0f} s after the first "
                       "step: the rest were not run (`settle = false` runs them all)")
        if v.get("arenas"):
            a = v["arenas"]
            fixes = (f"; would apply: {'; '.join(a['fixes'])} (the allocator study, `make "
                     "run_study STUDY=allocators`, measures each)") if a.get("fixes") else ""
            out.append(f"  - where the free memory is: {culprit.arenas_text(a)}{fixes}")
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


def trust_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Every step whose figures should be read with care, and why (infbench/analysis/trust.py)."""
    out = [f"- **{r['variant']}**: {e.get('detail', '')}" for r in rows
           for e in r.get("events") or [] if e.get("kind") == "keepalive_stall"]
    for r in rows:
        for s in r["steps"]:
            for note in s.get("notes") or []:
                out.append(f"- **{r['variant']}** step {s['index']} (b{s['batch']}): {note}")
    return out


def render(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """summary.md of a run."""
    m = info.get("machine", {})
    started = info.get("started")
    out = [f"# infbench run {info.get('run_id')}", ""]
    out.append(f"- status: **{info.get('status')}**"
               + (f" (stopped in {info['stopped_in']})" if info.get("stopped_in") else ""))
    out.append(f"- profile: `{info.get('profile')}`, model: "
               f"`{', '.join(info.get('models', []))}`, runtime: `{info.get('runtime')}`")
    if started:
        out.append(f"- started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
                   f", wall time {fmt(info.get('wall_seconds'))} s")
    out.append(f"- machine: {m.get('cpus')} CPUs ({m.get('cpu')}), {m.get('memory_gib')} GiB, "
               f"Python {m.get('python')}, {m.get('platform')}")
    git = info.get("git", {})
    if git.get("revision"):
        out.append(f"- git: `{git['revision'][:12]}`" + (" (dirty)" if git.get("dirty") else ""))
    memory = tables.memory_table(rows)
    out += ["", f"## {memory.title}", "", *lines(memory)]
    out += section(tables.cgroup_table(rows))
    out += section(tables.processes_table(rows))
    out += section(tables.growth_parts_table(rows))
    judged = tables.verdict_table(rows)
    if not judged.rows:
        why = ("No verdict: this profile has no cycles (it runs its sweep once)"
               if verdict.no_cycles(rows) else
               "No leak/retention/plateau verdict: no variant measured two cycles (the reason "
               "of each is in its summary.json)")
        out += ["", f"{why}. `PROFILE=cycles` repeats the sweep with a rest after each cycle "
                "(and variants with `probes = true` say where the memory is)."]
        out += [f"- WARNING {w}" for w in probe_warnings(rows)]
    else:
        notes = verdict_notes(rows)
        out += ["", f"## {judged.title}", "", *lines(judged), "",
                *([*notes, ""] if notes else []), judged.caption]
        out += section(tables.culprit_table(rows))
    steps = tables.steps_table(rows)
    out += ["", f"## {steps.title}", "", *lines(steps), "", steps.caption]
    out += section(tables.machine_limit_table(rows))
    out += section(tables.limit_table(rows))
    trust_notes = trust_lines(rows)
    if trust_notes:
        out += ["", "## Read with care", "", *trust_notes]
    faults = fault_lines(rows)
    if faults:
        out += ["", "## Faults", "", *faults, "",
                "A fault (a process that exited or appeared, a replica that died, a load "
                "generator that failed, a step whose requests all failed, a damaged file) "
                "marks its step degraded and keeps the run from `complete`. Source: "
                "`<variant>/phases.json` → `events`."]
    out += section(tables.split_table(rows, int(m.get("cpus") or 1)))
    out += section(tables.wire_table(rows))
    out += section(tables.breaking_table(rows, tables.p95_bound(rows)))
    out += section(tables.ranking_table(rows))
    out += section(tables.model_calls_table(rows))
    out += section(tables.versus_table(rows))
    out += section(tables.services_table(rows))
    out += section(tables.cpu_io_table(rows))
    problems = [r for r in rows if r["status"] != "complete"]
    if problems:
        out += ["", "## Not complete", ""]
        for r in problems:
            out.append(f"- **{r['variant']}**: {r['status']}"
                       + (f" in {r['stopped_in']}" if r.get("stopped_in") else "")
                       + (f": {r['error']}" if r.get("error") else ""))
    out += ["", "## Definitions", ""]
    out += [f"- **{k}**: {v}" for k, v in summary.DEFINITIONS.items()]
    out += ["- **cut off**: requests still in flight when a step's drain timeout ended "
            "(started - finished, counted by the locustfile; Locust itself drops them)",
            "- **server busy after**: seconds into the following pause until the server's "
            "CPU fell below 10% of a core for a second - it keeps working on requests whose "
            "clients are gone; 'whole pause' means it never went idle",
            "", "Plots: `memory_overlay.png` here, `<variant>/memory.png` per variant, "
            "`<variant>/memory_parts.png` (RSS as a stack of its parts). "
            "Raw data: `<variant>/mprofile.dat` (`mprof plot` reads it), `phases.json`, "
            "`processes.csv`, "
            "Locust `step*_stats*.csv` / `.html`.", ""]
    return "\n".join(out)
