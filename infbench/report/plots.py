"""Memory-over-time plots: one per variant with its phases shaded, and one overlay of all."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers or in CI
import matplotlib.pyplot as plt

from infbench.analysis.capacity import RateProbe, Search, answer, probe_passes
from infbench.results.samples import Mprof

STEP_COLORS = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
SERVICE_COLORS = ["#1b9e77", "#d95f02", "#e7298a", "#66a61e", "#e6ab02", "#a6761d"]
# Phase labels: up to three staggered rows at the top (axes fraction, the text's top edge), so
# the label of a short phase ("baseline") does not print over its neighbour's ("10 img/req").
LABEL_ROWS = (0.985, 0.935, 0.885)
EVENT_ROW = 0.82  # fault marks' text, below the label rows
HEADROOM = 1.22  # y axis top over the largest value: room for the label rows


def _events(ax: Any, phases: dict[str, Any], t0: float, top: float) -> None:
    """Faults (restarts, a failed load generator, a dead replica) as red marks on the clock."""
    for n, e in enumerate(x for x in phases.get("events", []) if x.get("fault")):
        x = e["t"] - t0
        ax.axvline(x, color="#d62728", lw=1.0, ls="--", alpha=0.8)
        if n < 6:  # below the rows of phase labels
            ax.text(x, top * (EVENT_ROW - 0.05 * (n % 3)), f" {e['kind']}", color="#d62728",
                    fontsize=7, va="top")


def _shade(ax: Any, phase_list: list[dict[str, Any]], t0: float) -> list[Any]:
    """Shade each phase; returns its labels, to be placed by place_labels once the figure's
    layout is final (a short phase's label is wider than the phase)."""
    labels: list[Any] = []
    batches: list[Any] = []
    for p in phase_list:
        if p.get("start") is None or p.get("end") is None:
            continue
        a, b = p["start"] - t0, p["end"] - t0
        kind = p.get("kind")
        if kind == "step":
            if p.get("batch") not in batches:
                batches.append(p.get("batch"))
            color = STEP_COLORS[batches.index(p.get("batch")) % len(STEP_COLORS)]
            ax.axvspan(a, b, color=color, alpha=0.18, lw=0)
            labels.append(ax.text((a + b) / 2, LABEL_ROWS[0], f"{p.get('batch')} img/req",
                                  ha="center", va="top", fontsize=8, color=color,
                                  fontweight="bold", transform=ax.get_xaxis_transform()))
        elif kind == "drain":
            ax.axvspan(a, b, color="#999999", alpha=0.15, lw=0, hatch="///")
        elif kind in ("window", "window_drain", "window_rest"):
            ax.axvspan(a, b, color="#8e44ad", alpha=0.12, lw=0, hatch="..")
            if kind == "window":
                labels.append(ax.text((a + b) / 2, LABEL_ROWS[0], "tracemalloc window",
                                      ha="center", va="top", fontsize=7, color="#8e44ad",
                                      transform=ax.get_xaxis_transform()))
        elif kind in ("baseline", "rest", "cooldown", "trim"):
            ax.axvspan(a, b, color="#cccccc", alpha=0.25, lw=0)
            labels.append(ax.text((a + b) / 2, LABEL_ROWS[0], kind, ha="center", va="top",
                                  fontsize=7, color="#666666",
                                  transform=ax.get_xaxis_transform()))
    return labels


def place_labels(fig: Any, labels: list[Any], pad_px: float = 4.0) -> list[Any]:
    """Put each phase label in the first of LABEL_ROWS where it overlaps no label already
    there (left to right); a label that fits in no row is hidden. Returns the hidden ones."""
    renderer = fig.canvas.get_renderer()
    rows: list[list[tuple[float, float]]] = [[] for _ in LABEL_ROWS]
    hidden = []
    for label in sorted(labels, key=lambda t: t.get_position()[0]):
        box = label.get_window_extent(renderer)
        for taken, y in zip(rows, LABEL_ROWS, strict=True):
            if all(box.x1 + pad_px <= a or box.x0 - pad_px >= b for a, b in taken):
                label.set_y(y)
                taken.append((box.x0, box.x1))
                break
        else:
            label.set_visible(False)
            hidden.append(label)
    return hidden


Series = list[tuple[float, float]]


def variant_plot(mp: Mprof, phases: dict[str, Any], summary: dict[str, Any], out: Path,
                 title: str, extra: tuple[tuple[str, Series, str], ...] = (),
                 mem_label: str = "server + children (mprof MEM)") -> Path:
    """Memory over time, phases shaded; `extra` adds (label, samples, colour) lines on the
    same clock (e.g. the container's cgroup memory of a docker run)."""
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    labels: list[Any] = []
    if mp.mem:
        t0 = mp.mem[0][0]
        xs = [t - t0 for t, _ in mp.mem]
        ys = [m for _, m in mp.mem]
        top = max(ys + [m for _, series_, _ in extra for _, m in series_]) * HEADROOM
        ax.set_ylim(0, top)
        labels = _shade(ax, phases.get("phases", []), t0)
        _events(ax, phases, t0, top)
        ax.plot(xs, ys, color="black", lw=1.2, label=mem_label)
        if len(mp.children) > 1:
            for n, (idx, series) in enumerate(sorted(mp.children.items())):
                ax.plot([t - t0 for t, _ in series], [m for _, m in series], lw=0.7,
                        alpha=0.7, label=f"child {idx}" if n < 4 else None)
        for label, series_, colour in extra:
            if series_:
                ax.plot([t - t0 for t, _ in series_], [m for _, m in series_], lw=1.0,
                        ls="--", color=colour, label=label)
        mem = summary.get("memory_mb", {})
        if mem.get("start") is not None:
            ax.axhline(mem["start"], color="#2a9d8f", ls=":", lw=1)
            ax.annotate(f"start {mem['start']:.0f} MB", (xs[0], mem["start"]),
                        textcoords="offset points", xytext=(4, 4), fontsize=8, color="#2a9d8f")
        if mem.get("peak") is not None and mem.get("peak_at_s") is not None:
            ax.plot([mem["peak_at_s"]], [mem["peak"]], "v", color="#c44e52")
            ax.annotate(f"peak {mem['peak']:.0f} MB", (mem["peak_at_s"], mem["peak"]),
                        textcoords="offset points", xytext=(4, 6), fontsize=8, color="#c44e52")
        if mem.get("end") is not None:
            end_phases = [p for p in phases.get("phases", [])
                          if p.get("kind") in ("drain", "step") and p.get("end")]
            if end_phases:
                te = end_phases[-1]["end"] - t0
                ax.plot([te], [mem["end"]], "o", color="#e76f51")
                ax.annotate(f"end {mem['end']:.0f} MB", (te, mem["end"]),
                            textcoords="offset points", xytext=(4, -12), fontsize=8,
                            color="#e76f51")
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no memory samples", ha="center", transform=ax.transAxes)
    status = phases.get("status")
    return _finish(fig, ax, out, title + ("" if status == "complete" else f"  [{status}]"),
                   labels=labels)


def _finish(fig: Any, ax: Any, out: Path, title: str, fontsize: int = 11,
            labels: list[Any] | None = None) -> Path:
    ax.set_title(title, fontsize=fontsize)
    ax.set_xlabel("seconds since server start")
    ax.set_ylabel("memory (MB)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if labels:
        place_labels(fig, labels)  # after the layout: the pixel widths are final
    fig.savefig(out)
    plt.close(fig)
    return out


def overlay_plot(series: list[tuple[str, Mprof]], out: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    for n, (name, mp) in enumerate(series):
        if not mp.mem:
            continue
        t0 = mp.mem[0][0]
        ax.plot([t - t0 for t, _ in mp.mem], [m for _, m in mp.mem], lw=1.2, label=name,
                color=plt.get_cmap("tab10")(n % 10))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("seconds since server start")
    ax.set_ylabel("memory (MB, server + children)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if any(mp.mem for _, mp in series):
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


PART_STYLE = (  # bottom to top: what the stack is made of, and its colour
    ("file_mb", "file-backed (libraries, mapped files)", "#b8c4d6"),
    ("other_anon_mb", "anonymous, not malloc's (Python object arenas, stacks, mmaps)", "#8d99ae"),
    ("malloc_in_use_mb", "malloc: in use (arrays, tensors, large objects)", "#4c72b0"),
    ("malloc_free_mb", "malloc: free but kept (retention)", "#dd8452"),
)


def parts_plot(points: list[dict[str, Any]], phases: dict[str, Any], t0: float, out: Path,
               title: str, note: str = "") -> Path:
    """RSS as a stack of its parts (infbench/analysis/breakdown.py), phases shaded, on memory.png's
    clock. Negative 'other anonymous' (malloc counting pages that are not resident) is drawn
    as zero, so the stack then overshoots the RSS line by that much."""
    fig, ax = plt.subplots(figsize=(10, 4.8), dpi=100)
    labels: list[Any] = []
    if points:
        xs = [p["time"] - t0 for p in points]
        layers = [[max(0.0, p[key] or 0.0) for p in points] for key, _, _ in PART_STYLE]
        stacked_top = [sum(col) for col in zip(*layers, strict=True)]
        rss = [p["rss_mb"] for p in points]
        top = max(rss + stacked_top) * HEADROOM
        ax.set_ylim(0, top)
        labels = _shade(ax, phases.get("phases", []), t0)
        ax.stackplot(xs, layers, labels=[label for _, label, _ in PART_STYLE],
                     colors=[c for _, _, c in PART_STYLE], alpha=0.85, lw=0)
        ax.plot(xs, rss, color="black", lw=1.2, label="RSS, all processes (sampler)")
        traced = [(x, p["python_traced_mb"]) for x, p in zip(xs, points, strict=True)
                  if p["python_traced_mb"] is not None]
        if traced:
            ax.plot([x for x, _ in traced], [y for _, y in traced], color="#2a9d8f", lw=1.2,
                    ls="--", label="Python heap (tracemalloc; overlaps the layers)")
        ax.legend(loc="lower right", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no sampler data", ha="center", transform=ax.transAxes)
    return _finish(fig, ax, out, title + (f"\n{note}" if note else ""), fontsize=10,
                   labels=labels)


SPLIT_AGGREGATES = ("total_ms", "models_ms")


def split_plot(split: list[dict[str, Any]], steps: list[dict[str, Any]], out: Path,
               title: str) -> Path | None:
    """Where the time went, per step: the server's median parts stacked as bars, beside the
    median the client (Locust) measured. None when there is no split to draw."""
    rows = [x for x in split if x.get("split")]
    if not rows:
        return None
    parts = sorted({k for x in rows for k, v in x["split"].items() if k.endswith("_ms")
                    and k not in SPLIT_AGGREGATES and not k.endswith("_server_ms")
                    and isinstance(v, int | float)})
    by_index = {st["index"]: st for st in steps}
    labels = [f"step {x['index']}\n" + (f"b{by_index[x['index']]['batch']}"
                                          if x["index"] in by_index else "") for x in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 3), 4.2), dpi=100)
    bottom = [0.0] * len(rows)
    cmap = plt.get_cmap("tab10")
    for n, part in enumerate(parts):
        vals = [max(0.0, float(x["split"].get(part) or 0.0)) for x in rows]
        ax.bar(range(len(rows)), vals, bottom=bottom, color=cmap(n % 10), width=0.6,
               label=part.removesuffix("_ms").replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    client = [(i, float(c)) for i, x in enumerate(rows)
              if (c := by_index.get(x["index"], {}).get("p50_ms")) is not None]
    if client:
        ax.plot([i for i, _ in client], [c for _, c in client], "D", color="black",
                label="client p50 (Locust)")
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("median ms per request")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def capacity_plot(probes: list[RateProbe], s: Search, out: Path, title: str) -> Path:
    """Latency (p50, p95) against the offered rate, each probe marked pass or fail and
    labelled with what it served."""
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=100)
    # (offered, p50, p95, probe) of the probes that finished requests, by offered rate
    pts = [(p.rate, p.p50_ms if p.p50_ms is not None else math.nan, p.p95_ms, p)
           for p in sorted(probes, key=lambda p: p.rate)
           if p.rps is not None and p.p95_ms is not None]
    if pts:
        ax.plot([x for x, _, _, _ in pts], [y for _, _, y, _ in pts], "-", color="#4c72b0",
                lw=1, alpha=0.6)
        ax.plot([x for x, _, _, _ in pts], [y for _, y, _, _ in pts], "--", color="#55a868",
                lw=1, alpha=0.8, marker=".", label="p50")
        for x, _, y, p in pts:
            ok = probe_passes(p, s)[0]
            ax.plot(x, y, "o" if ok else "x", color="#2a9d8f" if ok else "#d62728", ms=7)
            ax.annotate(f"served {p.rps:.3g}/s", (x, y), textcoords="offset points",
                        xytext=(4, 4), fontsize=7, color="#555555")
    ax.axhline(s.p95_ms, color="#d62728", lw=1, ls=":", label=f"p95 bound {s.p95_ms:g} ms")
    a = answer(probes, s)
    if a["found"]:
        ax.axvline(a["rate"], color="#2a9d8f", lw=1, ls=":",
                   label=f"capacity {a['rate']:.3g} req/s")
    ax.plot([], [], "o", color="#2a9d8f", label="p95, pass")
    ax.plot([], [], "x", color="#d62728", label="p95, fail")
    ax.set_xlabel("offered requests/s (open loop)")
    ax.set_ylabel("latency from intended send (ms)")
    ymax = max([s.p95_ms * 2, *(y for _, _, y, _ in pts)])
    if ymax > 20 * s.p95_ms:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
