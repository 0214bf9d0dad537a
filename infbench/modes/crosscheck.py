"""A second opinion for any variant: a dedicated tool beside our closed loop, alternating.

    python -m infbench crosscheck <variant> [--connections N] [--seconds S] [--rounds R]
        [--tool wrk|hey]                                  (make crosscheck_<variant>)

The variant is started once (its topology, monitors, baseline: a run folder like any other).
Then the request its Locust users send is written out by the variant's own Locust file
(loadtests/request_dump.py, with the step's environment), sent once to check the answer
(`tools.preflight`: for gRPC through grpcio, since h2load cannot read grpc-status), warmed up
(the tool for `--warmup` seconds, not counted), and the rounds alternate ABBA
(analysis/crosscheck.py `order`): a tool round (wrk, or hey, for HTTP; h2load for gRPC) at
N connections for S seconds, and a step of ours, N users without waiting, for S seconds, the
same request. Each tool round is a `tool` phase in phases.json; a tool that
crashed, or whose every request failed, is a `tool_failed` fault (the variant is `degraded`
and the crosscheck does not judge). `<variant>/crosscheck.json` holds every round, the
medians, the ratios and the verdict; `crosscheck.md` the side-by-side table.

The CPU each request cost: the tool's from its rusage, ours from the step's `_loadgen.csv`
(every Locust process), the server's from its processes' CPU times: over the tool's round,
and over our round's load span alone (sampled every 0.1 s, `CpuTrace`), since the requests
counted are the span's; the whole round's is kept beside it (`server_cpu_round_s`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from infbench.analysis import crosscheck, loadgen
from infbench.config import Step
from infbench.measure import load, tools
from infbench.measure.load import LoadError, step_name
from infbench.modes.sweep import VariantRun
from infbench.report import crosscheck as report
from infbench.results import files
from infbench.results.schemas import CROSSCHECK_SCHEMA


@dataclasses.dataclass(frozen=True)
class Settings:
    connections: int
    seconds: float
    rounds: int = 2
    http_tool: str = "wrk"
    warmup: float = 2.0  # seconds of the tool, not counted, before the first round
    pin: bool = True  # the generators on the first core, the services on the others
    tolerance: crosscheck.Tolerance = crosscheck.TOLERANCE


class CrosscheckRun(VariantRun):
    """The sweep's VariantRun whose load is the crosscheck's rounds; `runner` gives it its
    settings."""

    settings: Settings
    pinned: dict[str, Any]

    def _load(self) -> None:
        s = self.settings
        assert self.topology is not None
        p = self.profile
        spec = Step(batch=p.steps[0].batch, seconds=s.seconds)
        folder = self.out / "crosscheck"
        files.mkdir(folder)
        replay = self._replay(spec, folder)
        tool = s.http_tool if replay.protocol == "http" else "h2load"
        mine = os.sched_getaffinity(0)
        self.pinned = self._pin(mine) if s.pin else {"why_not": "--no-pin"}
        try:
            self._rounds(spec, folder, replay, tool)
        finally:
            os.sched_setaffinity(0, mine)

    def _pin(self, mine: set[int]) -> dict[str, Any]:
        """Both generators on one core, every thread of every service on the others: on a
        small machine the generator's CPU otherwise comes out of the server's, and by a
        different amount for each generator (wrk's ~40 µs a request against Locust's
        hundreds). Threads and processes the services start later inherit it."""
        assert self.topology is not None
        cores = sorted(mine)
        if len(cores) < 2:
            return {"why_not": f"one core ({cores[0]}) to run on"}
        gen, srv = {cores[0]}, set(cores[1:])
        missed = []
        for proc_, name, _ in self.topology.processes():
            try:
                for t in proc_.threads():
                    with contextlib.suppress(ProcessLookupError):
                        os.sched_setaffinity(t.id, srv)
            except (psutil.Error, OSError) as e:
                missed.append(f"{name} pid {proc_.pid}: {type(e).__name__}")
        os.sched_setaffinity(0, gen)  # Locust and the tool are started from here
        pinned: dict[str, Any] = {"generator": sorted(gen), "services": sorted(srv)}
        if missed:
            pinned["not_pinned"] = missed
            self.log.event("note", "crosscheck: could not pin " + ", ".join(missed))
        return pinned

    def _rounds(self, spec: Step, folder: Path, replay: tools.Replay, tool: str) -> None:
        s = self.settings
        p = self.profile
        why = tools.preflight(replay)
        if why:
            raise LoadError(f"the variant's request, sent once to {replay.url}, was "
                            f"refused: {why}")
        self.progress.say(f"  crosscheck: {tool} and infbench's closed loop, "
                          f"{s.connections} connections, {s.seconds:g} s a round, "
                          f"{s.rounds} round(s) each, order "
                          + " ".join(crosscheck.order(s.rounds)) + "; "
                          + report.pinning_said(self.pinned))
        if s.warmup > 0:
            w = self._tool_round(tool, replay, 0, folder, seconds=s.warmup)
            if w.get("error"):
                self.progress.say(f"  warm-up FAULT: {w['error']}")
        rows: list[dict[str, Any]] = []
        counters = {"tool": 0, "ours": 0}
        sides = crosscheck.order(s.rounds)
        for k, side in enumerate(sides, start=1):
            counters[side] += 1
            n = counters[side]
            if side == "tool":
                rows.append(self._tool_round(tool, replay, n, folder))
            else:
                rows.append(self._our_round(spec, n))
            r = rows[-1]
            self.progress.say(
                f"  round {k}/{len(sides)} {r['who']}: {_f(r['rps'])} req/s, p50 "
                f"{_f(r['p50_ms'])} ms, p99 {_f(r['p99_ms'])} ms"
                + (f"  FAULT: {r['error']}" if r.get("error") else ""))
            self._write(tool, replay, rows)
            if p.pause and k < len(sides):
                self._hold("pause", p.pause, f"pause {k}/{len(sides)}", index=k)

    # -- the request -------------------------------------------------------------
    def _replay(self, spec: Step, folder: Path) -> tools.Replay:
        assert self.topology is not None
        settings = self.topology.load_settings()
        env = load.locust_env(self.profile, spec, self.images, folder / "dump_counts.json",
                              self.v.request, self.plan.model_of(self.v).input_size)
        env.update(settings.get("extra_env") or {})
        tools.dump_request(settings.get("locustfile", load.LOCUSTFILE), env, folder)
        return tools.Replay.from_dump(folder, self.topology.entry.url)

    # -- the two sides -----------------------------------------------------------
    def _server_cpu(self) -> float:
        assert self.topology is not None
        total = 0.0
        for proc_, _, _ in self.topology.processes():
            with contextlib.suppress(psutil.Error):
                t = proc_.cpu_times()
                total += t.user + t.system
        return total

    def _tool_round(self, tool: str, replay: tools.Replay, n: int, folder: Path,
                    seconds: float | None = None) -> dict[str, Any]:
        """Round n of the tool (0: the warm-up, not counted)."""
        s = self.settings
        secs = s.seconds if seconds is None else seconds
        label = f"round {n}" if n else "warm-up"
        phase = self.log.begin("tool", tool=tool, round=n, planned=secs,
                               connections=s.connections, warmup=not n)
        srv0, t0 = self._server_cpu(), time.monotonic()

        def tick() -> None:
            self._check_server()
            self._tick(f"{tool} {label}", time.monotonic() - t0, secs)

        res = tools.run(tool, replay, s.connections, secs, folder,
                        f"{tool}-round{n}" if n else f"{tool}-warmup", on_tick=tick)
        srv = self._server_cpu() - srv0
        row = {"who": tool, "side": "tool", "round": n, **_pick(res.as_dict()),
               "server_cpu_s": round(srv, 3)}
        _per_request(row, res.cpu_s, srv)
        phase.update({k: row[k] for k in ("rps", "p50_ms", "p99_ms", "requests", "ok",
                                          "errors", "exit_code", "error")})
        self.log.end()
        if res.error:
            self.log.event("tool_failed", f"{tool} {label}: {res.error}")
            phase["status"] = "failed"
        self.log.save()
        self._check_server()
        return row

    def _our_round(self, spec: Step, n: int) -> dict[str, Any]:
        s = self.settings
        with CpuTrace(self._server_cpu) as trace:
            self._step(n, s.rounds, spec, None)
        prefix = self.out / step_name(n, spec)
        try:
            counts = json.loads(Path(f"{prefix}_counts.json").read_text())
        except (OSError, ValueError):
            counts = {}
        figs = crosscheck.step_figures(prefix, counts)
        t0, t1 = counts.get("test_start"), counts.get("test_stopping")
        gen = loadgen.figures(Path(f"{prefix}_loadgen.csv"), t0, t1) or {}
        gen_cpu = gen.get("total_cpu_pct")
        span = (t1 - t0) if t0 and t1 else None
        cpu_s = round(gen_cpu / 100 * span, 3) if gen_cpu is not None and span else None
        # The server's CPU over the load's span only, as the requests counted are the span's
        # (Locust's start and drain are not the tool's either); the whole round's beside it.
        srv_round = trace.total()
        srv = trace.between(t0, t1) if t0 and t1 else None
        step: dict[str, Any] = next((ph for ph in reversed(self.log.data["phases"])
                                if ph["kind"] == "step" and ph.get("index") == n), {})
        error = None
        if step.get("failed"):
            error = next((e["detail"] for e in reversed(self.log.data["events"])
                          if e.get("step") == n), "the step failed")
        row = {"who": "infbench", "side": "ours", "round": n, **figs,
               "errors": {"failed": figs["failed"]} if figs["failed"] else {},
               "connections": s.connections, "seconds": spec.seconds, "cpu_s": cpu_s,
               "exit_code": step.get("locust_exit_code"), "error": error,
               "limited_by_loadgen": gen.get("limited"),
               "server_cpu_s": None if srv is None else round(srv, 3),
               "server_cpu_round_s": round(srv_round, 3)}
        _per_request(row, cpu_s, srv)
        return row

    # -- the document ------------------------------------------------------------
    def _write(self, tool: str, replay: tools.Replay, rows: list[dict[str, Any]]) -> None:
        doc = document(self.v.name, tool, replay, self.settings, rows, self.pinned)
        files.write_json(self.out / "crosscheck.json", doc)
        files.write_text(self.out / "crosscheck.md", "\n".join(report.markdown(doc)) + "\n")



def runner(s: Settings) -> type[VariantRun]:
    """A VariantRun whose load is the crosscheck's rounds (for sweep.run_study)."""
    return type("CrosscheckRun", (CrosscheckRun,), {"settings": s})


def document(variant: str, tool: str, replay: tools.Replay, s: Settings,
             rows: list[dict[str, Any]], pinned: dict[str, Any]) -> dict[str, Any]:
    ours = crosscheck.medians([r for r in rows if r["side"] == "ours"])
    theirs = crosscheck.medians([r for r in rows if r["side"] == "tool"])
    faults = [f"{r['who']} round {r['round']}: {r['error']}" for r in rows if r.get("error")]
    judged = crosscheck.judge(ours, theirs, s.tolerance)
    done = len(rows) == 2 * s.rounds
    return {
        "schema": CROSSCHECK_SCHEMA, "variant": variant, "tool": tool,
        "protocol": replay.protocol, "url": replay.url, "method": replay.method,
        "body_bytes": replay.body.stat().st_size if replay.body.exists() else None,
        "notes": list(replay.notes), "connections": s.connections, "seconds": s.seconds,
        "order": crosscheck.order(s.rounds), "complete": done and not faults,
        "pinned": pinned,
        "rounds": rows, "medians": {"tool": theirs, "ours": ours},
        "tolerance": {**s.tolerance.as_dict(), "said": s.tolerance.said()},
        "ratio": judged["ratio"], "within": judged["within"],
        # Each side's own round-to-round spread in req/s: where it is over the tolerance, the
        # variant's own variation is larger than what is checked (said in crosscheck.md).
        "spread": {"tool": crosscheck.spread([r for r in rows if r["side"] == "tool"]),
                   "ours": crosscheck.spread([r for r in rows if r["side"] == "ours"])},
        # No verdict from a crosscheck with a fault or not all its rounds.
        "agree": judged["agree"] if done and not faults else None, "faults": faults,
    }


def _pick(d: dict[str, Any]) -> dict[str, Any]:
    return {k: d[k] for k in ("connections", "seconds", "requests", "ok", "errors", "rps",
                              "p50_ms", "p99_ms", "cpu_s", "exit_code", "error")}


def _per_request(row: dict[str, Any], gen_cpu_s: float | None,
                 server_cpu_s: float | None) -> None:
    """CPU µs a request, of the generator and of the server, over the round's successes."""
    ok = row.get("ok") or 0
    row["generator_us_per_request"] = round(1e6 * gen_cpu_s / ok, 1) \
        if ok and gen_cpu_s is not None else None
    row["server_us_per_request"] = round(1e6 * server_cpu_s / ok, 1) \
        if ok and server_cpu_s is not None else None


class CpuTrace:
    """A CPU-seconds counter (`read`) sampled every `every` s on a thread while the block runs,
    so that the CPU over any span inside it can be read afterwards (linear between samples):
    the server's CPU over our round's load alone, without Locust's start and drain."""

    def __init__(self, read: Callable[[], float], every: float = 0.1) -> None:
        self.read, self.every = read, every
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="infbench-cpu-trace",
                                        daemon=True)

    def __enter__(self) -> CpuTrace:
        self.samples.append((time.time(), self.read()))
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append((time.time(), self.read()))

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append((time.time(), self.read()))

    def total(self) -> float:
        return self.samples[-1][1] - self.samples[0][1]

    def at(self, t: float) -> float:
        pts = self.samples
        if t <= pts[0][0]:
            return pts[0][1]
        for (ta, ca), (tb, cb) in itertools.pairwise(pts):
            if ta <= t <= tb:
                return ca if tb == ta else ca + (cb - ca) * (t - ta) / (tb - ta)
        return pts[-1][1]

    def between(self, t0: float, t1: float) -> float:
        return self.at(t1) - self.at(t0)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:,.2f}" if x < 100 else f"{x:,.0f}"
