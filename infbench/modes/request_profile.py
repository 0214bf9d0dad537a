"""Where one request's time goes: a variant's entry service profiled request by request.

    python -m infbench profile <variant> [<variant> ...] [--requests N]   (make profile_<v>)

For the scoring study (issue 11): N sequential POST /score requests (after a few warm-up ones)
from this process to the variant's entry service, in three passes, each on a fresh topology
started and stopped by the harness's own machinery (infbench/launch/topology.py inside a VariantRun,
so every exit path stops everything):

  off           no profiler: the timing lines (servers/scoring/common.py) give the table,
                exact and unperturbed, and the client's own clock the client-observed total
  pyinstrument  the server profiles each request (servers/shared/profiling.py: one HTML and one
                session per request) and the client's requests are profiled as well
  yappi         the same with yappi (wall clock, coroutine-aware): a .pstat and a text table
                per request, merged into one .pstat and one table for the N requests

One profiler per pass because both hook the interpreter's profile function: run together they
would measure each other, and a profiled pass's timings are inflated by its profiler (the off
pass keeps the table honest, and comparing the passes says what each profiler costs). The
client waits for the server's profile of a request to land before it sends the next, so
writing a profile never falls inside another request's latency.

Files (results/<run-id>/<variant>/profile/): profile.json, profile.md, and per pass a folder
<pass>/ with the services' own folders (timing lines in <entry>-0/), client.jsonl (one line
per request: the client's clock and the server's timing fields), and for the profiled passes
server/request-NN.{html,pyisession | pstat,txt}, server/all.{pstat,txt} (yappi) and
client.{html | pstat,txt}. Two variants or more: the run folder's profile.md puts them side by
side with the % change of each over the first.

The table math (`summarise`, `overlap`, `table`) is pure: files in, numbers out.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import math
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.analysis.stability import percentile
from infbench.config import Variant
from infbench.launch import get_launcher
from infbench.launch.contract import MAX_BODY_DEFAULT, MAX_IMAGES_DEFAULT
from infbench.launch.topology import Topology
from infbench.measure import keepalive
from infbench.modes.sweep import LoadError, VariantRun
from infbench.results import files
from infbench.results.schemas import PROFILE_SCHEMA

PASSES = ("off", "pyinstrument", "yappi")
DEFAULT_REQUESTS = 20
DEFAULT_WARMUP = 3
PROFILE_WAIT_S = 30.0  # the most we wait for the server's profile of one request
SERVER_DIR = "profiles"  # under the entry replica's folder: INFBENCH_PROFILE_DIR
# The scoring APIs' functions the profilers are read for (servers/scoring/scoring_*.py).
SCORING_FILES = ("scoring_flask.py", "scoring_fastapi.py")
CONCURRENT, SEQUENTIAL = 0.5, 0.1  # overlap share of the shorter call
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


@dataclass(frozen=True)
class PassSettings:
    requests: int = DEFAULT_REQUESTS
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    timeout: float = 30.0


# ---------------------------------------------------------------------------------------------
# The table math (pure)


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


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:,.1f}"


def table(builds: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The "where the time goes" table, builds side by side (markdown); with two builds or
    more, the % change of each build's median over the first's."""
    names = list(builds)
    head = ["ms per request"]
    for n in names:
        head += [f"{n} median", f"{n} p95"]
    head += [f"{n} vs {names[0]} (median)" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label in ROWS:
        cells = [label]
        for n in names:
            s = builds[n].get(key) or {}
            cells += [_f(s.get("median")), _f(s.get("p95"))]
        base = (builds[names[0]].get(key) or {}).get("median")
        cells += [change(base, (builds[n].get(key) or {}).get("median")) for n in names[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ---------------------------------------------------------------------------------------------
# Reading the profilers' files


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
        raise LoadError(f"cannot read the profile {path}: {type(e).__name__}: {e}") from None


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
        raise LoadError(f"cannot read the profile {path}: {type(e).__name__}: {e}") from None
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


# ---------------------------------------------------------------------------------------------
# The client


class Client:
    """Sequential POST /score over one keep-alive connection, timed with the client's own clock.

    A request that fails on the connection (the server closed it while idle, as Gunicorn's sync
    workers do, or a worker died) is sent once more on a new connection: POST /score only reads,
    so sending it again is safe. A second failure, or a timeout (the server may still be working
    on it), is a LoadError naming the entity."""

    def __init__(self, url: str, timeout: float) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def score(self, entity_id: int) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                row = self._score(entity_id)
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()  # the next request() opens a new connection
                if attempt == 2 or isinstance(e, TimeoutError):
                    raise LoadError(f"POST /score for entity {entity_id}: "
                                    f"{type(e).__name__}: {e}") from None
                continue
            if attempt == 2:
                row["retried"] = True
            return row
        raise AssertionError("unreachable")

    def _score(self, entity_id: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = json.dumps({"entity_id": entity_id}).encode()
        t1 = time.perf_counter()
        self.conn.request("POST", "/score", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        t2 = time.perf_counter()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        t3 = time.perf_counter()
        if resp.status != 200 or not isinstance(data, dict):
            detail = data.get("error") if isinstance(data, dict) else \
                raw[:200].decode(errors="replace")
            raise LoadError(f"POST /score for entity {entity_id}: {resp.status} {detail}")
        return {"entity_id": entity_id, "status": resp.status,
                "client_ms": round((t2 - t1) * 1000, 3),
                "client_json_ms": round(((t1 - t0) + (t3 - t2)) * 1000, 3),
                "timing": data.get("timing")}

    def close(self) -> None:
        self.conn.close()


class ClientProfiler:
    """The client's requests under one profiler, paused between requests (the waits for the
    server's files are not the client's time)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.profiler: Any = None
        if kind == "pyinstrument":
            from pyinstrument import Profiler

            self.profiler = Profiler(interval=0.001, async_mode="disabled")
        elif kind == "yappi":
            import yappi

            yappi.stop()
            yappi.clear_stats()
            yappi.set_clock_type("wall")

    @contextlib.contextmanager
    def on(self) -> Any:
        if self.kind == "pyinstrument":
            self.profiler.start()
        elif self.kind == "yappi":
            import yappi

            yappi.start(builtins=False, profile_threads=False)
        try:
            yield
        finally:
            if self.kind == "pyinstrument":
                self.profiler.stop()
            elif self.kind == "yappi":
                import yappi

                yappi.stop()

    def write(self, out: Path) -> list[Path]:
        if self.kind == "pyinstrument" and self.profiler.last_session is not None:
            html = out / "client.html"
            files.write_text(html, self.profiler.output_html())
            return [html]
        if self.kind == "yappi":
            import yappi

            stats = yappi.get_func_stats()
            try:
                stats.save(str(out / "client.pstat"), type="pstat")
            except OSError as e:
                raise files.WriteError(f"cannot write {out / 'client.pstat'}: "
                                       f"{files.describe(e)}") from None
            text = io.StringIO()
            text.write("client (this harness process), yappi wall clock, the measured "
                       "requests only\n")
            stats.sort("ttot", "desc").print_all(out=text, columns={
                0: ("name", 100), 1: ("ncall", 8), 2: ("tsub", 10), 3: ("ttot", 10),
                4: ("tavg", 10)})
            yappi.get_thread_stats().print_all(out=text)
            yappi.clear_stats()
            files.write_text(out / "client.txt", text.getvalue())
            return [out / "client.pstat", out / "client.txt"]
        return []


# ---------------------------------------------------------------------------------------------
# The passes, in the run loop


def with_profiler(v: Variant, kind: str) -> Variant:
    """The variant with its entry service profiling (kind "off": unchanged)."""
    if kind == "off":
        return v
    env = {"INFBENCH_PROFILER": kind, "INFBENCH_PROFILE_DIR": f"{{out}}/{SERVER_DIR}"}
    return dataclasses.replace(v, services=tuple(
        dataclasses.replace(s, env={**s.env, **env}) if s.name == v.entry else s
        for s in v.services))


def entities_of(v: Variant) -> int:
    """How many entities the load may ask for (the variant's INFBENCH_ENTITIES, else 100)."""
    raw = (v.load_env or {}).get("INFBENCH_ENTITIES", "")
    try:
        return max(1, int(raw))
    except ValueError:
        return 100


def wait_new(folder: Path, suffix: str, seen: set[Path], timeout: float) -> Path | None:
    """The first file ending `suffix` in `folder` not in `seen`, once it exists."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            new = sorted(p for p in folder.glob(f"*{suffix}") if p not in seen
                         and not p.name.startswith("."))
            if new:
                return new[0]
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


LAST_FILE = {"pyinstrument": ".html", "yappi": ".txt"}  # the file a server writes last
SERVER_FILES = {"pyinstrument": (".pyisession", ".html"), "yappi": (".pstat", ".txt")}


def runner(settings: PassSettings) -> type[VariantRun]:
    """A VariantRun whose work is the three passes (for run.run_study)."""

    class ProfileRun(VariantRun):
        _log: Path | None = None  # the entry replica's server.log, for the errors

        def _run(self) -> None:
            root = self.out / "profile"
            files.mkdir(root)
            doc: dict[str, Any] = {"schema": PROFILE_SCHEMA, "variant": self.v.name,
                                   "entry": self.v.entry, "settings": dataclasses.asdict(settings),
                                   "passes": {}}
            for kind in PASSES:
                self.progress.say(f"  pass {kind}: {settings.warmup} warm-up + "
                                  f"{settings.requests} request(s)")
                doc["passes"][kind] = self._pass(kind, root / kind)
                files.write_json(root / "profile.json", doc)
            finish(doc)
            files.write_json(root / "profile.json", doc)
            files.write_text(root / "profile.md", "\n".join(markdown({self.v.name: doc})) + "\n")

        def _pass(self, kind: str, out: Path) -> dict[str, Any]:
            files.mkdir(out)
            p = self.profile
            self.topology = Topology(
                variant=with_profiler(self.v, kind), launcher=get_launcher(self.plan.runtime),
                out_dir=out, model_path=self.model_path, sample_interval=p.sample_interval,
                run_id=self.out.parent.name, max_images=MAX_IMAGES_DEFAULT,
                max_body_bytes=MAX_BODY_DEFAULT,
                mark=lambda what, d: self._mark(what, {**d, "replica": f"{kind}/{d['replica']}"}))
            self.topology.start()
            entry = self.topology.entry
            server_dir = entry.spec.out_dir / SERVER_DIR
            found = None
            if kind == "off":  # Nagle meeting a delayed ACK would sit in "outside the app"
                found = keepalive.check(entry.url, "/health")
            self._log = entry.log_path
            client_rows, server_files = self._requests(kind, entry.url, server_dir, out)
            self.topology.stop()  # the timing lines are complete once the servers have exited
            self.topology = None
            timing_lines = read_timing_lines(entry.spec.out_dir)
            rows = request_rows(client_rows, timing_lines, settings.warmup)
            result: dict[str, Any] = {
                "timing_dir": str(entry.spec.out_dir.relative_to(self.out)),
                "timing_lines": len(timing_lines),
                **counts(client_rows, timing_lines, settings.warmup), "rows": rows}
            if found is not None:
                result["keepalive"] = found
            if kind != "off":
                measured = server_files[settings.warmup:]
                result["server_files"] = [str(f.relative_to(self.out)) for f in measured]
                result["cross_check"] = cross_check(kind, measured, rows)
                if kind == "yappi":
                    merge_pstats(measured, out / "server" / "all")
            result["summary"] = summarise(rows)
            return result

        def _requests(self, kind: str, url: str, server_dir: Path,
                      out: Path) -> tuple[list[dict[str, Any]], list[Path]]:
            rng = random.Random(settings.seed)
            n_entities = entities_of(self.v)
            client = Client(url, settings.timeout)
            prof = ClientProfiler(kind)
            rows: list[dict[str, Any]] = []
            kept: list[Path] = []
            seen: set[Path] = set()
            files.mkdir(out / "server")
            try:
                total = settings.warmup + settings.requests
                for i in range(total):
                    warm = i < settings.warmup
                    entity = rng.randrange(n_entities)
                    if warm or kind == "off":
                        row = client.score(entity)
                    else:
                        with prof.on():
                            row = client.score(entity)
                    row["warmup"] = warm
                    rows.append(row)
                    if kind != "off":
                        kept.append(self._collect(kind, server_dir, seen, out / "server",
                                                  f"warmup-{i + 1:02d}" if warm else
                                                  f"request-{i + 1 - settings.warmup:02d}"))
                files.write_text(out / "client.jsonl",
                                 "".join(json.dumps(r) + "\n" for r in rows))
                prof.write(out)
            finally:
                client.close()
            return rows, kept

        def _collect(self, kind: str, server_dir: Path, seen: set[Path], dest: Path,
                     name: str) -> Path:
            """The server's files of the request just answered, moved to dest/<name>.*; the
            path of the one the cross-check reads."""
            last = wait_new(server_dir, LAST_FILE[kind], seen, PROFILE_WAIT_S)
            if last is None:
                raise LoadError(f"the server wrote no {kind} profile of request {name} within "
                                f"{PROFILE_WAIT_S:.0f} s (in {server_dir}); the scoring "
                                f"service's log says why: {self._log}")
            seen.add(last)
            stem = last.with_suffix("")
            moved = []
            for suffix in SERVER_FILES[kind]:
                src = stem.with_suffix(suffix)
                dst = dest / f"{name}{suffix}"
                try:
                    src.replace(dst)
                except OSError as e:
                    raise files.WriteError(f"cannot write {dst}: {files.describe(e)}") from None
                moved.append(dst)
            return moved[0]

    return ProfileRun


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


def concurrency_line(name: str, doc: Mapping[str, Any]) -> str:
    mc = doc.get("model_calls") or {}
    share = mc.get("timing_overlap_median")
    pct = "-" if share is None else f"{share * 100:.0f}%"
    return (f"{name}: model_a and model_b ran {mc.get('timing_lines')} (timing lines: median "
            f"overlap {pct} of the shorter call; pyinstrument: {mc.get('pyinstrument')}; "
            f"yappi: {mc.get('yappi')})")


def notes(name: str, doc: Mapping[str, Any]) -> list[str]:
    """What makes a variant's table less than it looks: short timing lines, a keep-alive stall."""
    out = []
    passes = doc.get("passes") or {}
    for kind in PASSES:
        note = count_note(name, kind, passes.get(kind) or {})
        if note:
            out.append(note)
    found = (passes.get("off") or {}).get("keepalive") or {}
    if found.get("stalled"):
        out.append(f"{name}: keep-alive stall: {keepalive.message(found)}; the outside-the-app "
                   "time includes it")
    return out


def markdown(docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """profile.md: the table side by side, the concurrency lines, the cross-check and the cost."""
    names = list(docs)
    n = next(iter(docs.values())).get("settings", {}).get("requests")
    out = [f"# Where the time goes: {', '.join(names)}", "",
           f"{n} sequential POST /score requests per pass after warm-ups; the table is the "
           "unprofiled pass's timing lines (exact), JSON from the yappi pass (profiled, so an "
           "upper bound).", ""]
    out += table({k: d.get("table") or {} for k, d in docs.items()})
    out += [""] + [f"- {concurrency_line(k, d)}" for k, d in docs.items()]
    out += [f"- {note}" for k, d in docs.items() for note in notes(k, d)]
    out += ["", "## Cross-check: the profilers against the timing lines of the same pass", "",
            "| build | pass | feature read: profiler / timing | model stage: profiler / timing "
            "wall / timing a+b | model calls |", "|---|---|---|---|---|"]
    for k, d in docs.items():
        for kind in ("pyinstrument", "yappi"):
            cc = (d.get("passes", {}).get(kind) or {}).get("cross_check") or {}
            if not cc:
                continue

            def m(key: str, c: Mapping[str, Any] = cc) -> str:
                return _f((c.get(key) or {}).get("median"))

            out.append(f"| {k} | {kind} | {m('profiler_features_ms')} / "
                       f"{m('timing_features_ms')} | {m('profiler_call_model_ms')} / "
                       f"{m('timing_models_ms')} / {m('timing_model_calls_ms')} | "
                       f"{cc.get('model_calls')} |")
    out += ["", "## What profiling costs (median server total, and client-observed, against "
            "the unprofiled pass)", "", "| build | profiler | server total | change | client "
            "change |", "|---|---|---|---|---|"]
    for k, d in docs.items():
        for kind, c in (d.get("profiler_cost") or {}).items():
            out.append(f"| {k} | {kind} | {_f(c.get('server_total_median_ms'))} | "
                       f"{c.get('server_change')} | {c.get('client_change')} |")
    return out


def report(run_dir: Path, names: Sequence[str], say: Callable[[str], None]) -> bool:
    """Print (and for several variants write run_dir/profile.md) the side-by-side table; False
    when a variant left no profile.json."""
    docs: dict[str, dict[str, Any]] = {}
    for name in names:
        path = run_dir / name / "profile" / "profile.json"
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            say(f"{name}: no profile ({path} missing or unreadable)")
            continue
        if "table" in doc:
            docs[name] = doc
    if not docs:
        return False
    lines = markdown(docs)
    if len(docs) > 1:
        files.write_text(run_dir / "profile.md", "\n".join(lines) + "\n")
    say("\n".join(lines))
    return len(docs) == len(names)
