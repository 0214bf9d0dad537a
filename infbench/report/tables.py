"""The tables of a run's report, built once as data: summary.md (report/markdown.py), the
console and report.html (report/html.py) each render the same `Table`.

A column named with a leading '>' holds figures (right-aligned). Cells are plain text, already
formatted; `**x**` marks emphasis, which each renderer shows its own way (bold in both). A
table with no rows is left out of a report (its title and caption with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infbench.analysis import cpu_io, summary, verdict
from infbench.results import schemas


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


Rows = list[dict[str, Any]]


def table(title: str, columns: list[str], lines: list[list[str]], caption: str = "") -> Table:
    return Table(title, tuple(columns), tuple(tuple(line) for line in lines), caption)


# -- figures as text --------------------------------------------------------------------------
def fmt(x: Any, nd: int = 0) -> str:
    """A figure for a table: "-" for none, thousands separated, `nd` decimals for floats."""
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def signed(x: float | None) -> str:
    return "-" if x is None else f"{x:+,.0f}"


def pct_change(new: float | None, old: float | None) -> str:
    if new is None or old in (None, 0):
        return "-"
    assert old is not None
    return f"{100.0 * (new - old) / old:+.0f}%"


def loadgen_cpu(step: dict[str, Any]) -> float | None:
    """Locust's CPU over the step's load, all its processes, % of one core (a summary from
    before `total_cpu_pct` gives its busiest process's, the same figure for one process)."""
    g = step.get("loadgen") or {}
    return g.get("total_cpu_pct", g.get("cpu_pct"))


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


def _of_limit(step: dict[str, Any]) -> str:
    return fmt((step.get("limit") or {}).get("fraction"), 2)


# -- the tables -------------------------------------------------------------------------------
def memory_table(rows: Rows) -> Table:
    lines = []
    for r in rows:
        m, t = r["memory_mb"], r["totals"]
        lines.append([r["variant"], fmt(m["start"]), fmt(m["end"]), signed(m["growth"]),
                      fmt(m["peak"]), fmt(m["after_cooldown"]), fmt(t["requests"]),
                      fmt(t["failures"]), fmt(t["cut_off"]), str(r["status"])])
    return table("Memory (server + children, mprof)",
                 ["variant", ">after API start (MB)", ">after test (MB)", ">growth (MB)",
                  ">peak (MB)", ">after cooldown (MB)", ">requests", ">failures", ">cut off",
                  "status"], lines)


def cgroup_table(rows: Rows) -> Table:
    """Docker runs: the container's cgroup memory (`docker stats`) beside mprof's figures."""
    lines = []
    for r in rows:
        c = r.get("cgroup_memory_mb")
        if not c:
            continue
        mp = r["memory_mb"].get("peak")
        diff = c["peak"] - mp if c.get("peak") is not None and mp is not None else None
        anon = (r.get("cgroup_anon_mb") or {}).get("growth")
        lines.append([r["variant"], fmt(c["start"]), fmt(c["end"]), signed(c["growth"]),
                      signed(anon), fmt(c["peak"]), fmt(c["after_cooldown"]), signed(diff)])
    return table(
        "Memory of the container (cgroup, as `docker stats` shows it)",
        ["variant", ">after API start (MB)", ">after test (MB)", ">growth (MB)",
         ">anonymous growth (MB)", ">peak (MB)", ">after cooldown (MB)",
         ">peak - mprof peak (MB)"], lines,
        "The container's memory cgroup: usage minus inactive file cache, sampled at "
        "mprof's interval. It counts each page once, with kernel memory; file pages "
        "(the libraries' code) count only if this container read them first, so it "
        "can sit far below mprof's RSS sum (which counts them in every process), and "
        "grow by more than mprof as the load moves those pages to the active list. Its "
        "anonymous growth (memory.stat) holds no file pages: that is the "
        "figure to set beside mprof's growth. Source: `<variant>/cgroup_memory.csv`.")


def processes_table(rows: Rows) -> Table:
    """Where the memory is: the sampler's figures, start -> end, summed over processes."""
    lines = []
    for r in rows:
        p = r.get("processes_mb")
        if not p:
            continue
        spans = [f"{fmt(p[k]['start'])} → {fmt(p[k]['end'])} ({signed(p[k]['growth'])})"
                 for k in ("rss", "pss", "uss", "anon", "file")]
        lines.append([r["variant"], str(p["processes_max"]), *spans, str(p["threads_max"])])
    return table(
        "Where the memory is (per-process sampler, after API start → after test)",
        ["variant", ">processes", "RSS sum (MB)", "PSS (MB)", "USS (MB)", "anonymous (MB)",
         "file-backed (MB)", ">threads (max)"], lines,
        "RSS summed over processes counts shared pages (libraries, a forked "
        "master's pages) once per process, as mprof's MEM does; PSS counts them "
        "once. Anonymous memory is the heap, allocator arenas, thread stacks and "
        "tensors: where growth under load lives. Source: `<variant>/processes.csv`.")


def growth_parts_table(rows: Rows) -> Table:
    """Where the growth went: each part of RSS, end of baseline -> end of cooldown."""
    lines = []
    for r in rows:
        b = r.get("breakdown_mb") or {}
        a, s, g = b.get("after_cooldown"), b.get("start"), b.get("growth")
        if not (b.get("probed") and a and s and g):
            continue
        lines.append([r["variant"], f"{fmt(s['rss_mb'])} → {fmt(a['rss_mb'])}",
                      signed(g["rss_mb"]), signed(g["malloc_in_use_mb"]),
                      signed(g["malloc_free_mb"]), signed(g["other_anon_mb"]),
                      signed(g["file_mb"]), signed(g["python_traced_mb"]),
                      fmt(a["named_pct"])])
    return table(
        "Where the growth went (probed variants, end of baseline → end of cooldown, MB)",
        ["variant", "RSS (MB)", ">growth", ">malloc in use", ">malloc free (kept)",
         ">other anonymous", ">file-backed", ">Python heap (traced)",
         ">named at end (% of RSS)"], lines,
        "malloc in use and free are glibc's own figures (mallinfo2, all processes); "
        "other anonymous is the anonymous RSS malloc does not account for (Python's "
        "small-object arenas, thread stacks, TensorFlow's own mappings); the four "
        "parts add up to RSS. Plots: `<variant>/memory_parts.png`.")


def culprit_table(rows: Rows) -> Table:
    """What leaks: per variant with a culprit (analysis/culprit.py), the types that grew most
    (heap census) and the lines that kept what the culprit window traced."""
    lines = []
    for r in rows:
        c = (r.get("verdict") or {}).get("culprit") or {}
        for t in c.get("types") or []:
            lines.append([r["variant"], "type", f"`{t['type']}`",
                          f"{t['mb_per_cycle']:+,.2f}", f"{t['objects_per_cycle']:+,}",
                          f"{fmt(t['mb'], 1)} MB in {fmt(t['objects'])} objects at the last rest"])
        win = c.get("window") or {}
        for line in win.get("lines") or []:
            via = " → ".join(line.get("stack") or [])
            at = "" if line["at"] == line["where"] else f"allocated in `{line['at']}`; "
            lines.append([r["variant"], "line", f"`{line['where']}`", "-", "-",
                          f"{fmt(line['kept_mb'], 2)} MB in {fmt(line['blocks'])} blocks alive "
                          f"after the window; {at}called from {via or '-'}"])
        nat = c.get("native") or {}
        for st in nat.get("stacks") or []:
            lines.append([r["variant"], "native stack", f"`{st['function']}` ({st['library']})",
                          "-", "-", f"{fmt(st['mb'], 2)} MB in {fmt(st['blocks'])} blocks alive "
                          f"after the window; {' ← '.join(st.get('stack') or [])}"])
        if nat.get("unavailable") or nat.get("errors"):
            lines.append([r["variant"], "native stack", "-", "-", "-",
                          "heaptrack: " + "; ".join([nat["unavailable"]] if nat.get(
                              "unavailable") else nat["errors"])])
        if win and not win.get("lines"):
            why = "; ".join(win.get("skipped") or []) or "nothing it traced was still alive"
            lines.append([r["variant"], "line", "-", "-", "-", f"culprit window: {why}"])
    return table(
        "What leaks", ["variant", "by", "what", ">MB / cycle", ">objects / cycle", "detail"],
        lines,
        "By type: the heap census at each rest (bytes by sys.getsizeof, summed over processes), "
        "the growth from the first rest after warm-up to the last. By line: the culprit "
        "window, after the judged cycles (one more step of load and a rest traced by "
        "tracemalloc, opened when the census climbed in every cycle, or with `culprit = "
        "\"always\"`): what was allocated in it and is still alive, by the most recent line of "
        "the server's own code (frames of the standard library and installed packages folded; "
        "`allocated in` is the line inside them). Its load is slower than the cycles' "
        "(tracemalloc), so its MB are a sample, not the rate.")


def verdict_table(rows: Rows) -> Table:
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
                      signed(v.get("growth_after_warmup_mb")),
                      signed(v.get("growth_per_cycle_mb")),
                      fmt(v.get("growth_per_1000_requests_mb"), 2),
                      fmt(v.get("trim_freed_mb")), v.get("reason", "")])
    return table(
        "Leak, allocator retention or plateau",
        ["variant", "malloc (loaded)", "verdict", "post-rest MB per cycle",
         ">growth after warm-up (MB)", ">growth / cycle (MB)", ">per 1,000 requests (MB)",
         ">malloc_trim gave back (MB)", "why"], lines,
        "Memory is compared at the end of each cycle's rest, with the first cycle "
        "as warm-up; a verdict needs at least "
        f"{schemas.MIN_CYCLES} cycles (a profile with `cycles`, e.g. "
        "`PROFILE=cycles`). What the allocator holds is read by the server probes "
        "(`probes = true`, injected into any Python server) or from outside by a "
        "debugger (any glibc process); the Python heap in bytes (tracemalloc, on "
        "with the probes) tells a leak of Python objects from a native one. The "
        "rules and thresholds are in `summary.json` and the README.")


def steps_table(rows: Rows) -> Table:
    lines = []
    for r in rows:
        for s in r["steps"]:
            lines.append([r["variant"], str(s["index"]), str(s["batch"]), _load_of(s),
                          fmt(s["requests"]), fmt(s["failures"]), fmt(s["cut_off"]),
                          fmt(s["rps"], 2), fmt(s["images_per_s"], 1), fmt(s["p50_ms"]),
                          fmt(s["p95_ms"]), _yes_no(s.get("stable")),
                          _yes_no(s.get("memory_flat")), _gen(s), _eff(s), _of_limit(s),
                          fmt(s["mem_end_mb"]), _busy(s)])
    return table(
        "Load per step (Locust)",
        ["variant", ">step", ">img/req", "load", ">requests", ">failures", ">cut off",
         ">req/s", ">img/s", ">p50 (ms)", ">p95 (ms)", "stable", "memory flat",
         ">load gen (% core)", ">efficiency", ">of the limit", ">MB at end",
         ">server busy after (s)"], lines,
        "req/s: every request, failed or not (Locust's); img/s: the requests that "
        "succeeded, per second, times their images; "
        "stable: the last windows' throughput and p50 agreed (see Definitions); load "
        "gen: the busiest 5 s of Locust's CPU + run-queue wait, **limited** from 90%; "
        "efficiency: served images/s over decode + model alone at the step's batch, one "
        "after the other on one thread (model_alone.json); of the limit: served images/s "
        "over the machine's limit (the cores over the CPU per image; see that table). "
        "An open-loop load (`N/s`) measures latency from each request's intended send "
        "time.")


def machine_limit_table(rows: Rows) -> Table:
    """Each variant's machine limit (summary.json "machine_limit"), from its model alone."""
    lines = []
    for r in rows:
        m = r.get("machine_limit")
        if not m:
            continue
        if m.get("images_per_s") is None:
            lines.append([r["variant"], "-", "-", "-", "-", "-", "-", "-",
                          f"no limit: {m.get('why')}"])
            continue
        best: dict[str, Any] = next((b for b in m.get("batches") or []
                                     if b["batch"] == m["best_batch"]), {})
        cores = fmt(m["usable_cores"], 2 if m["usable_cores"] % 1 else 0)
        lines.append([r["variant"], f"{cores} ({m.get('cores_from') or '-'})",
                      fmt(m["best_batch"]), fmt(m["decode_cpu_ms_per_image"], 2),
                      fmt(m["model_cpu_ms_per_image"], 2), fmt(best.get("model_cores"), 2),
                      fmt(m["cpu_ms_per_image"], 2), fmt(m["images_per_s"], 0),
                      ", ".join(f"b{b['batch']}: {fmt(b['images_per_s'], 0)}"
                                for b in m.get("batches") or [])
                      + (f"; **read with care**: {m['busy']}" if m.get("busy") else "")])
    return table(
        "The machine's limit (model alone, CPU per image)",
        ["variant", "usable cores (from)", ">best batch", ">decode CPU (ms/img)",
         ">model CPU (ms/img)", ">model cores busy", ">decode + model CPU (ms/img)",
         ">limit (img/s)", "limit at each batch (img/s)"], lines,
        "The model-alone child's process CPU time (every thread, not wall time) per image "
        "of decode alone and of the model alone at each batch; the limit is the usable "
        "cores (CPU affinity, capped by a cgroup CPU quota) over their sum at the best "
        "batch: what the cores could serve doing nothing but decode and the model. It "
        "leaves out HTTP, parsing and the event loop (the server's overhead) and whatever "
        "else shares the cores, the load generator first (the next table takes its CPU "
        "off). Model cores busy: the model call's CPU over its wall time.")


def limit_table(rows: Rows) -> Table:
    """Per step: served images/s, the sequential reference and the share of the limit."""
    lines = []
    for r in rows:
        for s in r.get("steps") or []:
            lim, eff = s.get("limit"), s.get("efficiency") or {}
            if not lim:
                continue
            lines.append([r["variant"], str(s["index"]), str(s["batch"]),
                          fmt(s.get("images_per_s"), 1),
                          fmt(eff.get("decode_model_images_per_s"), 1),
                          fmt(eff.get("efficiency"), 2), fmt(lim["images_per_s"], 0),
                          fmt(lim.get("fraction"), 2), fmt(lim.get("loadgen_cores"), 2),
                          fmt(lim.get("images_per_s_net"), 0), fmt(lim.get("fraction_net"), 2),
                          fmt(lim.get("server_cores"), 2),
                          fmt(lim.get("server_cpu_ms_per_image"), 2),
                          fmt(lim.get("beyond_model_cpu_ms_per_image"), 2),
                          fmt(lim.get("main_thread_cpu_ms_per_image"), 2),
                          fmt(lim.get("cores_share"), 2), fmt(lim.get("cpu_share"), 2)])
    return table(
        "Served against the sequential reference and the machine's limit (per step)",
        ["variant", ">step", ">img/req", ">served img/s", ">sequential img/s",
         ">efficiency", ">limit img/s", ">of the limit", ">load gen cores",
         ">limit net of it", ">of that", ">server cores", ">server CPU (ms/img)",
         ">beyond decode + model (ms/img)", ">main thread (ms/img)", ">cores share",
         ">CPU share"], lines,
        "Sequential: decode + model alone at the step's batch, one after the other on one "
        "thread (efficiency = served / it; above 1 where the server decodes while the "
        "model runs). Limit: the cores over the CPU per image of decoding the images this "
        "step sends (the model alone decoded the same ones at this batch) and of the "
        "model at its cheapest batch (the table above). Load gen cores: Locust's CPU over "
        "the step, all its processes, on the same cores; the net limit takes it off. "
        "Server CPU per image: the services' processes over the step (`processes.csv`) "
        "per image sent; beyond decode + model is what serving adds: HTTP, multipart, "
        "JSON, the event loop and batching, and the model at a smaller batch than its "
        "cheapest; main thread: the CPU of the server processes' main threads, an asyncio "
        "server's event loop (HTTP, multipart, the coroutines, the answers). Of the limit "
        "~ cores share * CPU share: server cores / usable cores "
        "(low: too little work in flight, or the cores busy with others; see the "
        "CPU-or-IO table's wait share) times the limit's CPU per image / the server's "
        "(low: serving overhead).")


def split_table(rows: Rows, cores: int) -> Table:
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
    return table(
        "Where the time goes, and the bottleneck (per step)",
        ["variant", ">step", ">users", ">req/s", ">p50 (ms)", ">p95 (ms)", "failures by kind",
         ">server median (ms)", "of it (median ms)", ">jobs per model call", "bottleneck",
         ">load gen CPU (%)"], lines,
        "Medians over the requests each step received, from the servers' own timing "
        "lines (`<service>-<i>/timings-<pid>.jsonl`): for the queue, wait = dequeued "
        "- enqueued, model = model done - model start, API = the rest of the API's "
        "time. Failures by kind from Locust's `*_failures.csv`. The sentence names the "
        "largest part, with the busiest service's CPU; load gen CPU: Locust's, all "
        "its processes over the step's load, % of one core.")


def model_calls_table(rows: Rows) -> Table:
    """Per variant and step, what its model did (summary.json "model_calls")."""
    lines = []
    for r in rows:
        steps = {s["index"]: s for s in r.get("steps", [])}
        for c in r.get("model_calls") or []:
            st = steps.get(c["index"], {})
            lines.append([r["variant"], str(c["index"]), fmt(c.get("batch")),
                          fmt(st.get("images_per_s"), 1), fmt(c["calls_per_s"], 1),
                          fmt(c["images_per_call"], 1), fmt(c["largest"]),
                          fmt(c.get("requests_per_call"), 1), fmt(c["model_ms_p50"], 1),
                          fmt(c.get("model_ms_per_image"), 2), _share(c["model_busy"]),
                          fmt(c.get("calls_at_once"), 1), fmt(c.get("wait_ms_p50"), 1),
                          fmt(c.get("wait_max_ms"), 1)])
    return table(
        "Model calls: the batches each server formed, and how busy its model was (per step)",
        ["variant", ">step", ">img/req", ">img/s served", ">calls/s", ">images per call",
         ">largest", ">requests per call", ">call p50 (ms)", ">model ms per image",
         ">model busy", ">calls at once", ">wait p50 (ms)", ">wait max (ms)"], lines,
        "From the servers' own model-call lines (`<service>-<i>/calls-<pid>.jsonl`, "
        "INFBENCH_MODEL_CALLS=1), the calls that started in the step's load. Requests per "
        "call over 1 is batching across requests. Model busy: the share of the step's wall "
        "time a call was running, per process (overlapping calls count once): near 100% the "
        "model is what limits; lower, the requests reached it late (HTTP, multipart, decode, "
        "the event loop, the batcher's wait). Calls at once: how many ran together while any "
        "ran (a sync app's threadpool runs one per request in flight; they share the cores, "
        "so each is slower, and model ms per image is their summed time). Wait: from a "
        "request joining the batcher's queue to its call, where the server knows it (our "
        "batching app, Ray Serve's replica; - elsewhere).")


def p95_bound(rows: Rows) -> float:
    """The study's latency bound for the breaking point (the profile's `p95_bound_ms`)."""
    return float((rows[0].get("profile") or {}).get("p95_bound_ms") or 0) if rows else 0.0


def breaking_table(rows: Rows, bound: float) -> Table:
    lines = []
    for r in rows:
        b = summary.breaking_point(r.get("steps", []), bound)
        if b:
            lines.append([r["variant"], fmt(b["sustainable_rps"], 2), fmt(b["at_users"]),
                          fmt(b["broke_at_users"]), b["why"]])
    return table(
        f"Breaking point (p95 ≤ {bound:g} ms, failures ≤ 1%)",
        ["variant", ">sustainable req/s", ">at users", ">broke at users", "why"], lines,
        "The highest requests/s among the steps before the first that broke, "
        "and the users at which it broke (per-step figures from Locust).")


def ranking_table(rows: Rows) -> Table:
    """Variants ranked by images/s at each batch size (studies that sweep the batch)."""
    by_batch: dict[int, list[tuple[float, str, dict[str, Any]]]] = {}
    for r in rows:
        for s in r.get("steps", []):
            if s.get("images_per_s") is not None:
                by_batch.setdefault(s["batch"], []).append((s["images_per_s"], r["variant"], s))
    lines = []
    if len(rows) >= 2 and len(by_batch) >= 2:
        by_name = {r["variant"]: r for r in rows}
        for batch in sorted(by_batch):
            ranked = sorted(by_batch[batch], key=lambda x: -x[0])
            for rank, (ips, name, s) in enumerate(ranked, 1):
                server, model, cpu = step_server_figures(by_name[name], s["index"])
                share = f"{100.0 * model / server:.0f}%" if model is not None and server \
                    else "-"
                lines.append([str(batch), str(rank), name, fmt(ips, 1), _of_limit(s),
                              fmt(s.get("p50_ms")),
                              fmt(s.get("p95_ms")), fmt(s.get("failures")), fmt(server),
                              fmt(model), share, fmt(cpu), fmt(loadgen_cpu(s))])
    return table(
        "Ranking by images/s at each batch size",
        [">img/req", ">rank", "variant", ">img/s", ">of the limit", ">p50 (ms)", ">p95 (ms)",
         ">failures", ">server median (ms)", ">model (ms)", ">model share",
         ">busiest service CPU (%)", ">load gen CPU (%)"], lines,
        "Of the limit: images/s over the machine's limit measured for that variant "
        "(\"The machine's limit\"; - where the run did not measure the model alone).")


def versus_table(rows: Rows) -> Table:
    """Each variant against the first, step by step."""
    lines = []
    base = {s["index"]: s for s in rows[0].get("steps", [])} if rows else {}
    for r in rows[1:]:
        for s in r.get("steps", []):
            b = base.get(s["index"])
            if not b:
                continue
            lines.append([r["variant"], str(s["index"]), fmt(s.get("users")),
                          f"{fmt(b.get('rps'), 2)} → {fmt(s.get('rps'), 2)}",
                          pct_change(s.get("rps"), b.get("rps")),
                          f"{fmt(b.get('p50_ms'))} → {fmt(s.get('p50_ms'))}",
                          pct_change(s.get("p50_ms"), b.get("p50_ms")),
                          pct_change(s.get("p95_ms"), b.get("p95_ms"))])
    return table(
        f"Against {rows[0]['variant'] if rows else '-'} (per step)",
        ["variant", ">step", ">users", "req/s", ">req/s change", "p50 (ms)", ">p50 change",
         ">p95 change"], lines,
        "Change in throughput and latency from the first variant of the run, step "
        "by step: a positive req/s change and a negative latency change are "
        "improvements. One run each: read differences under ~15% as noise.")


def services_table(rows: Rows) -> Table:
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
                          fmt(m["end"]), signed(m["growth"]), fmt(m["peak"]), cpu, gen, rss])
    return table(
        "Per service (memory by mprof, replicas summed; CPU % of one core and RSS at the end "
        "of each step, from processes.csv)",
        ["variant", "service", ">replicas", ">start (MB)", ">after test (MB)", ">growth (MB)",
         ">peak (MB)", "CPU % per step", "load gen CPU % per step", "RSS MB per step"], lines,
        "load gen CPU: Locust's own over each step's load, all its processes, % of "
        "one core (`step*_loadgen.csv`), beside the service's: both share the "
        "machine's cores. The Load table's load gen column is its busiest 5 s of "
        "CPU + run-queue wait, the figure that flags **limited**.")


def _share(x: float | None) -> str:
    return "-" if x is None else f"{100.0 * x:.0f}%"


def cpu_io_table(rows: Rows) -> Table:
    """CPU or IO bound, per service and step (summary.json's "cpu_io")."""
    lines = []
    why = ""
    for r in rows:
        found = r.get("cpu_io") or {}
        energy = found.get("energy") or {}
        if not energy.get("available"):
            why = why or str(energy.get("why") or "")
        for st in found.get("steps") or []:
            joules = st.get("energy_j_per_request")
            lines.append([r["variant"], st["service"], str(st["index"]), fmt(st.get("requests")),
                          fmt(st.get("cpu_ms_per_request"), 1),
                          fmt(st.get("run_wait_ms_per_request"), 1),
                          _share(st.get("wait_share")),
                          _share(st.get("off_cpu_share")) if st.get("off_cpu_share") is not None
                          else cpu_io.NOT_MEASURED,
                          fmt(joules, 3) if joules is not None else cpu_io.NOT_AVAILABLE,
                          st.get("reading") or "-"])
    return table(
        "CPU or IO bound (per service and step)",
        ["variant", "service", ">step", ">requests", ">CPU per request (ms)",
         ">waiting for a core per request (ms)", ">wait share", ">off-CPU share",
         ">energy per request (J)", "reading"], lines,
        "CPU: the service's processes over the step (`processes.csv` cpu_s); waiting for a "
        "core: their threads' run-queue wait (`run_wait_s`, schedstat); both per request "
        "Locust counted. Wait share: wait / (CPU + wait). Off-CPU share: 1 - thread CPU / "
        "wall over the request phases whose timing lines carry their CPU (`<phase>_cpu_ms`: "
        "the TF-Serving-compatible server's decode and model); not measured elsewhere. "
        "Energy: the machine's (powercap), over the step / requests"
        + (f"; not available here: {why}" if why else "") + ".")


def _pair(d: dict[str, Any] | None, a: str, b: str, nd: int = 0) -> str:
    d = d or {}
    return "-" if d.get(a) is None and d.get(b) is None else f"{fmt(d.get(a), nd)} / " \
        f"{fmt(d.get(b), nd)}"


def wire_table(rows: Rows) -> Table:
    """The packet capture's view of each step, per captured service (summary.json `wire`)."""
    lines = []
    for r in rows:
        w = r.get("wire") or {}
        for st in w.get("steps") or []:
            found = {f["service"] for f in st.get("findings") or []}
            for name, f in (st.get("services") or {}).items():
                share = f.get("handshake_share")
                stalled = f.get("stalled_responses")
                h2 = f.get("h2_connections") or 0
                proto = ", ".join(f.get("protocols") or []) or "-"
                lines.append([
                    r["variant"], str(st.get("index")), name,
                    proto + (" (bytes only)" if h2 else ""),
                    fmt(f.get("connections")), fmt(f.get("opened")),
                    fmt((f.get("handshake_ms") or {}).get("p50"), 3),
                    fmt(f.get("requests")), fmt(f.get("requests_per_connection"), 1),
                    _pair(f.get("bytes"), "up", "down"),
                    _pair(f.get("request_bytes"), "head", "body"),
                    _pair(f.get("response_bytes"), "head", "body"),
                    fmt((f.get("segments_per_response") or {}).get("mean"), 1),
                    _pair(f.get("server_ms"), "p50", "p99", 1),
                    "-" if share is None else f"{100 * share:.1f}%",
                    "-" if f.get("requests") is None else
                    (f"**{stalled}**" if name in found and stalled else fmt(stalled)),
                    fmt(f.get("retransmissions")), fmt(f.get("resets")),
                    "truncated" if st.get("truncated") else "whole"])
    return table(
        "Wire (packet capture per step)",
        ["variant", ">step", "service", "protocol", ">connections", ">opened",
         ">handshake p50 (ms)", ">requests", ">req/conn", ">bytes up / down",
         ">request head / body (B)",
         ">response head / body (B)", ">segments/response", ">server p50 / p99 (ms)",
         ">handshake share", ">stalled responses", ">retransmits", ">resets", "capture"],
        lines,
        "From tcpdump's capture of the loopback traffic to each service "
        "(`<variant>/wire/step-<i>.pcap`, read by infbench/analysis/wire.py into `wire.json`). "
        "opened: connections whose SYN was captured; bytes: payload bytes each way, all "
        "connections; request and response head / body: means a request; server: the "
        "request's last byte to the "
        "response's first; handshake share: the handshakes' time over handshakes + "
        "exchanges; stalled: responses whose last segment waited >= 30 ms for the client's "
        "ACK (delayed ACK meeting Nagle's algorithm). HTTP/2 (gRPC) connections give bytes "
        "and segments only (streams are multiplexed: no request boundaries). A truncated "
        "capture reached its size cap and covers the step's start only.")
