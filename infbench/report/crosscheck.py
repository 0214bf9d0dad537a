"""The crosscheck's side-by-side table (crosscheck.json in, a Table and Markdown lines out):
every round of the tool and of ours, the medians, the ratio, the tolerance and the verdict."""

from __future__ import annotations

from typing import Any

from infbench.report.markdown import lines as table_lines
from infbench.report.tables import Table, fmt, table


def _ms(x: float | None) -> str:
    return fmt(x, 2)


def _cpu(r: dict[str, Any]) -> str:
    g, s = r.get("generator_us_per_request"), r.get("server_us_per_request")
    return f"{fmt(g, 0)} / {fmt(s, 0)}"


def rounds_table(doc: dict[str, Any]) -> Table:
    rows = []
    for r in doc["rounds"]:
        errors = ", ".join(f"{k} {v}" for k, v in (r.get("errors") or {}).items()) or "0"
        rows.append([f"{r['who']} {r['round']}", fmt(r.get("rps"), 1), _ms(r.get("p50_ms")),
                     _ms(r.get("p99_ms")), fmt(r.get("ok")), errors, _cpu(r),
                     "FAULT: " + r["error"] if r.get("error") else ""])
    return table(f"{doc['variant']}: {doc['tool']} beside infbench's closed loop, "
                 f"{doc['connections']} connections, {doc['seconds']:g} s a round",
                 ["round", ">req/s", ">p50 ms", ">p99 ms", ">ok", "errors",
                  ">CPU µs/request (generator / server)", "fault"], rows,
                 "rounds in the order they ran (ABBA)")


def verdict_table(doc: dict[str, Any]) -> Table:
    med, ratio, within = doc["medians"], doc.get("ratio") or {}, doc.get("within") or {}
    rows = []
    for key, name in (("rps", "req/s"), ("p50_ms", "p50 ms"), ("p99_ms", "p99 ms")):
        w = within.get(key)
        rows.append([name, fmt(med["tool"].get(key), 2), fmt(med["ours"].get(key), 2),
                     fmt(ratio.get(key), 3), "-" if w is None else "yes" if w else "no"])
    agree = doc.get("agree")
    said = "agree" if agree else "no verdict (a fault, or rounds missing)" \
        if agree is None else "disagree"
    return table(f"medians: {doc['tool']} vs infbench", ["figure", f">{doc['tool']}",
                                                          ">infbench", ">ratio", "within"],
                 rows, f"tolerance: {doc['tolerance']['said']}; verdict: {said}")


def pinning_said(pinned: dict[str, Any]) -> str:
    """Where the generators and the services ran (crosscheck.json's `pinned`)."""
    if "why_not" in pinned:
        return f"not pinned ({pinned['why_not']})"
    cores = ", ".join(str(c) for c in pinned["services"])
    return f"generators on core {pinned['generator'][0]}, services on core(s) {cores}"


def markdown(doc: dict[str, Any]) -> list[str]:
    out = [f"# crosscheck of {doc['variant']}", "",
           f"{doc['method']} {doc['url']} ({doc['protocol']}, {fmt(doc.get('body_bytes'))} "
           f"bytes a request)", ""]
    if doc.get("pinned"):
        out += [f"Cores: {pinning_said(doc['pinned'])}.", ""]
    for t in (rounds_table(doc), verdict_table(doc)):
        out += [f"## {t.title}", "", *table_lines(t), "", t.caption, ""]
    for note in doc.get("notes") or []:
        out.append(f"- note: {note}")
    noisy = {k: v for k, v in (doc.get("spread") or {}).items()
             if v is not None and v > doc["tolerance"]["rps_share"]}
    if noisy:
        said = " and ".join(f"{'the tool' if k == 'tool' else 'ours'} {100 * v:.0f}%"
                            for k, v in noisy.items())
        out.append(f"- note: the rounds of one side spread in req/s by {said} of their median, "
                   f"more than the {100 * doc['tolerance']['rps_share']:.0f}% tolerance: the "
                   "variant's own variation is larger than what is checked; run longer or "
                   "more rounds (--seconds, --rounds) on a quieter machine")
    for fault in doc.get("faults") or []:
        out.append(f"- FAULT: {fault}")
    return out
