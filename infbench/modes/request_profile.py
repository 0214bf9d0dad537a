"""Where one request's time goes: a variant's entry service profiled request by request.

    python -m infbench trace <variant> [<variant> ...] [--requests N]   (make trace_<v>)

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

This module runs the passes. The numbers (`summarise`, `overlap`, the cross-check) are
infbench/analysis/request_profile.py, pure: files in, numbers out; profile.md and the console
lines are infbench/report/request_profile.py; the client is infbench/measure/request_client.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.analysis.request_profile import (
    PASSES,
    counts,
    cross_check,
    finish,
    merge_pstats,
    read_timing_lines,
    request_rows,
    summarise,
)
from infbench.config import Variant
from infbench.launch import get_launcher
from infbench.launch.contract import MAX_BODY_DEFAULT, MAX_IMAGES_DEFAULT
from infbench.launch.topology import Topology
from infbench.measure import keepalive
from infbench.measure.load import LoadError
from infbench.measure.request_client import Client, ClientProfiler
from infbench.modes.sweep import VariantRun
from infbench.report.request_profile import markdown
from infbench.results import files
from infbench.results.readers import ReadError
from infbench.results.schemas import PROFILE_SCHEMA

DEFAULT_REQUESTS = 20
DEFAULT_WARMUP = 3
PROFILE_WAIT_S = 30.0  # the most we wait for the server's profile of one request
SERVER_DIR = "profiles"  # under the entry replica's folder: INFBENCH_PROFILE_DIR


@dataclass(frozen=True)
class PassSettings:
    requests: int = DEFAULT_REQUESTS
    warmup: int = DEFAULT_WARMUP
    seed: int = 0
    timeout: float = 30.0


# ---------------------------------------------------------------------------------------------
# The table math (pure)


# ---------------------------------------------------------------------------------------------
# Reading the profilers' files


# ---------------------------------------------------------------------------------------------
# The client


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


class ProfileRun(VariantRun):
    """The sweep's VariantRun whose work is the three passes; `runner` gives it its
    settings."""

    settings: PassSettings
    _log: Path | None = None  # the entry replica's server.log, for the errors

    def _run(self) -> None:
        settings = self.settings
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
        settings = self.settings
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
            try:
                result["cross_check"] = cross_check(kind, measured, rows)
            except ReadError as e:  # a damaged profile file: this variant fails, in a line
                raise LoadError(str(e)) from None
            if kind == "yappi":
                merge_pstats(measured, out / "server" / "all")
        result["summary"] = summarise(rows)
        return result

    def _requests(self, kind: str, url: str, server_dir: Path,
                  out: Path) -> tuple[list[dict[str, Any]], list[Path]]:
        settings = self.settings
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



def runner(settings: PassSettings) -> type[VariantRun]:
    """A VariantRun whose work is the three passes (for run.run_study)."""
    return type("ProfileRun", (ProfileRun,), {"settings": settings})


