"""Two runs side by side: per variant and step, what changed and whether it is more than noise.

A difference between two single runs is only worth reading if it is larger than the run's own
wobble, so every figure comes with a test over samples taken *within* each run, and a change is
called significant only if it is both large enough and unlikely under noise:

- req/s, p50 and p95 per step: Locust's `*_stats_history.csv` has one row a second; the load
  part of the step is cut into windows (WINDOW_S, shorter for short steps so that there are
  MIN_WINDOWS, but whole seconds) and each window gives one sample: requests completed in it
  / its length, and the median of Locust's current p50 / p95 over its rows;
- memory after the test, after the cooldown and the growth: mprof's samples in the last
  MEMORY_TAIL_S of the last drain and of the cooldown (growth: those minus the run's start).

The test is Mann-Whitney U (two-sided, no SciPy): exact, by enumerating every split of the
pooled samples, when there are at most EXACT_LIMIT splits; otherwise the normal approximation
with the tie and continuity corrections. Before any test, a change smaller than the minimum
effect (MIN_EFFECT of A's figure; for memory also at least the verdict's noise, NOISE_MB) is
"not significant" (as pyperf and pyperformance say it out loud). The windows of one run are
not independent (Locust's percentiles are rolling, memory is a level), and a comparison runs
many tests (about 1 in 20 tests of pure noise comes out below p = 0.05), so read p as a guide,
the minimum effect as the rule, and a lone significant row at p near 0.05 as a reason to
repeat the run.

Runs whose fingerprints differ (profile, models, machine class, the run id's hash) are refused
unless forced: their differences would be the setup's, not the servers'.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from infbench.analysis import summary, verdict
from infbench.results import readers, samples, store
from infbench.results.files import write_json, write_text
from infbench.results.schemas import COMPARE_SCHEMA

MIN_EFFECT = 0.05
ALPHA = 0.05
WINDOW_S = 5.0
MIN_WINDOWS = 6
MIN_SAMPLES = 3
EXACT_LIMIT = 13_000
MEMORY_TAIL_S = summary.COOLDOWN_TAIL_S
NOISE_MB = verdict.NOISE_MB
MACHINE_KEYS = ("cpu", "cpus", "memory_gib", "python")
RUN_ID = re.compile(r"^\d{8}-\d{6}-.+-(?P<hash>[0-9a-f]{6})(?:\.\d+)?$")
TEST_NAME = ("Mann-Whitney U, two-sided (exact permutation distribution when small, else the "
             "normal approximation with tie and continuity corrections)")


class CompareError(Exception):
    """Two runs that cannot be compared (or read); one line."""


# -- the test -------------------------------------------------------------------------------
def midranks(values: list[float]) -> list[float]:
    """Ranks 1..n of the values in their order, ties sharing the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney(a: list[float], b: list[float]) -> tuple[float, str]:
    """Two-sided p of Mann-Whitney U for samples a and b, and the method used."""
    n1, n2 = len(a), len(b)
    n = n1 + n2
    ranks = midranks([*a, *b])
    offset = n1 * (n1 + 1) / 2
    u1 = sum(ranks[:n1]) - offset
    mu = n1 * n2 / 2
    if math.comb(n, n1) <= EXACT_LIMIT:
        far = abs(u1 - mu) - 1e-9
        hits = total = 0
        for idx in itertools.combinations(range(n), n1):
            total += 1
            if abs(sum(ranks[i] for i in idx) - offset - mu) >= far:
                hits += 1
        return hits / total, "exact"
    ties = sum(t ** 3 - t for t in Counter([*a, *b]).values())
    var = n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:
        return 1.0, "normal"
    z = max(0.0, abs(u1 - mu) - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(z / math.sqrt(2))), "normal"


# -- samples --------------------------------------------------------------------------------
def windows(rows: list[dict[str, Any]], width: float | None = None
            ) -> tuple[list[dict[str, Any]], float]:
    """Per-window samples of a step's stats history (rows while users were running):
    completed requests / window length, and the median of Locust's current p50 and p95."""
    live = [r for r in rows if (r.get("users") or 0) > 0]
    if len(live) < 2:
        return [], 0.0
    t0, t1 = live[0]["t"], live[-1]["t"]
    # Whole seconds: Locust writes a row a second, so a window of 1.5 s would hold one or two
    # rows by turns and alias the rate.
    w = width or float(max(1, min(int(WINDOW_S), int((t1 - t0) // MIN_WINDOWS))))

    def count_at(t: float) -> int:
        before = [int(r["requests"]) for r in live if r["t"] <= t + 1e-9]
        return before[-1] if before else int(live[0]["requests"])

    out = []
    k = 0
    while t0 + (k + 1) * w <= t1 + 1e-9:
        a, b = t0 + k * w, t0 + (k + 1) * w
        inside = [r for r in live if a < r["t"] <= b + 1e-9]
        sample: dict[str, Any] = {"t": a, "rps": (count_at(b) - count_at(a)) / w}
        for key in ("p50_ms", "p95_ms"):
            vals = [r[key] for r in inside if r.get(key) is not None]
            sample[key] = statistics.median(vals) if vals else None
        out.append(sample)
        k += 1
    return out, w


def _tail(mem: list[tuple[float, float]], end: float | None, start: float | None = None
          ) -> list[float]:
    if end is None:
        return []
    lo = end - MEMORY_TAIL_S if start is None else max(start, end - MEMORY_TAIL_S)
    return [m for t, m in mem if lo <= t <= end]


def memory_samples(mem: list[tuple[float, float]], phase_list: list[dict[str, Any]],
                   start_mb: float | None) -> dict[str, list[float]]:
    """mprof samples behind each memory figure: the last MEMORY_TAIL_S of the load's last
    drain (after test), of the cooldown (after cooldown), and the first minus the start."""
    load = [p for p in phase_list if p.get("kind") in ("drain", "step") and p.get("end")]
    cool = [p for p in phase_list if p.get("kind") == "cooldown" and p.get("end")
            and not p.get("cut_short")]
    end = _tail(mem, load[-1]["end"]) if load else []
    after = _tail(mem, cool[-1]["end"], cool[-1]["start"]) if cool else []
    return {"end": end, "after_cooldown": after,
            "growth": [m - start_mb for m in end] if start_mb is not None else []}


# -- one side -------------------------------------------------------------------------------
def fingerprint(run_dir: Path, info: dict[str, Any]) -> dict[str, Any]:
    """What must match for two runs to be comparable (the run id's hash is made of the same)."""
    m = info.get("machine") or {}
    match = RUN_ID.match(str(info.get("run_id") or run_dir.name))
    return {"profile": info.get("profile"), "models": sorted(info.get("models") or []),
            "machine": {k: m.get(k) for k in MACHINE_KEYS},
            "hash": match.group("hash") if match else None}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    if a["profile"] != b["profile"]:
        out.append(f"profile {a['profile']!r} vs {b['profile']!r}")
    if a["models"] != b["models"]:
        out.append(f"models {', '.join(a['models']) or '-'} vs {', '.join(b['models']) or '-'}")
    for k in MACHINE_KEYS:
        if a["machine"].get(k) != b["machine"].get(k):
            out.append(f"machine {k} {a['machine'].get(k)!r} vs {b['machine'].get(k)!r}")
    if not out and a["hash"] and b["hash"] and a["hash"] != b["hash"]:
        out.append(f"run id hash {a['hash']} vs {b['hash']} (the profile's or the models' "
                   "settings differ)")
    return out


def read_side(run_dir: Path) -> dict[str, Any]:
    """A run's figures and the samples behind them, through the readers."""
    info = readers.run_json(run_dir)
    variants: dict[str, Any] = {}
    for vd in store.variant_dirs(run_dir, info):
        if not (vd / "summary.json").exists():
            continue
        s = readers.summary_json(vd)
        ph = readers.phases_json(vd)
        mem = summary.variant_mprof(vd, ph).mem
        steps = {}
        for st in s["steps"]:
            hist = samples.locust_history(vd / f"step{st['index']}-b{st['batch']}"
                                          "_stats_history.csv")
            cut, width = windows(hist)
            steps[(st["index"], st["batch"])] = {"summary": st, "windows": cut,
                                                 "window_s": width}
        variants[s["variant"]] = {
            "summary": s, "steps": steps,
            "memory": memory_samples(mem, ph.get("phases", []), s["memory_mb"].get("start"))}
    return {"dir": run_dir, "info": info, "fingerprint": fingerprint(run_dir, info),
            "variants": variants}


# -- judging one figure ---------------------------------------------------------------------
METRICS = (  # name, unit, summary key, sample key, higher is better
    ("req/s", "", "rps", "rps", True),
    ("p50", "ms", "p50_ms", "p50_ms", False),
    ("p95", "ms", "p95_ms", "p95_ms", False),
)
MEMORY = (("after test", "end"), ("after cooldown", "after_cooldown"), ("growth", "growth"))


def compare_metric(metric: str, unit: str, a: float | None, b: float | None, sa: list[float],
          sb: list[float], min_effect: float, higher_is_better: bool, why_min: str
          ) -> dict[str, Any]:
    """One row: A, B, the change, and whether it is significant, said in words."""
    row: dict[str, Any] = {"metric": metric, "unit": unit, "a": a, "b": b, "delta": None,
                           "pct": None, "p": None, "method": None, "n_a": len(sa),
                           "n_b": len(sb), "min_effect": round(min_effect, 3),
                           "significant": None}
    if a is None or b is None:
        row["says"] = "no data"
        return row
    delta = b - a
    row["delta"] = round(delta, 3)
    row["pct"] = round(100 * delta / a, 2) if a else None
    if abs(delta) < min_effect:
        row["significant"] = False
        row["says"] = f"not significant (below the minimum effect, {why_min})"
        return row
    if len(sa) < MIN_SAMPLES or len(sb) < MIN_SAMPLES:
        row["says"] = f"not tested: too few samples ({len(sa)} / {len(sb)}, need " \
            f"{MIN_SAMPLES} a side)"
        return row
    p, method = mann_whitney(sa, sb)
    row["p"], row["method"] = float(f"{p:.4g}"), method
    if p >= ALPHA:
        row["significant"] = False
        row["says"] = f"not significant (p = {p:.2g})"
        return row
    row["significant"] = True
    better = (delta > 0) == higher_is_better
    row["says"] = f"{'better' if better else 'worse'} (p = {p:.2g})"
    return row


def compare_variant(va: dict[str, Any], vb: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key in [k for k in va["steps"] if k in vb["steps"]]:
        sa, sb = va["steps"][key], vb["steps"][key]
        for metric, unit, skey, wkey, higher in METRICS:
            a, b = sa["summary"].get(skey), sb["summary"].get(skey)
            row = compare_metric(metric, unit, a, b,
                        [w[wkey] for w in sa["windows"] if w.get(wkey) is not None],
                        [w[wkey] for w in sb["windows"] if w.get(wkey) is not None],
                        MIN_EFFECT * abs(a) if a is not None else 0.0, higher,
                        f"{MIN_EFFECT:.0%}")
            row.update({"step": key[0], "batch": key[1],
                        "window_s": [sa["window_s"], sb["window_s"]]})
            rows.append(row)
    ma, mb = va["summary"]["memory_mb"], vb["summary"]["memory_mb"]
    for metric, key in MEMORY:
        a, b = ma.get(key), mb.get(key)
        floor = max(NOISE_MB, MIN_EFFECT * abs(a)) if a is not None else NOISE_MB
        row = compare_metric(f"memory {metric}", "MB", a, b, va["memory"][key], vb["memory"][key],
                    floor, False, f"max({NOISE_MB:g} MB, {MIN_EFFECT:.0%})")
        row.update({"step": None, "batch": None})
        rows.append(row)
    return rows


def compare_runs(a_dir: Path, b_dir: Path, force: bool = False) -> dict[str, Any]:
    """The comparison of run B against run A; refuses different fingerprints unless forced."""
    try:
        a, b = read_side(a_dir), read_side(b_dir)
    except readers.ReadError as e:
        raise CompareError(str(e)) from None
    diff = differences(a["fingerprint"], b["fingerprint"])
    if diff and not force:
        raise CompareError(f"runs {a_dir.name} and {b_dir.name} are not comparable: "
                           f"{'; '.join(diff)} (--force / FORCE=1 compares them anyway)")
    both = [n for n in a["variants"] if n in b["variants"]]
    return {
        "schema": COMPARE_SCHEMA,
        "a": {"run": a_dir.name, "status": a["info"].get("status"),
              "fingerprint": a["fingerprint"]},
        "b": {"run": b_dir.name, "status": b["info"].get("status"),
              "fingerprint": b["fingerprint"]},
        "forced": bool(diff), "differences": diff,
        "settings": {"test": TEST_NAME, "alpha": ALPHA, "min_effect": MIN_EFFECT,
                     "memory_noise_mb": NOISE_MB, "window_s": WINDOW_S,
                     "min_windows": MIN_WINDOWS, "min_samples": MIN_SAMPLES,
                     "memory_tail_s": MEMORY_TAIL_S},
        "variants": [{"variant": n, "rows": compare_variant(a["variants"][n],
                                                            b["variants"][n])} for n in both],
        "only_in_a": [n for n in a["variants"] if n not in b["variants"]],
        "only_in_b": [n for n in b["variants"] if n not in a["variants"]],
    }


# -- output ---------------------------------------------------------------------------------
def _num(x: float | None, unit: str) -> str:
    if x is None:
        return "-"
    nd = 0 if unit else 2  # req/s with 2 decimals; ms and MB whole
    return f"{x:,.{nd}f}" + (f" {unit}" if unit else "")


def change_text(row: dict[str, Any]) -> str:
    if row.get("delta") is None:
        return "-"
    pct = f" ({row['pct']:+.1f}%)" if row.get("pct") is not None else ""
    nd = 0 if row.get("unit") else 2
    return f"{row['delta']:+,.{nd}f}{pct}"


def where(row: dict[str, Any]) -> str:
    return "run" if row.get("step") is None else f"step {row['step']} ({row['batch']} img/req)"


def headline(result: dict[str, Any]) -> str:
    sig = [(v["variant"], r) for v in result["variants"] for r in v["rows"]
           if r.get("significant")]
    untested = sum(1 for v in result["variants"] for r in v["rows"]
                   if r.get("significant") is None and r.get("delta") is not None)
    caveat = f" {untested} change(s) above the minimum effect could not be tested (too few " \
        "samples: longer steps give more windows)." if untested else ""
    if not sig:
        return "No significant difference: every tested change is below the minimum effect " \
            "or within the noise." + caveat
    tested = sum(1 for v in result["variants"] for r in v["rows"] if r.get("p") is not None)
    return f"{len(sig)} significant change(s) of {tested} tested: " + "; ".join(
        f"{n} {r['metric']} {where(r)} {change_text(r)}, {r['says'].split(' (')[0]}"
        for n, r in sig[:8]) + ("; ..." if len(sig) > 8 else ".") + caveat


def markdown(result: dict[str, Any]) -> str:
    a, b = result["a"], result["b"]
    fa = a["fingerprint"]
    lines = [f"# infbench compare: {a['run']} (A) → {b['run']} (B)", "",
             f"- profile `{fa['profile']}`, model(s) `{', '.join(fa['models'])}`, machine "
             f"{fa['machine'].get('cpus')} CPUs ({fa['machine'].get('cpu')}), Python "
             f"{fa['machine'].get('python')}; statuses: A {a['status']}, B {b['status']}"]
    if result["differences"]:
        lines.append(f"- **compared with --force although they differ**: "
                     f"{'; '.join(result['differences'])}")
    st = result["settings"]
    lines += [f"- test: {st['test']}, at p < {st['alpha']:g}, over per-window samples "
              f"(Locust's stats history in windows of up to {st['window_s']:g} s; mprof "
              f"samples in the last {st['memory_tail_s']:g} s of the last drain and of the "
              f"cooldown); a change below {st['min_effect']:.0%} of A (memory: below max("
              f"{st['memory_noise_mb']:g} MB, {st['min_effect']:.0%})) is not significant "
              "before any test", "", f"**{headline(result)}**"]
    for v in result["variants"]:
        lines += ["", f"## {v['variant']}", "",
                  "| metric | where | A | B | change | p (n A / B) | significant? |",
                  "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
        for r in v["rows"]:
            p = "-" if r.get("p") is None else f"{r['p']:.3g} ({r['n_a']} / {r['n_b']})"
            mark = f"**{r['says']}**" if r.get("significant") else r["says"]
            lines.append(f"| {r['metric']} | {where(r)} | {_num(r['a'], r['unit'])} | "
                         f"{_num(r['b'], r['unit'])} | {change_text(r)} | {p} | {mark} |")
    for side, key in (("A", "only_in_a"), ("B", "only_in_b")):
        if result[key]:
            lines += ["", f"Only in {side}: {', '.join(result[key])}"]
    return "\n".join(lines) + "\n"


def output_names(result: dict[str, Any]) -> tuple[str, str]:
    stem = f"compare-{result['a']['run']}-vs-{result['b']['run']}"
    return f"{stem}.json", f"{stem}.md"


def write(result: dict[str, Any], folder: Path) -> tuple[Path, Path]:
    """compare-<A>-vs-<B>.json and .md into `folder` (B's run folder by default)."""
    js, md = output_names(result)
    write_json(folder / js, result)
    write_text(folder / md, markdown(result))
    return folder / js, folder / md


def read_result(path: Path) -> dict[str, Any]:
    """A compare-*.json, version-checked like every other artifact."""
    data = readers.versioned(path, readers.load_json(path, "comparison"), "comparison",
                             COMPARE_SCHEMA, {})
    if not isinstance(data.get("variants"), list):
        raise readers.ReadError(f"{path}: comparison has no list of variants")
    return data
