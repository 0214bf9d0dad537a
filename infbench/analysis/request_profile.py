"""Request profiling, the numbers: the passes' timing lines and the profilers' files in, the
"where the time goes" table, the cross-check and what each profiler cost out (pure; files in,
numbers out). infbench/modes/request_profile.py runs the passes."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from infbench.analysis.stability import percentile
from infbench.results import files
from infbench.results.readers import ReadError

CONCURRENT, SEQUENTIAL = 0.5, 0.1  # overlap share of the shorter call


PASSES = ("off", "pyinstrument", "yappi")


# The scoring APIs' functions the profilers are read for (servers/scoring/scoring_*.py).
SCORING_FILES = ("scoring_flask.py", "scoring_fastapi.py")


# (row key, label) of the "where the time goes" table.
ROWS = (
    ("features_ms", "feature read (Redis)"),
    ("model_a_ms", "model_a call"),
    ("model_b_ms", "model_b call"),
    ("models_ms", "model stage (wall)"),
    ("framework_ms", "framework (rest of server time)"),
    ("total_ms", "server total"),
    ("json_ms", "JSON encode/decode in the server (yappi pass; inside the rows above)"),
    ("outside_ms", "outside the app (network, HTTP server)"),
    ("client_ms", "client-observed total"),
    ("client_json_ms", "client JSON encode + decode"),
)


def stats(values: Sequence[float | None]) -> dict[str, float | None]:
    """Median and p95 (nearest rank) of the values that are there."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"median": None, "p95": None, "n": 0}
    return {"median": round(statistics.median(v), 3), "p95": round(percentile(v, 0.95) or 0, 3),
            "n": len(v)}


def overlap(a: float | None, b: float | None, wall: float | None) -> float | None:
    """How much two calls overlapped, as a share of the shorter one: (a + b - wall) / min(a, b).

    1 when the shorter ran entirely inside the longer (concurrent), 0 or below when the pair took
    at least as long as both in a row (sequential: the gap between them makes it negative).
    """
    if a is None or b is None or wall is None or min(a, b) <= 0:
        return None
    return (a + b - wall) / min(a, b)


def concurrency(shares: Sequence[float | None]) -> str:
    """The word for the median overlap share."""
    s = [x for x in shares if x is not None]
    if not s:
        return "unknown"
    m = statistics.median(s)
    if m >= CONCURRENT:
        return "concurrent"
    if m <= SEQUENTIAL:
        return "sequential"
    return "partly overlapping"


def request_rows(client_rows: Sequence[Mapping[str, Any]],
                 timing_lines: Sequence[Mapping[str, Any]], warmup: int) -> list[dict[str, Any]]:
    """The measured requests: the server's timing line of each (the scoring API's lines in time
    order, warm-ups first) beside the client's clock. The i-th 200 line after the warm-ups is the
    i-th measured request, because the client sends one at a time."""
    lines = sorted((ln for ln in timing_lines if ln.get("status") == 200),
                   key=lambda ln: float(ln.get("t") or 0))[warmup:]
    measured = [c for c in client_rows if not c.get("warmup")]
    out = []
    for c, ln in zip(measured, lines, strict=False):
        row = {**{k: v for k, v in ln.items() if k.endswith("_ms")},
               "client_ms": c.get("client_ms"), "client_json_ms": c.get("client_json_ms")}
        if row.get("client_ms") is not None and row.get("total_ms") is not None:
            row["outside_ms"] = round(row["client_ms"] - row["total_ms"], 3)
        row["overlap"] = overlap(row.get("model_a_ms"), row.get("model_b_ms"),
                                 row.get("models_ms"))
        out.append(row)
    return out


def counts(client_rows: Sequence[Mapping[str, Any]],
           timing_lines: Sequence[Mapping[str, Any]], warmup: int) -> dict[str, int]:
    """The measured requests the client sent and the timing lines there are for them: fewer
    lines when a worker was killed before it flushed its file (the table then has fewer rows)."""
    return {"requests_measured": sum(1 for c in client_rows if not c.get("warmup")),
            "timing_lines_measured": max(0, sum(1 for ln in timing_lines
                                                if ln.get("status") == 200) - warmup)}


def count_note(name: str, kind: str, result: Mapping[str, Any]) -> str | None:
    """One line for profile.md when a pass's timing lines and requests do not pair up."""
    sent, got = result.get("requests_measured"), result.get("timing_lines_measured")
    if sent is None or got is None or sent == got:
        return None
    return (f"{name}, {kind} pass: {got} timing line(s) for {sent} measured request(s) (a "
            f"worker exited before writing its lines?); the table pairs the first "
            f"{min(sent, got)}")


def summarise(rows: Sequence[Mapping[str, Any]],
              json_ms: Sequence[float | None] = ()) -> dict[str, Any]:
    """The table of one pass: median/p95 per row, and whether the model calls overlapped."""
    out: dict[str, Any] = {key: stats([r.get(key) for r in rows]) for key, _ in ROWS}
    out["json_ms"] = stats(list(json_ms))
    shares = [r.get("overlap") for r in rows]
    out["overlap"] = stats(shares)
    out["model_calls"] = concurrency(shares)
    out["requests"] = len(rows)
    return out


def change(base: float | None, new: float | None) -> str:
    if base is None or new is None or base == 0:
        return "-"
    return f"{(new - base) / base * 100:+.0f}%"


def _scoring_function(path: str, name: str, names: Iterable[str]) -> bool:
    return name in names and Path(path).name in SCORING_FILES


def _json_function(path: str, name: str) -> bool:
    return name in ("dumps", "loads") and path.replace("\\", "/").endswith("json/__init__.py")


def load_pstat(path: Path, stream: io.StringIO | None = None) -> Any:
    """pstats.Stats of a profile file; a missing or damaged one is one line naming it."""
    import pstats

    try:
        return pstats.Stats(str(path), stream=stream or io.StringIO())
    except (OSError, ValueError, TypeError, EOFError) as e:
        raise ReadError(f"cannot read the profile {path}: {type(e).__name__}: {e}") from None


def read_pstat(path: Path) -> dict[str, float]:
    """From a yappi .pstat of one request: ms in the scoring API's functions (wall, including
    awaits) and in JSON encode/decode (json.dumps/loads, whoever called them)."""
    st = load_pstat(path)
    out = {"read_features": 0.0, "call_model": 0.0, "score": 0.0, "json": 0.0,
           "call_model_calls": 0.0}
    for (file, _line, name), (_cc, nc, _tt, ct, _callers) in st.stats.items():
        if _scoring_function(file, name, ("read_features", "call_model", "score")):
            out[name] += ct * 1000
            if name == "call_model":
                out["call_model_calls"] += nc
        elif _json_function(file, name):
            out["json"] += ct * 1000
    return {k: round(v, 3) for k, v in out.items()}


def read_pyisession(path: Path) -> dict[str, float]:
    """From a pyinstrument session of one request: sampled ms under the scoring API's
    read_features and call_model frames, and the session's duration."""
    from pyinstrument.session import Session

    try:
        session = Session.load(str(path))
    except (OSError, ValueError, TypeError, KeyError) as e:
        raise ReadError(f"cannot read the profile {path}: {type(e).__name__}: {e}") from None
    out = {"read_features": 0.0, "call_model": 0.0, "duration": session.duration * 1000}
    root = session.root_frame()
    stack = [root] if root is not None else []
    while stack:
        frame = stack.pop()
        if _scoring_function(frame.file_path or "", frame.function or "",
                             ("read_features", "call_model")):
            out[frame.function or ""] += frame.time * 1000
            continue  # its own children are inside its time
        stack.extend(frame.children)
    return {k: round(v, 3) for k, v in out.items()}


def cross_check(kind: str, server_files: Sequence[Path],
                rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A profiled pass's profiler figures beside the same pass's timing lines, request by
    request, and the overlap of the two model calls as the profiler saw it."""
    per = [read_pstat(p) if kind == "yappi" else read_pyisession(p) for p in server_files]
    out: dict[str, Any] = {"requests": len(per)}
    out["profiler_features_ms"] = stats([p["read_features"] for p in per])
    out["timing_features_ms"] = stats([r.get("features_ms") for r in rows])
    out["profiler_call_model_ms"] = stats([p["call_model"] for p in per])
    out["timing_models_ms"] = stats([r.get("models_ms") for r in rows])
    out["timing_model_calls_ms"] = stats([
        (r["model_a_ms"] + r["model_b_ms"]) if r.get("model_a_ms") is not None
        and r.get("model_b_ms") is not None else None for r in rows])
    if kind == "yappi":
        # yappi times each coroutine from its start to its end: two calls that overlap add up
        # to more than the request that made them.
        out["profiler_score_ms"] = stats([p["score"] for p in per])
        out["json_ms"] = stats([p["json"] for p in per])
        shares = [overlap_sum(p["call_model"], p["score"]) for p in per]
        out["how"] = ("yappi: both call_model coroutines' wall time together against the "
                      "whole endpoint's (score) wall time")
    else:
        # pyinstrument samples one stack at a time: overlapping calls are sampled once, so the
        # model stage's sampled time is the pair's wall time, set against the two calls' own.
        shares = [overlap(r.get("model_a_ms"), r.get("model_b_ms"), p["call_model"])
                  for p, r in zip(per, rows, strict=False)]
        out["how"] = ("pyinstrument: the sampled time under call_model (the pair's wall time) "
                      "against model_a + model_b from the same requests' timing lines")
    out["overlap"] = stats(shares)
    out["model_calls"] = concurrency(shares)
    return out


def overlap_sum(calls_ms: float, request_ms: float) -> float | None:
    """yappi's view: the calls' summed wall time beyond the request's own, as a share of half
    the calls (the shorter call's size when the two are alike). Above 0: they overlapped."""
    if calls_ms <= 0:
        return None
    return (calls_ms - request_ms) / (calls_ms / 2)


def merge_pstats(paths: Sequence[Path], out: Path) -> None:
    """The requests' yappi profiles as one .pstat and its text table (sorted by cumulative)."""
    if not paths:
        return
    text = io.StringIO()
    st = load_pstat(paths[0], text)
    for p in paths[1:]:
        st.add(load_pstat(p))
    dst = out.with_suffix(".pstat")
    try:
        st.dump_stats(str(dst))
    except OSError as e:
        raise files.WriteError(f"cannot write {dst}: {files.describe(e)}") from None
    text.write(f"yappi (wall clock) over {len(paths)} request(s), merged\n")
    st.sort_stats("cumulative").print_stats(60)
    files.write_text(out.with_suffix(".txt"), text.getvalue())


def read_timing_lines(folder: Path) -> list[dict[str, Any]]:
    """The scoring API's timing lines (timings-<pid>.jsonl, one file per worker)."""
    out = []
    for path in sorted(folder.glob("timings-*.jsonl")):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                rec = json.loads(line)
                if isinstance(rec, dict):
                    out.append(rec)
    return out


def finish(doc: dict[str, Any]) -> None:
    """The variant's table (from the off pass, JSON from the yappi pass), the concurrency line
    and what each profiler cost, into `doc`."""
    passes = doc["passes"]
    off = passes.get("off", {}).get("summary") or {}
    yappi_cc = passes.get("yappi", {}).get("cross_check") or {}
    table_ = dict(off)
    if yappi_cc.get("json_ms"):
        table_["json_ms"] = yappi_cc["json_ms"]
    doc["table"] = table_
    doc["model_calls"] = {
        "timing_lines": off.get("model_calls"),
        "timing_overlap_median": (off.get("overlap") or {}).get("median"),
        **{k: (passes.get(k, {}).get("cross_check") or {}).get("model_calls")
           for k in ("pyinstrument", "yappi")}}
    base = (off.get("total_ms") or {}).get("median")
    base_client = (off.get("client_ms") or {}).get("median")
    doc["profiler_cost"] = {
        k: {"server_total_median_ms": ((passes.get(k, {}).get("summary") or {})
                                       .get("total_ms") or {}).get("median"),
            "server_change": change(base, ((passes.get(k, {}).get("summary") or {})
                                           .get("total_ms") or {}).get("median")),
            "client_change": change(base_client, ((passes.get(k, {}).get("summary") or {})
                                                  .get("client_ms") or {}).get("median"))}
        for k in ("pyinstrument", "yappi") if k in passes}
