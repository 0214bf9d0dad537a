"""Files in, numbers out: mprof samples + phases + Locust CSVs -> one variant's summary.

Pure functions over the files of a run folder, so any summary can be rebuilt from a finished or
interrupted run, and every number can be traced back to the raw samples it came from.

Definitions (also written into summary.json):
  start          median of the MEM samples in the baseline phase (server up and idle);
                 without a baseline, the last sample before the first step
  end            the last MEM sample at or before the end of the last step's drain:
                 memory "after the test", the study's second column
  peak           the largest MEM sample of the whole run
  after_cooldown median of the MEM samples in the last 5 s of the cooldown
  growth         end - start;  retained = after_cooldown - start
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path
from typing import Any

from infbench.analysis import breakdown, cpu_io, limit, model_calls, trust, verdict
from infbench.results import readers
from infbench.results.samples import (
    Mprof,
    cgroup_series,
    locust_aggregate,
    number,
)
from infbench.results.schemas import PHASE_KINDS, SUMMARY_SCHEMA, profile_cycles
from infbench.results.variant import VariantFiles, files_of

COOLDOWN_TAIL_S = 5.0

DEFINITIONS = {
    "start": "median MEM during the baseline (server up, idle)",
    "end": "last MEM sample at or before the end of the last step's drain",
    "peak": "largest MEM sample of the run",
    "after_cooldown": f"median MEM over the last {COOLDOWN_TAIL_S:g} s of the cooldown",
    "growth": "end - start",
    "retained": "after_cooldown - start",
    "MEM": "mprof --include-children: RSS of the server and all its children, MiB",
    "processes_mb": "the same figures for each metric of processes.csv (rss, pss, uss, anon, "
                    "file, swap), summed over the server's processes at each sample; pss "
                    "counts shared pages once, anon is heap and other anonymous memory",
    "stable": "the last N windows (the profile's stable_windows of stable_window_s, from the "
              "start of the step's load to its end, drain excluded) have throughput and p50 "
              "within stable_tolerance of their mean (infbench/analysis/stability.py)",
    "memory_flat": "MEM fitted over those windows changes by no more than max(8 MB, 1%)",
    "limited_by_loadgen": "a Locust process had work (CPU + run-queue wait) for >= 90% of a "
                          "core over 5 s of the step's load (infbench/measure/loadgen.py)",
    "open_loop": "latency is from each request's intended send time; send_rate is requests "
                 "sent / seconds of schedule; cap_hits: requests that waited for an in-flight "
                 "slot",
    "images_per_s": "per step: the requests that succeeded, per second (Locust's rate times "
                    "the share without failure), times the images in each",
    "efficiency": "served images/s / images/s of the same model decoding and predicting "
                  "alone at the step's batch (model_alone.json)",
    "machine_limit": "usable cores (CPU affinity capped by the cgroup's CPU quota) * 1000 / "
                     "(decode + model CPU ms per image, process CPU time, at the batch where "
                     "it is smallest), both from model_alone.json: the images/s the cores could "
                     "serve doing nothing else; `busy` says when the model alone shared its "
                     "cores (decoding kept < 0.8 of a core busy) (infbench/analysis/limit.py)",
    "limit": "per step: images_per_s = usable cores * 1000 / (decode CPU of the images the "
             "step sends + the model's at its cheapest batch); fraction = served images/s / "
             "it; images_per_s_net and fraction_net: the same with the load generator's CPU "
             "(all its processes) taken off the usable cores; server_cpu_ms_per_image: the "
             "services' CPU per image sent (main_thread_: their main threads', an asyncio "
             "server's event loop); fraction ~ cores_share (server cores / usable) * "
             "cpu_share (the limit's CPU per image / the server's)",
    "cpu_io": "per service and step: CPU (processes.csv cpu_s) and run-queue wait (run_wait_s, "
              "schedstat) per request Locust counted; wait_share = wait / (CPU + wait); "
              "off_cpu_share = 1 - thread CPU / wall over the timing lines' phases with a "
              "<phase>_cpu_ms; energy from powercap, else not available "
              "(infbench/analysis/cpu_io.py)",
    "breakdown_mb": "RSS split into file-backed, malloc in use, malloc free (retained) and "
                    "other anonymous memory (processes.csv + the probes' mallinfo2, all "
                    "processes summed) at the end of the baseline and of the cooldown, and "
                    "each part's growth between them; named_pct: share of RSS the file-backed "
                    "and malloc parts explain (infbench/analysis/breakdown.py)",
}
CGROUP_FILE = "cgroup_memory.csv"
CGROUP_DEFINITION = ("docker runtime: the container's cgroup memory as `docker stats` shows it "
                     "(usage minus inactive file cache), MiB; start/end/peak/after_cooldown "
                     "defined as for MEM, over its samples")
CGROUP_ANON_DEFINITION = ("docker runtime: the container's anonymous memory (memory.stat "
                          "total_rss on cgroup v1, anon on v2), MiB: the cgroup figure less its "
                          "file pages, whose charge depends on which cgroup read a library "
                          "first; defined as for MEM")


def samples_between(mem: list[tuple[float, float]], t0: float | None,
                    t1: float | None) -> list[float]:
    if t0 is None or t1 is None:
        return []
    return [m for t, m in mem if t0 <= t <= t1]


def last_at_or_before(mem: list[tuple[float, float]], t: float | None) -> float | None:
    if t is None:
        return None
    before = [m for ts, m in mem if ts <= t]
    return before[-1] if before else None


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


def memory_figures(mem: list[tuple[float, float]], phase_list: list[dict[str, Any]]
                   ) -> dict[str, Any]:
    """start / end / peak / after_cooldown / growth / retained, per the definitions above."""
    if not mem:
        return {k: None for k in ("start", "end", "peak", "peak_at_s", "after_cooldown",
                                  "growth", "retained")}
    t_first = mem[0][0]
    by_kind = {k: [p for p in phase_list if p.get("kind") == k] for k in PHASE_KINDS}
    start = None
    if by_kind["baseline"]:
        b = by_kind["baseline"][0]
        vals = samples_between(mem, b.get("start"), b.get("end"))
        start = statistics.median(vals) if vals else None
    if start is None and by_kind["step"]:
        start = last_at_or_before(mem, by_kind["step"][0].get("start"))
    load_phases = by_kind["drain"] or by_kind["step"]
    end = last_at_or_before(mem, load_phases[-1].get("end")) if load_phases else None
    after = None
    if by_kind["cooldown"]:
        c = by_kind["cooldown"][-1]
        if c.get("end") is not None and not c.get("cut_short"):
            vals = samples_between(mem, max(c["start"], c["end"] - COOLDOWN_TAIL_S), c["end"])
            after = statistics.median(vals) if vals else None
    peak_t, peak = max(mem, key=lambda s: s[1])
    return {
        "start": _r(start), "end": _r(end), "peak": _r(peak),
        "peak_at_s": _r(peak_t - t_first), "after_cooldown": _r(after),
        "growth": _r(end - start) if end is not None and start is not None else None,
        "retained": _r(after - start) if after is not None and start is not None else None,
    }


def step_figures(variant_dir: Path | VariantFiles, mem: list[tuple[float, float]],
                 phase_list: list[dict[str, Any]]) -> list[dict[str, Any]]:
    folder = files_of(variant_dir).dir
    steps = []
    drains = {p.get("index"): p for p in phase_list if p.get("kind") == "drain"}
    pauses = {p.get("index"): p for p in phase_list if p.get("kind") == "pause"}
    for p in phase_list:
        if p.get("kind") != "step":
            continue
        i, batch = p.get("index"), p.get("batch")
        drain = drains.get(i)
        stats = locust_aggregate(folder / f"step{i}-b{batch}_stats.csv") or {}
        t_end = (drain or p).get("end")
        vals = samples_between(mem, p.get("start"), t_end)
        steps.append({
            "index": i, "batch": batch, "users": p.get("users"), "cycle": p.get("cycle"),
            "seconds": _r((p["end"] - p["start"]) if p.get("end") else None),
            "drain_seconds": _r((drain["end"] - drain["start"])
                                if drain and drain.get("end") else None),
            "requests": stats.get("requests"), "failures": stats.get("failures"),
            "cut_off": p.get("cut_off"), "requests_started": p.get("requests_started"),
            "rps": _r(stats.get("rps"), 2), "p50_ms": stats.get("p50_ms"),
            "p95_ms": stats.get("p95_ms"), "p99_ms": stats.get("p99_ms"),
            "images_per_s": _served_images_per_s(stats, batch),
            "mem_end_mb": _r(last_at_or_before(mem, t_end)),
            # Seconds into the following pause until the server's CPU went idle; None: it was
            # still working off abandoned requests when the pause ended (or no pause ran).
            "server_busy_after_s": pauses.get(i, {}).get("server_busy_s"),
            "pause_s": pauses.get(i, {}).get("planned"),
            "mem_peak_mb": _r(max(vals)) if vals else None,
            "complete": bool(p.get("end")) and not p.get("cut_short")
            and bool(drain and drain.get("end") and not drain.get("cut_short")),
            "status": p.get("status") or ("degraded" if p.get("degraded") or (
                drain or {}).get("degraded") else "complete"),
            "t_start": p.get("load_start") or p.get("start"), "t_end": t_end,
        })
    return steps


def _served_images_per_s(stats: dict[str, Any], batch: int | None) -> float | None:
    """Images served per second: the requests that succeeded (Locust's rate, all requests,
    times the share without failure) times the images in each. A refused request serves no
    image: counting it would rank a server that sheds load above one that serves it."""
    rps, requests = stats.get("rps"), stats.get("requests")
    if rps is None or not batch:
        return None
    ok = 1.0 if not requests else max(0, requests - int(stats.get("failures") or 0)) / requests
    return _r(rps * ok * batch, 1)


PROCESS_METRICS = ("rss_mb", "pss_mb", "uss_mb", "anon_mb", "file_mb", "swap_mb")


def process_figures(variant_dir: Path | VariantFiles, phase_list: list[dict[str, Any]],
                    sampler: dict[str, Any] | None) -> dict[str, Any] | None:
    """start / end / peak / growth of each per-process metric summed over the server's
    processes (processes.csv), by the same definitions as mprof's MEM; None without samples."""
    tot = files_of(variant_dir).process_totals
    if not tot:
        return None
    out: dict[str, Any] = {}
    for key in PROCESS_METRICS:
        fig = memory_figures([(t["time"], t[key]) for t in tot if t[key] is not None],
                             phase_list)
        out[key.removesuffix("_mb")] = {k: fig[k] for k in ("start", "end", "peak", "growth",
                                                            "after_cooldown")}
    out["threads_max"] = max(int(t["threads"]) for t in tot)
    out["processes_max"] = max(int(t["processes"]) for t in tot)
    out["samples"] = len(tot)
    if sampler:
        out["sampler_cpu_s"] = sampler.get("cpu_s")
    return out


def sum_series(series: list[list[tuple[float, float]]],
               step: float = 0.5) -> list[tuple[float, float]]:
    """Several replicas' samples as one: on a common grid, each replica's last sample at or
    before the time (nothing before its first sample or after its last) summed."""
    series = [s for s in series if s]
    if len(series) <= 1:
        return series[0] if series else []
    t0 = min(s[0][0] for s in series)
    t1 = max(s[-1][0] for s in series)
    out: list[tuple[float, float]] = []
    idx = [0] * len(series)
    t = t0
    while t <= t1 + 1e-9:
        total = 0.0
        for k, s in enumerate(series):
            while idx[k] + 1 < len(s) and s[idx[k] + 1][0] <= t:
                idx[k] += 1
            if s[0][0] <= t <= s[-1][0] + step:
                total += s[idx[k]][1]
        out.append((round(t, 3), total))
        t += step
    return out


def stop_began(ph: dict[str, Any]) -> float | None:
    """When the harness began stopping the servers: the end of the run's last phase (the
    cooldown, or the phase an interrupt cut short); a setup task's phase comes before any of
    them. None when the run has no such phase (it failed before its baseline)."""
    ends = [p["end"] for p in ph.get("phases", []) if p.get("kind") != "setup" and p.get("end")]
    return max(ends) if ends else None


def while_running(samples: list[tuple[float, float]],
                  stop_at: float | None) -> list[tuple[float, float]]:
    """The samples of a running server, for the plots: none taken after the harness began
    stopping it (`stop_at`: its shutdown, workers exiting one by one), and not the trailing
    0 MB that mprof writes once the process it watched is gone (a crash, or the stop)."""
    out = [x for x in samples if stop_at is None or x[0] <= stop_at]
    while out and out[-1][1] <= 0:
        out.pop()
    return out


def running_mprof(mp: Mprof, stop_at: float | None) -> Mprof:
    """`mp` with its MEM and each child's samples while_running."""
    return Mprof(cmdline=mp.cmdline, mem=while_running(mp.mem, stop_at),
                 children={k: while_running(v, stop_at) for k, v in mp.children.items()},
                 bad_lines=mp.bad_lines)


def replica_mprofs(variant_dir: Path | VariantFiles, ph: dict[str, Any],
                   running: bool = False) -> dict[str, Mprof]:
    """Each service replica's mprofile.dat: the variant's own for a one-service variant.
    running: only what was sampled while each ran (while_running), as the plots draw it; the
    figures are read from every sample."""
    v = files_of(variant_dir)
    labels = [k for k in ph.get("services", {}) if k != "server"]
    paths = {label: f"{label}/mprofile.dat" for label in labels} or {"server": "mprofile.dat"}
    stop_at = stop_began(ph)
    return {label: running_mprof(v.mprof(path), stop_at) if running else v.mprof(path)
            for label, path in paths.items()}


def variant_mprof(variant_dir: Path | VariantFiles, ph: dict[str, Any],
                  running: bool = False) -> Mprof:
    """The variant's memory: its server's, or every replica's MEM summed over time (running:
    see replica_mprofs)."""
    per = replica_mprofs(variant_dir, ph, running)
    if len(per) == 1:
        return next(iter(per.values()))
    out = Mprof(cmdline="(sum of every service replica)")
    out.mem = sum_series([m.mem for m in per.values()])
    out.bad_lines = sum(m.bad_lines for m in per.values())
    return out


def service_figures(variant_dir: Path | VariantFiles, ph: dict[str, Any],
                    steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Per service (a one-service variant's is "server"): memory (mprof, its replicas summed)
    and, per step, CPU (% of one core, from the sampler's cpu_s) and RSS at the step's end."""
    services = ph.get("services", {})
    if not services:
        return None  # version-1 files: no services recorded
    v = files_of(variant_dir)
    per = replica_mprofs(v, ph)
    plist = ph.get("phases", [])
    rows = v.processes
    out: dict[str, Any] = {}
    names = sorted({d.get("service", k) for k, d in services.items()})
    for name in names:
        labels = [k for k, d in services.items() if d.get("service") == name]
        mem = sum_series([per[k].mem for k in labels if k in per])
        mine = [r for r in rows if r.get("service") == name]
        per_step = []
        for st in steps:
            t0, t1 = st.get("t_start"), st.get("t_end")
            per_step.append({"index": st["index"], "cpu_pct": cpu_pct(mine, t0, t1),
                             "rss_mb": _r(rss_at(mine, t1))})
        out[name] = {"replicas": len(labels), "labels": labels,
                     "memory_mb": memory_figures(mem, plist), "steps": per_step}
    return out


def cpu_pct(rows: list[dict[str, Any]], t0: float | None, t1: float | None) -> float | None:
    """CPU used between t0 and t1 by these processes, as % of one core."""
    if t0 is None or t1 is None or t1 <= t0:
        return None
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    for r in rows:
        if t0 <= r["time"] <= t1:
            first.setdefault(r["pid"], r["cpu_s"])
            last[r["pid"]] = r["cpu_s"]
    if not last:
        return None
    used = sum(last[p] - first[p] for p in last)
    return round(100.0 * used / (t1 - t0), 1)


def rss_at(rows: list[dict[str, Any]], t: float | None) -> float | None:
    """The RSS of these processes at their last sample at or before t, summed."""
    if t is None:
        return None
    latest: dict[int, tuple[float, float]] = {}
    for r in rows:
        if r["time"] <= t and r.get("rss_mb") is not None:
            latest[r["pid"]] = (r["time"], r["rss_mb"])
    if not latest:
        return None
    newest = max(tt for tt, _ in latest.values())
    return sum(mb for tt, mb in latest.values() if newest - tt < 2.0)


def profile_of(variant_dir: Path | VariantFiles) -> dict[str, Any] | None:
    """The profile the variant ran under, from its manifest (None if there is none)."""
    manifest = files_of(variant_dir).json("manifest.json")
    if manifest is None:
        return None
    profile = manifest.get("config", {}).get("profile")
    return profile if isinstance(profile, dict) else None


def split_figures(variant_dir: Path | VariantFiles,
                  steps: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Per step: where the time went, by the servers' own timing lines, and Locust's failures
    by kind."""
    folder = files_of(variant_dir).dir
    rows = read_timings(folder)
    out = []
    for st in steps:
        prefix = folder / f"step{st['index']}-b{st['batch']}"
        split = timing_split(rows, st.get("t_start"), st.get("t_end"))
        kinds = failure_kinds(prefix)
        if split or kinds:
            out.append({"index": st["index"], "users": st.get("users"), "split": split,
                        "failures_by_kind": kinds})
    return out or None


def summarize_variant(variant_dir: Path | VariantFiles,
                      points: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """summary.json content for one variant folder. `points`: its breakdown.series, if the
    caller has read them already (the report draws them too)."""
    v = files_of(variant_dir)
    ph = v.phases
    mp = variant_mprof(v, ph)
    plist = ph.get("phases", [])
    steps = step_figures(v, mp.mem, plist)
    trust.annotate(v, steps, plist, mp.mem)
    found_io = cpu_io.figures(v, ph, steps, read_timings)
    alone = trust.model_alone(v)
    machine = limit.machine_limit(alone)
    limit.annotate(steps, machine, found_io)
    pauses = [p for p in plist if p.get("kind") == "pause"]
    profile = profile_of(v)

    def total(key: str) -> int | None:
        vals = [s[key] for s in steps if s.get(key) is not None]
        return sum(vals) if vals else None

    out: dict[str, Any] = {
        "schema": SUMMARY_SCHEMA,
        "variant": ph.get("variant", v.name),
        "status": ph.get("status"),
        "stopped_in": ph.get("stopped_in"),
        "error": (ph.get("error") or "").splitlines()[0] if ph.get("error") else None,
        "memory_mb": memory_figures(mp.mem, plist),
        "processes_mb": process_figures(v, plist, ph.get("sampler")),
        "verdict": verdict.from_files(v, plist, mp.mem, steps,
                                      profile_cycles(profile)),
        "breakdown_mb": breakdown.figures(
            breakdown.series(v) if points is None else points, plist),
        "services": service_figures(v, ph, steps),
        "split": split_figures(v, steps),
        "cpu_io": found_io,
        "profile": profile,
        "events": ph.get("events", []),
        "faults": len([e for e in ph.get("events", []) if e.get("fault")]),
        "totals": {"requests": total("requests"), "failures": total("failures"),
                   "cut_off": total("cut_off")},
        "steps": steps,
        "wire": wire_figures(v.dir, steps),
        "model_calls": model_calls.figures(v.dir, steps),
        "model_alone": alone,
        "machine_limit": machine,
        "pauses_server_busy_s": [p.get("server_busy_s") for p in pauses],
        "samples": {
            "mem": len(mp.mem), "children": len(mp.children), "bad_lines": mp.bad_lines,
            "first": mp.mem[0][0] if mp.mem else None, "last": mp.mem[-1][0] if mp.mem else None,
        },
        "startup_s": _r(ph["healthy"] - ph["server_start"])
        if ph.get("healthy") and ph.get("server_start") else None,
        "definitions": DEFINITIONS,
        "sources": {"memory": "mprofile.dat", "phases": "phases.json",
                    "processes": "processes.csv", "probes": "probes-<pid>.jsonl",
                    "energy": "energy.csv",
                    "locust": "step<i>-b<batch>_stats.csv", "cut_off": "phases.json"},
    }
    if out["wire"] is not None:
        out["sources"]["wire"] = "wire.json (from wire/step-<i>.pcap)"
    if out["model_calls"] is not None:
        out["sources"]["model_calls"] = "<service>-<i>/calls-<pid>.jsonl"
    cgroup, anon = cgroup_series(v.dir / CGROUP_FILE)
    if cgroup:  # docker runs: the container's own figure, beside mprof's
        out["cgroup_memory_mb"] = memory_figures(cgroup, plist)
        out["samples"]["cgroup"] = len(cgroup)
        out["definitions"] = {**DEFINITIONS, "cgroup_memory_mb": CGROUP_DEFINITION}
        out["sources"]["cgroup_memory"] = CGROUP_FILE
        if anon:
            out["cgroup_anon_mb"] = memory_figures(anon, plist)
            out["definitions"]["cgroup_anon_mb"] = CGROUP_ANON_DEFINITION
    return out


def wire_figures(variant_dir: Path, steps: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The packet capture's figures per step (wire.json; None without a capture); each
    finding is also a note of its step, so the report says it where the step's figures are."""
    try:
        found = readers.wire_json(variant_dir)
    except readers.ReadError as e:
        return {"file": "wire.json", "error": str(e), "steps": [], "findings": []}
    if found is None:
        return None
    by_index = {s["index"]: s for s in steps}
    for w in found["steps"]:
        s = by_index.get(w.get("index"))
        if s is None:
            continue
        notes = s.setdefault("notes", [])
        notes += [f"wire: {f['detail']}" if len(w.get("services") or {}) < 2
                  else f"wire, {f['service']}: {f['detail']}" for f in w.get("findings") or []]
        services = list((w.get("services") or {}).values())
        seen = services[0].get("requests") if len(services) == 1 else None
        if seen is not None and s.get("requests") and seen < s["requests"]:
            notes.append(f"wire: the capture saw {seen} of the {s['requests']} requests "
                         "Locust counted: its figures miss some")
        if w.get("truncated"):
            notes.append("wire: the capture reached its cap and stopped; its figures cover "
                         "the step's start only")
    return {"file": "wire.json", "ports": found.get("ports"), "snaplen": found.get("snaplen"),
            "steps": found["steps"],
            "findings": [{"step": w.get("index"), **f} for w in found["steps"]
                         for f in w.get("findings") or []]}


# -- where the time goes: the servers' own timing lines (timings-<pid>.jsonl) -----------------
# The queue API stamps t_received / t_enqueued / t_dequeued / t_model_start / t_model_done /
# t_responded; other servers write *_ms fields (the TF-Serving-compatible server: parse,
# decode, queue, model, serialize; the scoring API: features, model_a, model_b, framework).
STAMPED = (("queue_wait_ms", "t_enqueued", "t_dequeued"),
           ("model_ms", "t_model_start", "t_model_done"))


def read_timings(variant_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted(variant_dir.rglob("timings-*.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a torn last line
            if not isinstance(row, dict):
                continue
            t = row.get("t_received", row.get("t"))
            if not isinstance(t, int | float):
                continue
            row["_t"] = float(t)
            if "t_received" in row and "t_responded" in row:
                total = (row["t_responded"] - row["t_received"]) * 1000
                row["total_ms"] = total
                parts = 0.0
                for name, a, b in STAMPED:
                    if isinstance(row.get(a), int | float) and isinstance(row.get(b), int | float):
                        row[name] = (row[b] - row[a]) * 1000
                        parts += row[name]
                row["api_overhead_ms"] = total - parts
            rows.append(row)
    return sorted(rows, key=lambda r: r["_t"])


def timing_split(rows: list[dict[str, Any]], t0: float | None,
                 t1: float | None) -> dict[str, Any] | None:
    """Per step: the median of each *_ms part over the requests received in the window."""
    if t0 is None or t1 is None:
        return None
    mine = [r for r in rows if t0 <= r["_t"] <= t1]
    if not mine:
        return None
    # A phase's CPU (`<phase>_cpu_ms`) is not a part of the request's time: cpu_io reads it.
    keys = sorted({k for r in mine for k, v in r.items() if k.endswith("_ms")
                   and not k.endswith("_cpu_ms") and isinstance(v, int | float)})
    out: dict[str, Any] = {"requests": len(mine)}
    for k in keys:
        vals = [float(r[k]) for r in mine if isinstance(r.get(k), int | float)]
        out[k] = round(statistics.median(vals), 1) if vals else None
    batches = [r["batch_size"] for r in mine if isinstance(r.get("batch_size"), int)]
    if batches:
        out["mean_batch"] = round(statistics.fmean(batches), 2)
    return out


def failure_kinds(stats_prefix: Path) -> dict[str, int]:
    """Locust's *_failures.csv, by kind: 'HTTP 504', 'ConnectionRefusedError', ..."""
    path = Path(f"{stats_prefix}_failures.csv")
    out: dict[str, int] = {}
    if not path.exists():
        return out
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            error = (row.get("Error") or "?").strip()
            http = re.search(r"HTTP \d+", error)
            kind = http.group(0) if http else error.split("(", 1)[0].strip()[:60]
            if kind == "HTTP 0":
                kind = "HTTP 0 (no response: connection refused, reset or timed out)"
            out[kind] = out.get(kind, 0) + (number(row.get("Occurrences"), int) or 0)
    return out


AGGREGATES = ("total_ms", "models_ms")


def bottleneck(split: dict[str, Any] | None, services: dict[str, Any] | None,
               index: int, cores: int) -> str:
    """One sentence naming where a step's time went, from the split and per-service CPU."""
    if not split or not split.get("total_ms"):
        return ""
    total = float(split["total_ms"])
    parts = {k: float(v) for k, v in split.items() if k.endswith("_ms") and k not in AGGREGATES
             and not k.endswith("_server_ms") and isinstance(v, int | float)}
    if not parts:
        return ""
    worst = max(parts, key=lambda k: parts[k])
    share = 100.0 * parts[worst] / total
    cpu = {}
    for name, sv in (services or {}).items():
        st = next((x for x in sv["steps"] if x["index"] == index), None)
        if st and st.get("cpu_pct") is not None:
            cpu[name] = st["cpu_pct"]
    busiest = max(cpu, key=lambda k: cpu[k]) if cpu else None
    load = f"; {busiest} used {cpu[busiest]:.0f}% of a core ({cores} cores here)" \
        if busiest else ""
    name = worst.removesuffix("_ms").replace("_", " ")
    overlap = ""
    a, b, both = split.get("model_a_ms"), split.get("model_b_ms"), split.get("models_ms")
    if all(isinstance(x, int | float) for x in (a, b, both)):
        assert isinstance(a, int | float) and isinstance(b, int | float)
        assert isinstance(both, int | float)
        how = "concurrently" if both < 0.8 * (a + b) else "one after the other"
        overlap = f"; the two model calls ran {how} ({both:,.0f} ms for {a:,.0f} + {b:,.0f})"
    total_cpu = sum(cpu.values())
    machine = len(cpu) > 1 and cores > 0 and total_cpu >= 80.0 * cores
    if machine:  # no one service is the limit: together they fill the machine's cores
        load += f"; all services together used {total_cpu:.0f}% of a core: the machine is full"
    saturated = busiest is not None and (cpu[busiest] >= 80.0 or machine)
    if worst == "queue_wait_ms":
        return (f"queue wait is {share:.0f}% of the median request ({parts[worst]:,.0f} of "
                f"{total:,.0f} ms): the model workers are the bottleneck{load}")
    if not saturated:
        return (f"not saturated: the largest part is {name} ({share:.0f}% of the median "
                f"request) and no service used 80% of a core{load}{overlap}")
    return f"{name} is {share:.0f}% of the median request{load}{overlap}"


def breaking_point(steps: list[dict[str, Any]], p95_bound_ms: float) -> dict[str, Any] | None:
    """The highest req/s of the steps before the first that broke (p95 over the bound or
    failures over 1%), and the users at which it broke."""
    if p95_bound_ms <= 0 or not steps:
        return None
    best: dict[str, Any] | None = None
    for st in steps:
        failed = (st.get("failures") or 0) > 0.01 * max(1, st.get("requests") or 0)
        slow = st.get("p95_ms") is not None and st["p95_ms"] > p95_bound_ms
        if failed or slow or st.get("requests") in (None, 0):
            why = "failures over 1%" if failed else f"p95 {st.get('p95_ms')} ms > " \
                f"{p95_bound_ms:g} ms" if slow else "no requests"
            return {"sustainable_rps": best["rps"] if best else None,
                    "at_users": best["users"] if best else None,
                    "broke_at_users": st.get("users"), "why": why, "bound_ms": p95_bound_ms}
        if best is None or (st.get("rps") or 0) > (best.get("rps") or 0):
            best = st
    return {"sustainable_rps": best["rps"] if best else None,
            "at_users": best["users"] if best else None, "broke_at_users": None,
            "why": "did not break", "bound_ms": p95_bound_ms}
