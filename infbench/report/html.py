"""report.html: one self-contained page per run, to read (and send) instead of a folder.

Its order is the order of the questions: did the run go through (status, faults), what did it
find (verdicts, the variants side by side, comparisons with other runs), then per variant the
memory plots with the phases, the load per step, the per-service table and the time split
when the run has them, and relative links to the raw files and Locust's per-step pages.
Plots are embedded as base64 PNGs and the CSS is inline: the page needs no network, no
JavaScript and no other file to read. Everything that comes from a user or a run (variant
names, error texts, commands) is escaped.

Pure: summary dicts and the run folder in, an HTML string out; `write` puts it on disk through
the one write path.
"""

from __future__ import annotations

import base64
import html
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from infbench.analysis import summary
from infbench.report import compare, tables
from infbench.report.tables import Table
from infbench.results import readers, store
from infbench.results.files import write_text

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_FILE_LINKS = 200
STATUS_CLASS = {"complete": "ok", "degraded": "warn", "partial": "warn", "running": "warn"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Liberation Sans",sans-serif;
 color:#1d2329;margin:0;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:18px 28px 60px;background:#fff}
h1{font-size:1.55em;margin:.3em 0 .2em}h2{font-size:1.25em;margin:1.6em 0 .5em;
 border-bottom:2px solid #e3e6ea;padding-bottom:.2em}h3{font-size:1.05em;margin:1.2em 0 .4em}
.meta{color:#4a5560;margin:.2em 0}.meta span{margin-right:1.2em}
.badge{display:inline-block;padding:.05em .55em;border-radius:.7em;font-weight:600;
 font-size:.9em;color:#fff;background:#b42318}.badge.ok{background:#1a7f37}
.badge.warn{background:#b26b00}
.box{border-left:4px solid #b42318;background:#fdf1f0;padding:.5em .9em;margin:.8em 0}
.box.ok{border-color:#1a7f37;background:#eef8f1}
table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #d5d9de;padding:.25em .55em;vertical-align:top}
th{background:#eef1f4;text-align:left}td.num{white-space:nowrap}td.num,th.num{
 text-align:right;font-variant-numeric:tabular-nums}td:first-child{white-space:nowrap}
tr:nth-child(even) td{background:#fafbfc}
img{max-width:100%;height:auto;border:1px solid #e3e6ea;margin:.3em 0}
nav a{margin-right:.9em}td a{white-space:nowrap}.sig{font-weight:700}
.note{color:#5a6570;font-size:.9em}
code{background:#f0f2f4;padding:0 .25em;border-radius:3px}
details{margin:.4em 0}summary{cursor:pointer;color:#24527a}
ul.files{columns:3;font-size:.85em}
"""


class Raw(str):
    """HTML that is already escaped (or built here); table() does not escape it again."""


def e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def fmt(x: Any, nd: int = 0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)


def signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+,.0f}"


def table(columns: list[str], rows: list[list[Any]], cls: str = "") -> str:
    """An HTML table; a column named with a leading '>' is numeric (right-aligned). Cells
    are escaped unless Raw. No rows: ''."""
    if not rows:
        return ""
    num = [c.startswith(">") for c in columns]
    head = "".join(f"<th{' class=num' if n else ''}>{e(c.lstrip('>'))}</th>"
                   for c, n in zip(columns, num, strict=True))
    body = []
    for row in rows:
        cells = "".join(
            f"<td{' class=num' if n else ''}>{c if isinstance(c, Raw) else e(c)}</td>"
            for c, n in zip(row, num, strict=True))
        body.append(f"<tr>{cells}</tr>")
    return (f"<table{f' class={cls}' if cls else ''}><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>")


def table_of(t: Table) -> str:
    """One of the report's tables (report/tables.py) as HTML, the same rows as summary.md's:
    cells escaped, `**x**` in bold. No rows: ''."""
    return table(list(t.columns),
                 [[Raw(re.sub(r"`([^`]+)`", r"<code>\1</code>",
                              re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", e(c)))) for c in row]
                  for row in t.rows])


def badge(status: Any) -> Raw:
    return Raw(f'<span class="badge {STATUS_CLASS.get(str(status), "bad")}">{e(status)}</span>')


def href(rel: str) -> str:
    return e(quote(rel))


def link(rel: str, text: str) -> Raw:
    return Raw(f'<a href="{href(rel)}">{e(text)}</a>')


def image(path: Path, alt: str) -> str:
    """A PNG as a data URI, or a line saying it is missing."""
    try:
        data = path.read_bytes()
    except OSError:
        return f'<p class="note">no plot: {e(path.name)} is missing</p>'
    if not data.startswith(PNG_MAGIC):
        return f'<p class="note">no plot: {e(path.name)} is not a PNG</p>'
    return (f'<img alt="{e(alt)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode("ascii")}">')


def anchor(n: int, name: str) -> str:
    return f"v{n}-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:60]


def _when(t: Any) -> str:
    if not isinstance(t, int | float):
        return "?"
    return time.strftime("%H:%M:%S", time.localtime(t))


# -- sections ---------------------------------------------------------------------------------
def header(run_dir: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    m = info.get("machine") or {}
    git = info.get("git") or {}
    started = info.get("started")
    parts = [f"<h1>infbench run {e(info.get('run_id') or run_dir.name)}</h1>",
             f'<p class="meta">status {badge(info.get("status"))}'
             + (f" stopped in {e(info['stopped_in'])}" if info.get("stopped_in") else "")
             + (f" — {e(info['error'])}" if info.get("error") else "") + "</p>",
             '<p class="meta">'
             f"<span>profile <code>{e(info.get('profile'))}</code></span>"
             f"<span>model <code>{e(', '.join(info.get('models') or []))}</code></span>"
             f"<span>runtime <code>{e(info.get('runtime'))}</code></span>"
             f"<span>{len(rows)} variant(s)</span></p>",
             '<p class="meta">'
             + (f"<span>started {e(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started)))}"
                f", wall time {e(fmt(info.get('wall_seconds')))} s</span>"
                if isinstance(started, int | float) else "")
             + f"<span>machine: {e(m.get('cpus'))} CPUs ({e(m.get('cpu'))}), "
             f"{e(m.get('memory_gib'))} GiB, Python {e(m.get('python'))}</span>"
             + (f"<span>git <code>{e(str(git['revision'])[:12])}</code>"
                f"{' (dirty)' if git.get('dirty') else ''}</span>" if git.get("revision")
                else "") + "</p>"]
    if info.get("migrated_from"):
        parts.append(f'<p class="note">run.json is version {e(info["migrated_from"])}, read '
                     "through its migration.</p>")
    nav = [f'<a href="#{anchor(n, r["variant"])}">{e(r["variant"])}</a>'
           for n, r in enumerate(rows)]
    parts.append('<nav><a href="#faults">status</a><a href="#verdicts">verdicts</a>'
                 '<a href="#variants">comparison</a>' + "".join(nav)
                 + '<a href="#definitions">definitions</a></nav>')
    return "\n".join(parts)


def faults_section(info: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    items = []
    for r in rows:
        for ev in r.get("events") or []:
            if ev.get("fault"):
                items.append(f"<li>{e(_when(ev.get('t')))} <b>{e(r['variant'])}</b> "
                             f"{e(ev.get('kind'))}"
                             + (f" in {e(ev['phase'])}" if ev.get("phase") else "")
                             + f": {e(ev.get('detail', ''))}</li>")
    not_complete = [f"<li><b>{e(r['variant'])}</b>: {badge(r.get('status'))}"
                    + (f" in {e(r['stopped_in'])}" if r.get("stopped_in") else "")
                    + (f": {e(r['error'])}" if r.get("error") else "") + "</li>"
                    for r in rows if r.get("status") != "complete"]
    out = ['<h2 id="faults">Run status and faults</h2>']
    status = info.get("status")
    if status != "complete":
        out.append(f'<p class="box">The run is {badge(status)}'
                   + (f", stopped in <b>{e(info['stopped_in'])}</b>" if info.get("stopped_in")
                      else "")
                   + (f": {e(info['error'])}" if info.get("error") else "")
                   + ". What was measured is below.</p>")
    if not items and not not_complete:
        if status == "complete":
            out.append('<p class="box ok">No faults: every variant ran to <b>complete</b>.</p>')
        return "\n".join(out)
    if items:
        out.append('<div class="box"><b>Faults</b> (each keeps the run from '
                   f'<code>complete</code>)<ul>{"".join(items)}</ul></div>')
    if not_complete:
        out.append(f'<div class="box"><b>Not complete</b><ul>{"".join(not_complete)}</ul>'
                   "</div>")
    return "\n".join(out)


def verdicts_section(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        v = r.get("verdict") or {}
        where = f" ({v['where']})" if v.get("where") else ""
        per = " → ".join(fmt(x) for x in v.get("post_rest_mb") or []) or "-"
        loaded = ", ".join((v.get("probes") or {}).get("allocators") or []) or "-"
        lines.append([r["variant"], badge(r.get("status")),
                      Raw(f"<b>{e(v.get('verdict', '-'))}</b>{e(where)}"), per,
                      signed(v.get("growth_after_warmup_mb")), loaded, v.get("reason", "")])
    leaks = tables.culprit_table(rows)
    culprits = (f'<h3 id="what-leaks">{e(leaks.title)}</h3>' + table_of(leaks)
                + f'<p class="note">{e(leaks.caption)}</p>') if leaks.rows else ""
    return ('<h2 id="verdicts">Verdicts: leak, allocator retention or plateau</h2>'
            + table(["variant", "status", "verdict", "post-rest MB per cycle",
                     ">growth after warm-up (MB)", "malloc (loaded)", "why"], lines)
            + culprits
            + '<p class="note">A verdict needs a profile with cycles (e.g. <code>PROFILE='
            "cycles</code>) and the server probes (<code>probes = true</code>) to tell a leak "
            "from retention; the rules are in summary.json and the README.</p>")


def _steps_brief(r: dict[str, Any], key: str, nd: int) -> str:
    return " / ".join(fmt(s.get(key), nd) for s in r.get("steps") or []) or "-"


def comparison_section(run_dir: Path, rows: list[dict[str, Any]]) -> str:
    mem = []
    for r in rows:
        m, t = r.get("memory_mb") or {}, r.get("totals") or {}
        mem.append([r["variant"], fmt(m.get("start")), fmt(m.get("end")),
                    signed(m.get("growth")), fmt(m.get("peak")), fmt(m.get("after_cooldown")),
                    fmt(t.get("requests")), fmt(t.get("failures")), fmt(t.get("cut_off")),
                    _steps_brief(r, "rps", 2), _steps_brief(r, "p50_ms", 0),
                    badge(r.get("status"))])
    out = ['<h2 id="variants">The variants side by side</h2>',
           table(["variant", ">after API start (MB)", ">after test (MB)", ">growth (MB)",
                  ">peak (MB)", ">after cooldown (MB)", ">requests", ">failures", ">cut off",
                  ">req/s per step", ">p50 ms per step", "status"], mem),
           '<p class="note">Memory: mprof\'s MEM (server and children). Per-step figures in '
           "step order, as in each variant's load table below.</p>"]
    procs = []
    for r in rows:
        p = r.get("processes_mb")
        if not p:
            continue
        spans = [f"{fmt(p[k]['start'])} → {fmt(p[k]['end'])} ({signed(p[k]['growth'])})"
                 for k in ("rss", "pss", "uss", "anon", "file") if k in p]
        if len(spans) == 5:
            procs.append([r["variant"], fmt(p.get("processes_max")), *spans,
                          fmt(p.get("threads_max"))])
    if procs:
        out += ["<h3>Where the memory is (per-process sampler, after API start → after "
                "test)</h3>",
                table(["variant", ">processes", "RSS sum (MB)", "PSS (MB)", "USS (MB)",
                       "anonymous (MB)", "file-backed (MB)", ">threads (max)"], procs)]
    cg = tables.cgroup_table(rows)
    if cg.rows:
        out += [f"<h3>{e(cg.title)}</h3>", table_of(cg), f'<p class="note">{e(cg.caption)}</p>']
    for t, caption in study_tables(rows):
        out += [f"<h3>{e(t.title)}</h3>", table_of(t),
                f'<p class="note">{e(caption)}</p>' if caption else ""]
    out.append(image(run_dir / "memory_overlay.png", "memory of every variant over time"))
    return "\n".join(out)


def study_tables(rows: list[dict[str, Any]]) -> list[tuple[Table, str]]:
    """The cross-variant tables summary.md has for studies (the machine's limit and each step
    against it, breaking point, ranking by images/s, each variant against the first), when the
    run has them, each with the page's own (shorter) caption or the table's; the CPU-or-IO
    table per service and step, with its own."""
    io = tables.cpu_io_table(rows)
    machine, served = tables.machine_limit_table(rows), tables.limit_table(rows)
    ranking = tables.ranking_table(rows)
    calls = tables.model_calls_table(rows)
    found = [(machine, machine.caption), (served, served.caption),
             (tables.breaking_table(rows, tables.p95_bound(rows)),
              "The highest requests/s among the steps before the first that broke, and the "
              "users at which it broke."),
             (ranking, ranking.caption),
             (calls, calls.caption),
             (tables.versus_table(rows),
              "Change from the first variant of this run; one run each: read differences "
              "under ~15% as noise (make compare tests them across runs)."),
             (io, io.caption)]
    return [(t, caption) for t, caption in found if t.rows]


def comparisons_section(results: list[dict[str, Any]], errors: list[str]) -> str:
    if not results and not errors:
        return ""
    out = ['<h2 id="compare">Compared with other runs</h2>']
    out += [f'<p class="box">{e(msg)}</p>' for msg in errors]
    for res in results:
        a, b = res["a"], res["b"]
        out.append(f"<h3>{e(a['run'])} (A) → {e(b['run'])} (B)</h3>")
        if res.get("differences"):
            out.append(f'<p class="box">Compared with --force although they differ: '
                       f"{e('; '.join(res['differences']))}</p>")
        out.append(f"<p><b>{e(compare.headline(res))}</b></p>")
        lines = []
        for v in res["variants"]:
            for row in v["rows"]:
                p = "-" if row.get("p") is None else \
                    f"{row['p']:.3g} ({row['n_a']} / {row['n_b']})"
                says = Raw(f'<span class="sig">{e(row["says"])}</span>') \
                    if row.get("significant") else row["says"]
                lines.append([v["variant"], row["metric"], compare.where(row),
                              compare._num(row.get("a"), row.get("unit", "")),
                              compare._num(row.get("b"), row.get("unit", "")),
                              compare.change_text(row), p, says])
        out.append(table(["variant", "metric", "where", ">A", ">B", ">change",
                          ">p (n A / B)", "significant?"], lines))
        st = res.get("settings") or {}
        out.append(f'<p class="note">{e(st.get("test"))}; a change below '
                   f'{e(fmt(100 * float(st.get("min_effect", 0)), 0))}% of A (memory: also '
                   f'below {e(fmt(st.get("memory_noise_mb")))} MB) is not significant before '
                   "any test. Files: "
                   + str(link(compare.output_names(res)[1], compare.output_names(res)[1]))
                   + "</p>")
    return "\n".join(out)


def load_table(vd_rel: str, vd: Path, r: dict[str, Any]) -> str:
    lines = []
    for s in r.get("steps") or []:
        page = f"step{s.get('index')}-b{s.get('batch')}.html"
        locust = link(f"{vd_rel}/{page}", "Locust page") if (vd / page).exists() else "-"
        busy = fmt(s.get("server_busy_after_s"), 1) if s.get("server_busy_after_s") \
            is not None else ("whole pause" if s.get("pause_s") else "-")
        lines.append([fmt(s.get("index")), fmt(s.get("batch")), fmt(s.get("users")),
                      fmt(s.get("requests")), fmt(s.get("failures")), fmt(s.get("cut_off")),
                      fmt(s.get("rps"), 2), fmt(s.get("images_per_s"), 1),
                      fmt(s.get("p50_ms")), fmt(s.get("p95_ms")), fmt(s.get("mem_end_mb")),
                      busy, badge(s.get("status") or "complete"), locust])
    if not lines:
        return '<p class="note">No step ran.</p>'
    return table([">step", ">img/req", ">users", ">requests", ">failures", ">cut off", ">req/s",
                  ">img/s", ">p50 (ms)", ">p95 (ms)", ">MB at end", ">server busy after (s)",
                  "status", "Locust"], lines)


def services_table(r: dict[str, Any]) -> str:
    lines = []
    for name, sv in (r.get("services") or {}).items():
        m = sv.get("memory_mb") or {}
        steps = sv.get("steps") or []
        lines.append([name, fmt(sv.get("replicas")), fmt(m.get("start")), fmt(m.get("end")),
                      signed(m.get("growth")), fmt(m.get("peak")),
                      " / ".join(fmt(st.get("cpu_pct")) for st in steps) or "-",
                      " / ".join(fmt(st.get("rss_mb")) for st in steps) or "-"])
    return table(["service", ">replicas", ">start (MB)", ">after test (MB)", ">growth (MB)",
                  ">peak (MB)", "CPU % per step", "RSS MB per step"], lines)


def split_table(r: dict[str, Any], cores: int) -> str:
    steps = {s.get("index"): s for s in r.get("steps") or []}
    lines = []
    for sp in r.get("split") or []:
        split = sp.get("split") or {}
        parts = ", ".join(f"{k.removesuffix('_ms').replace('_', ' ')} {fmt(v)}"
                          for k, v in split.items()
                          if k.endswith("_ms") and k != "total_ms" and v is not None)
        kinds = ", ".join(f"{k}: {n}" for k, n in sorted((sp.get("failures_by_kind")
                                                          or {}).items()))
        st = steps.get(sp.get("index"), {})
        lines.append([fmt(sp.get("index")), fmt(st.get("users")), fmt(st.get("rps"), 2),
                      fmt(split.get("total_ms")), parts or "-", fmt(split.get("mean_batch"), 1),
                      kinds or "0",
                      summary.bottleneck(split, r.get("services"), sp.get("index", 0), cores)])
    return table([">step", ">users", ">req/s", ">server median (ms)", "of it (median ms)",
                  ">jobs per model call", "failures by kind", "bottleneck"], lines)


def file_links(run_dir: Path, vd: Path) -> str:
    found = sorted(p for p in vd.rglob("*") if p.is_file() and not p.name.endswith(".tmp"))
    items = [f"<li>{link(p.relative_to(run_dir).as_posix(), p.relative_to(vd).as_posix())}"
             "</li>" for p in found[:MAX_FILE_LINKS]]
    more = f"<li>… and {len(found) - MAX_FILE_LINKS} more</li>" \
        if len(found) > MAX_FILE_LINKS else ""
    return (f"<details><summary>Raw files ({len(found)}): mprofile.dat, phases.json, "
            f"processes.csv, Locust CSVs, server log…</summary><ul class=files>{''.join(items)}"
            f"{more}</ul></details>")


def variant_section(run_dir: Path, n: int, r: dict[str, Any], cores: int) -> str:
    name = r["variant"]
    vd = run_dir / name
    rel = vd.relative_to(run_dir).as_posix()
    m = r.get("memory_mb") or {}
    out = [f'<h2 id="{anchor(n, name)}">{e(name)} {badge(r.get("status"))}</h2>']
    if r.get("error"):
        out.append(f'<p class="box">{e(r["error"])}</p>')
    out.append(f'<p class="meta">after API start {e(fmt(m.get("start")))} MB → after test '
               f'{e(fmt(m.get("end")))} MB ({e(signed(m.get("growth")))}), peak '
               f'{e(fmt(m.get("peak")))} MB, after cooldown {e(fmt(m.get("after_cooldown")))} '
               f'MB; verdict <b>{e((r.get("verdict") or {}).get("verdict", "-"))}</b></p>')
    out.append(image(vd / "memory.png", f"{name}: memory over time, phases shaded"))
    if (vd / "memory_parts.png").exists():
        out.append(image(vd / "memory_parts.png", f"{name}: RSS part by part"))
    out += ["<h3>Load per step (Locust)</h3>", load_table(rel, vd, r)]
    services = services_table(r)
    if services:
        out += ["<h3>Per service (memory by mprof, replicas summed; CPU % of one core and RSS "
                "at the end of each step)</h3>", services]
    split = split_table(r, cores)
    if split:
        out += ["<h3>Where the time goes, and the bottleneck (per step)</h3>", split]
        if (vd / "time_split.png").exists():
            out.append(image(vd / "time_split.png", f"{name}: where the time goes, per step"))
    wire = tables.wire_table([r])
    if wire.rows:
        found = "".join(f"<li>step {e(f.get('step'))}: {e(f.get('detail'))}</li>"
                        for f in (r.get("wire") or {}).get("findings") or [])
        out += [f"<h3>{e(wire.title)}</h3>", table_of(wire),
                f'<p class="note">{e(wire.caption)}</p>',
                f"<p><b>The wire says</b>:</p><ul>{found}</ul>" if found else ""]
    out.append(file_links(run_dir, vd) if vd.is_dir() else "")
    return "\n".join(out)


def definitions_section() -> str:
    items = "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in summary.DEFINITIONS.items())
    return (f'<h2 id="definitions">Definitions</h2><ul>{items}'
            "<li><b>cut off</b>: requests still in flight when a step's drain timeout ended"
            "</li><li><b>server busy after</b>: seconds into the following pause until the "
            "server's CPU went idle</li></ul>"
            '<p class="note">Also in this folder: <a href="summary.md">summary.md</a>, '
            '<a href="summary.csv">summary.csv</a>, <a href="run.json">run.json</a>.</p>')


# -- the page -------------------------------------------------------------------------------
def render(run_dir: Path, info: dict[str, Any], rows: list[dict[str, Any]],
           comparisons: list[dict[str, Any]] | None = None,
           comparison_errors: list[str] | None = None) -> str:
    cores = int((info.get("machine") or {}).get("cpus") or 1)
    body = [header(run_dir, info, rows), faults_section(info, rows), verdicts_section(rows),
            comparison_section(run_dir, rows),
            comparisons_section(comparisons or [], comparison_errors or [])]
    body += [variant_section(run_dir, n, r, cores) for n, r in enumerate(rows)]
    body.append(definitions_section())
    title = f"infbench {info.get('run_id') or run_dir.name}"
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            '<meta name=viewport content="width=device-width, initial-scale=1">'
            f"<title>{e(title)}</title><style>{CSS}</style></head>\n<body><main>\n"
            + "\n".join(x for x in body if x) + "\n</main></body></html>\n")


def comparisons_in(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The comparisons written into this run's folder (this run as B), and one line for each
    that cannot be read."""
    found, errors = [], []
    for path in sorted(run_dir.glob("compare-*.json")):
        try:
            found.append(compare.read_result(path))
        except readers.ReadError as err:
            errors.append(str(err))
    return found, errors


def write(run_dir: Path, info: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """report.html into the run folder, with any comparisons found there."""
    found, errors = comparisons_in(run_dir)
    out = run_dir / "report.html"
    write_text(out, render(run_dir, info, rows, found, errors))
    return out


def rebuild(run_dir: Path) -> Path:
    """report.html from the files already there (summary.json per variant), without redoing
    the analysis or the plots (used after `compare` adds a comparison)."""
    info = readers.run_json(run_dir)
    rows = [readers.summary_json(vd) for vd in store.variant_dirs(run_dir, info)
            if (vd / "summary.json").exists()]
    return write(run_dir, info, rows)
