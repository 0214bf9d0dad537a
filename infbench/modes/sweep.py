"""A run: each variant's services under mprof, the profile's steps of Locust load, phases on disk.

The flow for one variant (see DESIGN.md):
  start the topology (each service in dependency order, each replica health-checked from its
  own process tree) -> baseline -> for each step: Locust (CSV + HTML) -> drain in-flight
  requests -> pause -> cooldown -> stop everything (always, on every exit path)

Faults are events (phases.json "events"): a process of a service that exits or appears (a
restarted worker), a replica that dies, a load generator that fails, a step where every
request failed, a damaged artifact. Each marks its step `degraded`/`failed` and the variant
`degraded`; the run is `complete` only if every variant completed without one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import psutil

from infbench.analysis import stall, summary, verdict
from infbench.config import Experiments, Model, Profile, Step, Variant, as_dict, fingerprint
from infbench.launch import LaunchError, get_launcher, proc
from infbench.launch.contract import MAX_BODY_DEFAULT, MAX_IMAGES_DEFAULT
from infbench.launch.topology import Topology
from infbench.measure import (
    assets,
    capture,
    census,
    keepalive,
    manifest,
    model_alone,
    monitors,
    native_stacks,
    probecheck,
    window,
)
from infbench.measure.load import LoadError, StepLoad, check_outputs, start_step
from infbench.measure.phases import PhaseLog
from infbench.measure.procwatch import ProcessWatch
from infbench.results import files
from infbench.results.files import WriteError, write_json
from infbench.results.schemas import MIN_CYCLES, RUN_SCHEMA
from infbench.results.variant import VariantFiles

STARTUP_ESTIMATE_S = 20.0
TRIM_WAIT_S = 3.0
MPROF_FLUSH_WAIT_S = 20.0  # mprof writes its samples to disk 50 at a time
TRIM_REQUEST = "trim.request"  # servers/shared/probes.py watches for this file (one contract)
SITES_BASE_REQUEST = "sites-base.request"  # and these: an unjudged census, tracemalloc reset,
SITES_REQUEST = "sites.request"  # and its live traces by site at the end
SITES_WAIT_S = 15.0
MAX_BODY_CAP = 1024 * 1024 * 1024


class ServerDied(Exception):
    pass


@dataclass
class Plan:
    experiments: Experiments
    variants: list[Variant]
    profile: Profile
    model_override: str = ""
    runtime: str = "native"
    results: Path = Path("results")
    run_id: str = ""

    def model_of(self, v: Variant) -> Model:
        return self.experiments.model_for(v, self.model_override)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Let cleanup finish: a second Ctrl-C during it is noted, not obeyed mid-way."""
    got: list[int] = []
    old = {s: signal.signal(s, lambda n, _f: got.append(n))
           for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def tree_rss_mb(topology: Topology) -> float | None:
    """Every service's processes' RSS summed, or None before any server process exists."""
    total, seen = 0, False
    for p, _, _ in topology.processes():
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
            seen = True
    return total / 2**20 if seen else None


def fmt_duration(s: float) -> str:
    s = max(0, int(s))
    h, rem = divmod(s, 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}" if h else f"{rem // 60}:{rem % 60:02d}"


@dataclass
class Progress:
    """One live line: variant, phase, elapsed / ETA, current RSS and requests/s.

    On a terminal it rewrites itself in place; in a log (CI, a pipe) it prints a line every
    `every` seconds so the log stays readable.
    """

    n_variants: int
    per_variant_s: float
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    every: float = 10.0
    started: float = field(default_factory=time.monotonic)
    _last_print: float = 0.0
    _width: int = 0

    @property
    def tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, index: int, variant: str, label: str, phase_elapsed: float,
               phase_total: float | None, variant_elapsed: float, rss_mb: float | None,
               rps: float | None) -> None:
        now = time.monotonic()
        if not self.tty and now - self._last_print < self.every:
            return
        self._last_print = now
        left_this = max(0.0, self.per_variant_s - variant_elapsed)
        if phase_total is not None:
            left_this = max(left_this, phase_total - phase_elapsed)
        eta = left_this + (self.n_variants - index) * self.per_variant_s
        parts = [f"[{index}/{self.n_variants} {variant}]", label]
        parts.append(f"{fmt_duration(phase_elapsed)}"
                     + (f"/{fmt_duration(phase_total)}" if phase_total else ""))
        parts.append(f"run {fmt_duration(now - self.started)}, ETA ~{fmt_duration(eta)}")
        if rss_mb is not None:
            parts.append(f"RSS {rss_mb:,.0f} MB")
        if rps is not None:
            parts.append(f"{rps:.1f} req/s")
        line = " | ".join(parts)
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def say(self, text: str) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


def new_run_dir(results: Path, profile: Profile, model_names: list[str],
                run_id: str = "") -> Path:
    """A fresh folder per run; the id carries a hash of what makes runs comparable."""
    files.mkdir(results)
    if not run_id:
        tag = fingerprint(profile, sorted(model_names), manifest.machine_class())
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{profile.name}-{tag}"
    for n in range(100):
        candidate = results / (run_id if n == 0 else f"{run_id}.{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise WriteError(f"cannot create {candidate}: "
                             f"{files.describe(e)}") from None
    raise WriteError(f"could not make a new run folder under {results}")


def _update_latest(results: Path, run_dir: Path) -> None:
    link = results / "latest"
    with contextlib.suppress(OSError):
        if link.is_symlink() or not link.exists():
            tmp = results / ".latest.tmp"
            if tmp.is_symlink():
                tmp.unlink()
            tmp.symlink_to(run_dir.name)
            tmp.replace(link)


class VariantRun:
    """One variant under one profile: the loop that owns its services and load processes."""

    def __init__(self, plan: Plan, variant: Variant, index: int, out_dir: Path,
                 progress: Progress, images: Path, model_path: Path) -> None:
        self.plan = plan
        self.v = variant
        self.index = index
        self.out = out_dir
        self.progress = progress
        self.images = images
        self.model_path = model_path
        self.profile = plan.profile
        self.log = PhaseLog(out_dir / "phases.json", variant.name)
        self.topology: Topology | None = None
        self.load: StepLoad | None = None
        self.monitors: list[monitors.Monitor] = []
        self.watch: ProcessWatch | None = None
        self.t0 = time.monotonic()

    # -- the loop ------------------------------------------------------------------------
    def execute(self) -> str:
        try:
            self._run()
            status = "degraded" if self.log.faults else "complete"
            self.log.finish(status, None if status == "complete" else
                            f"{len(self.log.faults)} fault(s): "
                            + "; ".join(sorted({e["kind"] for e in self.log.faults})))
            if status == "degraded":
                self.progress.say(f"  DEGRADED {self.v.name}: " + "; ".join(
                    f"{e['kind']} ({e['detail']})" for e in self.log.faults[:5]))
            return status
        except KeyboardInterrupt:
            self._finish_safely("interrupted", "interrupted (Ctrl-C, SIGTERM or SIGHUP)")
            raise
        except (ServerDied, LaunchError, LoadError, WriteError) as e:
            self._finish_safely("failed", str(e))
            self.progress.say(f"  FAILED {self.v.name}: {e}")
            return "failed"
        except BaseException as e:
            self._finish_safely("failed", f"harness error: {e!r}")
            raise
        finally:
            with signals_deferred():
                self._cleanup()

    def _finish_safely(self, status: str, error: str) -> None:
        with contextlib.suppress(WriteError):
            self.log.finish(status, error)

    def _cleanup(self) -> None:
        if self.load is not None:
            self.load.stop(grace=2.0)
        for m in reversed(self.monitors):
            m.stop()
        if self.monitors:
            with contextlib.suppress(WriteError):
                self.log.save()
        if self.topology is not None:
            if self.watch is not None:
                self.watch.active = False  # processes ending now are ours ending them
            self.topology.stop()
            with contextlib.suppress(WriteError):
                self.log.mark("server_stop")

    def _mark(self, what: str, detail: dict[str, Any]) -> None:
        self.log.service(what, detail)

    def _run(self) -> None:
        p = self.profile
        batch = max(s.batch for s in p.steps)
        if p.model_alone and model_alone.measure(  # before any service starts: a quiet machine
                self.v, self.model_path, p, self.images, self.out, self.progress.say) is None:
            self.log.event("model_alone_failed", "the model-alone measurement failed (see "
                           "model_alone.log): no serving efficiency for this variant")
        self.log.mark("server_start")
        self.topology = Topology(
            variant=self.v, launcher=get_launcher(self.plan.runtime), out_dir=self.out,
            model_path=self.model_path, sample_interval=p.sample_interval,
            run_id=self.out.parent.name, max_images=max(MAX_IMAGES_DEFAULT, batch),
            max_body_bytes=body_limit(self.images, batch), mark=self._mark)
        ctx = monitors.Context(variant=self.v, profile=p, topology=self.topology,
                               log=self.log, out=self.out, queue_keys=queue_keys(self.v),
                               say=self.progress.say)
        self.monitors += monitors.start("launch", ctx)
        started = time.monotonic()
        self.topology.start(
            on_tick=lambda label: self._tick(label, time.monotonic() - started, None))
        write_json(self.out / "server.json", {
            **self.topology.entry.info(), "health": self.topology.healthy.get(
                self.topology.entry.spec.label),
            "replicas": [r.info() for r in self.topology.replicas]})
        self.log.mark("healthy")
        self.log.data["health"] = self.topology.healthy.get(self.topology.entry.spec.label)
        self.watch = ProcessWatch(self.topology, self.log)
        self.monitors += monitors.start("healthy", ctx)
        self._hold("baseline", p.baseline, "baseline")
        self._check_probes()
        self._check_keepalive()
        self._load()
        self._hold("cooldown", p.cooldown, "cooldown")
        self._trim()
        self._culprit_window()

    def _load(self) -> None:
        """The profile's steps, cycle by cycle, with their pauses and rests. A subclass may
        drive the load otherwise (infbench/modes/capacity.py probes rates one step at a time)."""
        p = self.profile
        total = len(p.steps) * p.cycles
        for c in range(1, p.cycles + 1):
            for j, step in enumerate(p.steps, start=1):
                # Steps are numbered through all cycles, so every step keeps its own files.
                i = (c - 1) * len(p.steps) + j
                self._step(i, total, step, c)
                if p.pause:
                    self._hold("pause", p.pause, f"pause {i}/{total}", index=i,
                               batch=step.batch, cycle=c)
            if p.cycles > 1 and p.rest:
                if c == 1:
                    self._sites_base()
                self._hold("rest", p.rest, f"rest {c}/{p.cycles}", cycle=c)
                for m in self.monitors:
                    m.rest(c)
                self._census(c)
                if p.settle and MIN_CYCLES <= c < p.cycles and self._settled(c):
                    return

    # -- pieces --------------------------------------------------------------------------
    def _worker_died(self, i: int, k: int, code: int) -> None:
        """A distributed step's worker that died: a fault, said at once (the step goes on with
        the others, and is not complete)."""
        assert self.load is not None
        detail = _worker_died_detail(i, k, code, self.load.workers[k - 1].log_path)
        self.log.event("load_worker_died", detail, step=i, worker=k, exit_code=code)
        self.progress.say(f"  {self.v.name}: {detail}")

    def _check_server(self) -> None:
        """Every replica still there; a death is fatal unless other replicas of its service
        carry on (then it is a fault event, and the load shows what it cost)."""
        assert self.topology is not None
        if self.watch is not None:
            self.watch.poll()
        for r in self.topology.dead():
            label = r.spec.label
            siblings = [o for o in self.topology.replicas if o.spec.service == r.spec.service
                        and o is not r and o.alive()]
            code = r.exit_code()
            tail = f"--- tail of {r.log_path} ---\n{proc.tail(r.log_path)}"
            if siblings and self.watch is not None:
                if self.watch.note_death(r, code):
                    self.progress.say(f"  {label} died (exit code {code}); "
                                      f"{len(siblings)} replica(s) of {r.spec.service.name} "
                                      "carry on")
                continue
            where = self.log.current
            during = f" during {where['kind']}" if where else ""
            who = "server" if self.v.single else label
            gone = "stopped answering" if r.spec.service.server == "url" else "exited"
            raise ServerDied(f"{who} {gone}{during}"
                             + (f" (exit code {code})" if code is not None else "")
                             + f"\n{tail}")

    def _rss(self) -> float | None:
        return tree_rss_mb(self.topology) if self.topology is not None else None

    def _tick(self, label: str, elapsed: float, total: float | None,
              rps: float | None = None) -> None:
        self.progress.update(self.index, self.v.name, label, elapsed, total,
                             time.monotonic() - self.t0, self._rss(), rps)

    def _hold(self, kind: str, seconds: float, label: str, **fields: Any) -> None:
        """An idle phase; the services are watched, and how long they stayed busy is recorded."""
        phase = self.log.begin(kind, **fields, planned=seconds)
        start = time.monotonic()
        cpu = CpuWatch(self.topology)
        while (left := seconds - (time.monotonic() - start)) > 0:
            self._check_server()
            cpu.sample()
            self._tick(label, time.monotonic() - start, seconds)
            time.sleep(min(0.5, left))
        self._check_server()
        phase["server_busy_s"] = cpu.busy_seconds(start)
        self.log.end()

    def _trim(self) -> None:
        """With probes on: after the cooldown (so that 'after cooldown' is what the allocator
        kept by itself), ask each probed process for malloc_trim(0); their probe threads
        answer within a second with what it gave back."""
        assert self.topology is not None
        probed = [r for r in self.topology.replicas if r.spec.service.probes]
        for r in probed:
            self._request(r.spec.out_dir / TRIM_REQUEST)
        # The processes without a probe, from outside (a debugger): the last step of the run.
        gdb = [row for m in self.monitors for row in m.trim()]
        if probed or gdb:
            self._hold("trim", TRIM_WAIT_S, "malloc_trim(0)")
        if probed and self.profile.cycles > 1:
            self._sites(probed)

    def _sites(self, probed: list[Any]) -> None:
        """After everything is measured: where the Python memory allocated after warm-up is
        kept (each probe with tracemalloc on writes a `sites` event; a few seconds at most)."""
        for r in probed:
            self._request(r.spec.out_dir / SITES_REQUEST)
        deadline = time.monotonic() + SITES_WAIT_S
        files_ = [f for r in probed for f in r.spec.out_dir.glob("probes-*.jsonl")]
        while time.monotonic() < deadline:
            pending = []
            for f in files_:
                with contextlib.suppress(OSError):
                    text = f.read_text()
                    if '"tracemalloc_mb"' in text and '"event": "sites"' not in text:
                        pending.append(f)
            if not pending:
                return
            self._check_server()
            time.sleep(0.5)

    def _settled(self, cycle: int) -> bool:
        """After a cycle's census: stop cycling when the verdict so far will not change
        (`settle`); the time to the verdict and the cycles left are recorded and said."""
        so_far = self._verdict_so_far()
        why = verdict.settled(so_far) if so_far else None
        first = next(ph["start"] for ph in self.log.data["phases"] if ph["kind"] == "step")
        took = round(time.time() - first, 1)  # from the first step's start: load, rests, census
        self.log.data["settled"] = {"after_cycles": cycle, "of": self.profile.cycles,
                                    "reason": why, "verdict": so_far.get("verdict"),
                                    "time_to_verdict_s": took} if why else None
        if not why:
            return False
        left = self.profile.cycles - cycle
        self.progress.say(f"  {self.v.name}: verdict settled after {cycle} of "
                          f"{self.profile.cycles} cycles ({why}, {took:.0f} s in): {left} "
                          f"cycle(s) not run (settle = false runs them all)")
        self.log.save()
        return True

    def _verdict_so_far(self) -> dict[str, Any]:
        """The verdict of the cycles run so far, from the files on disk (the report's own
        rule); {} if it cannot be read yet (said as a note)."""
        try:
            vf = VariantFiles(self.out)
            ph = vf.phases
            plist = ph.get("phases", [])
            rests = [x["end"] for x in plist if x.get("kind") == "rest" and x.get("end")]
            mp = summary.variant_mprof(vf, ph)
            # mprof flushes its file every 50 samples: wait until the last rest's end is in it.
            deadline = time.monotonic() + MPROF_FLUSH_WAIT_S
            while rests and (not mp.mem or mp.mem[-1][0] < rests[-1]) \
                    and time.monotonic() < deadline:
                self._check_server()
                time.sleep(0.5)
                mp = summary.variant_mprof(VariantFiles(self.out), ph)
            return verdict.from_files(vf, plist, mp.mem, summary.step_figures(vf, mp.mem, plist),
                                      self.profile.cycles)
        except (OSError, ValueError, KeyError) as e:
            self.progress.say(f"  NOTE {self.v.name}: no verdict before the culprit window: "
                              f"{type(e).__name__}: {e}")
            return {}

    def _culprit_window(self) -> None:
        """After everything is measured, when the run's verdict is a leak (or the profile asks,
        `culprit`): one more step of load and a rest, traced (infbench/measure/window.py) by
        tracemalloc in each probed process for a leak of Python objects, by heaptrack attached
        to each server process for a native one (infbench/measure/native_stacks.py)."""
        assert self.topology is not None
        p = self.profile
        if p.cycles < 2 or p.culprit == "never":
            return
        # A service that traces already (tracemalloc = true, INFBENCH_TRACEMALLOC in its env)
        # lists its own sites at the end: tracemalloc's window is for the others.
        dirs = sorted({r.spec.out_dir for r in self.topology.replicas if r.spec.service.probes
                       and not r.spec.service.tracemalloc and r.spec.service.env.get(
                           "INFBENCH_TRACEMALLOC", "0").strip() in ("", "0")})
        so_far = self._verdict_so_far()
        # The census series the verdict was judged on (per cycle, summed over processes).
        census = [c.get("py_census_mb") for c in so_far.get("per_cycle") or []]
        climbed = None not in census and verdict.census_climbs([float(x) for x in census])
        where = so_far.get("where") if so_far.get("verdict") == "leak" else None
        always = p.culprit == "always"
        python = bool(dirs) and (always or climbed or where == "python objects")
        native = always or where in ("native allocations", "kind unknown")
        if not (python or native):
            return
        spec = window.step_of(p)
        why = (f"the verdict so far is {verdict.headline(so_far)}" if where else
               "the heap census climbed in every cycle" if climbed else "culprit = \"always\"")
        tools = " and ".join(t for t, on in (("tracemalloc", python), ("heaptrack", native)) if on)
        self.progress.say(f"  {self.v.name}: {why}: tracing one more step of {spec.seconds:g} s "
                          f"and a rest of {p.rest:g} s to name the culprit ({tools}; not "
                          "judged)")
        info: dict[str, Any] = {"reason": why}
        self.log.data["window"] = info
        if python:
            info["opened"] = window.open_(dirs, self._check_server, self._request)
        stacks = self._native_open(info) if native else []
        i = len(p.steps) * p.cycles + 1
        info["step"] = i
        self._step(i, i, spec, None, kind="window")
        self._hold("window_rest", p.rest, "window rest")
        if python:
            info["closed"] = window.close(dirs, self._check_server, self._request)
        if stacks:
            self._native_close(stacks, info)
        for what in ("opened", "closed"):
            answer = info.get(what)
            if answer and answer["unanswered"]:
                line = (f"culprit window: {answer['unanswered']} of {answer['processes']} "
                        f"probed process(es) did not answer in {answer['waited_s']:.0f} s "
                        f"({what})")
                self.progress.say(f"  WARNING {self.v.name}: {line}")
                self.log.event("window_unanswered", line)
        self.log.save()

    def _native_open(self, info: dict[str, Any]) -> list[Any]:
        """heaptrack attached to each server process, or a note why not."""
        assert self.topology is not None
        why_not = native_stacks.available()
        if why_not:
            info["native"] = {"unavailable": why_not}
            self.progress.say(f"  NOTE {self.v.name}: native stacks cannot be read: {why_not}")
            return []
        opened = []
        errors = info.setdefault("native", {}).setdefault("errors", [])
        for r in self.topology.replicas:
            folder = r.spec.out_dir / "native"
            try:
                folder.mkdir(exist_ok=True)
                pids = [proc_.pid for proc_ in r.processes()]
            except (OSError, psutil.Error) as e:
                errors.append(f"{r.spec.label}: {type(e).__name__}: {e}")
                continue
            if not pids and r.spec.service.server == "url":
                errors.append(f"{r.spec.label}: a server at a url without a pid: heaptrack "
                              "has nothing to attach to")
            for pid in pids:
                w = native_stacks.Window(pid, folder)
                try:
                    w.start()
                    opened.append(w)
                except native_stacks.NativeStacksError as e:
                    errors.append(f"pid {pid}: {e}")
        return opened

    def _native_close(self, opened: list[Any], info: dict[str, Any]) -> None:
        found = info.setdefault("native", {})
        for w in opened:
            try:
                found.setdefault("windows", []).append(w.stop())
            except native_stacks.NativeStacksError as e:
                found.setdefault("errors", []).append(f"pid {w.pid}: {e}")
        for err in found.get("errors", []):
            self.progress.say(f"  WARNING {self.v.name}: native stacks: {err}")
            self.log.event("native_stacks_failed", err)

    @staticmethod
    def _request(path: Path) -> None:
        try:
            path.touch()
        except OSError as e:
            raise WriteError(f"cannot write {path}: {files.describe(e)}") from None

    def _sites_base(self) -> None:
        """At the start of the warm-up's rest: each probe takes an unjudged heap census (so
        the room a census needs is taken before the verdict's reference) and, where tracemalloc
        runs (opt-in), clears its traces, or starts it with INFBENCH_TRACEMALLOC=after-warm-up,
        so that from now on it traces what comes after warm-up. Before the rest whose end is the
        reference, not after it: clearing frees tracemalloc's tables (MBs of malloc'd memory a
        process), which would otherwise count as retention."""
        assert self.topology is not None
        for r in self.topology.replicas:
            if r.spec.service.probes:
                self._request(r.spec.out_dir / SITES_BASE_REQUEST)

    def _check_keepalive(self) -> None:
        """A keep-alive request that waits ~40 ms for a delayed ACK (monitor/keepalive.py) is
        said on the console and in the summary: every request of the load pays it."""
        assert self.topology is not None
        if os.environ.get("INFBENCH_KEEPALIVE_CHECK", "1") == "0":
            return
        # Every HTTP service, the entry first: in a topology the inner hops (a scoring API's
        # keep-alive calls to its model APIs) pay the stall as well. One replica a service.
        entry = self.topology.entry.spec.service.name
        seen: dict[str, dict[str, Any]] = {}
        for r in sorted(self.topology.replicas, key=lambda r: r.spec.service.name != entry):
            s = r.spec.service
            if s.health != "http" or s.once or s.name in seen:
                continue
            found = keepalive.check(r.spec.url, s.health_path)
            seen[s.name] = found
            if found.get("error"):  # said, not a fault: the health check passed already
                self.progress.say(f"  NOTE {self.v.name}: keep-alive check of {s.name} could "
                                  f"not run: {found['error']}")
            if found.get("stalled"):
                line = stall.message(found)
                where = "" if len(self.v.services) == 1 else f"{s.name}: "
                self.progress.say(f"  NOTE {self.v.name}: {where}{line}")
                self.log.event("keepalive_stall", where + line)
        if seen:
            flat = len(self.v.services) == 1 and entry in seen
            self.log.data["keepalive"] = seen[entry] if flat else seen
            self.log.save()

    def _census(self, cycle: int) -> None:
        """After each rest: the probes count the Python heap's bytes while the server is idle
        (infbench/measure/census.py); the load waits, in a `census` phase."""
        assert self.topology is not None
        dirs = sorted({r.spec.out_dir for r in self.topology.replicas if r.spec.service.probes})
        if dirs:
            self.log.begin("census", cycle=cycle)
            self.log.end(**census.ask(dirs, cycle, self._check_server, self._request))

    def _check_probes(self) -> None:
        """`probes = true` that started nowhere is said on the console and in phases.json."""
        assert self.topology is not None
        if not any(r.spec.service.probes for r in self.topology.replicas):
            return
        found = probecheck.check(self.topology, self.log.data.get("healthy") or time.time())
        self.log.data["probes"] = found
        for line in probecheck.warnings(found):
            self.progress.say(f"  WARNING {self.v.name}: {line}")
            self.log.event("probes_missing", line)
        self.log.save()

    def _step(self, i: int, n: int, spec: Step, cycle: int | None, kind: str = "step") -> None:
        """One step of load (`kind` "window": the culprit window's, not the sweep's)."""
        assert self.topology is not None
        batch, seconds = spec.batch, spec.seconds
        faults_before = len(self.log.faults)
        for m in self.monitors:
            m.step_start(i, kind)
        try:
            self.load = start_step(self.profile, spec, i, self.topology.entry.url, self.out,
                                   self.images, self.v.request,
                                   self.plan.model_of(self.v).input_size,
                                   **self.topology.load_settings())
        except OSError as e:
            raise LoadError(f"cannot start Locust for step {i}: {e.strerror or e}") from None
        drain_kind = "drain" if kind == "step" else f"{kind}_drain"
        step = self.log.begin(kind, index=i, batch=batch, planned=seconds,
                              users=self.profile.users_of(spec), cycle=cycle)
        drain_started = False
        while self.load.running(self.profile.drain_timeout):
            self._check_server()
            for k, died in self.load.newly_dead():
                self._worker_died(i, k, died)
            c = self.load.counts()
            if c.get("test_start") and step.get("load_start") is None:
                step["load_start"] = c["test_start"]
            if c.get("test_stopping") and not drain_started:
                drain_started = True
                self.log.end(t=c["test_stopping"])
                self.log.begin(drain_kind, t=c["test_stopping"], index=i, batch=batch,
                               planned=self.profile.drain_timeout)
            rps = self.load.update_rate()
            if drain_started:
                label = f"drain {i}/{n} (b{batch}), {c.get('started', 0) - c.get('finished', 0)}" \
                        " in flight"
                self._tick(label, time.time() - c["test_stopping"], self.profile.drain_timeout,
                           rps)
            else:
                t = time.time() - (c.get("test_start") or self.load.launched)
                name = f"step {i}/{n}" if kind == "step" else "culprit window"
                self._tick(f"{name} (b{batch})", t, seconds, rps)
            time.sleep(0.5)
        code = self.load.stop(grace=2.0)
        for k, code_k in self.load.newly_dead():  # one that died as the master ended
            self._worker_died(i, k, code_k)
        merge_problems = self.load.finish()
        c = self.load.counts()
        load, self.load = self.load, None
        for m in self.monitors:
            m.step_end(i, kind)
        if len(self.log.faults) > faults_before:  # a monitor's fault in this step (a capture)
            step["degraded"] = True
        started, finished = int(c.get("started", 0)), int(c.get("finished", 0))
        failed = int(c.get("failed", 0))
        counts = {"requests_started": started, "requests_finished": finished,
                  "requests_failed": failed, "cut_off": started - finished,
                  "locust_exit_code": code}
        step.update(counts)
        if not drain_started and c.get("test_stopping"):
            # Locust stopped and exited between two polls: the drain still happened.
            self.log.end(t=c["test_stopping"])
            self.log.begin(drain_kind, t=c["test_stopping"], index=i, batch=batch,
                           planned=self.profile.drain_timeout)
            drain_started = True
        log_file = self.out / f"step{i}-b{batch}_locust.log"
        problems = []
        if code != 0 or not c:
            why = f"killed by signal {-code}" if code is not None and code < 0 else \
                f"exit code {code}"
            problems.append(("load_failed", f"Locust {why} in step {i}"
                             + ("" if c else ", without writing its counters")
                             + f"; see {log_file.name}: {proc.tail(log_file, 3)[-300:]}"))
        elif finished == 0:
            problems.append(("step_all_failed", f"step {i}: no request finished "
                             f"({started} started)"))
        elif failed >= finished:
            problems.append(("step_all_failed", f"step {i}: all {finished} requests failed "
                             f"(see step{i}-b{batch}_failures.csv)"))
        for bad in check_outputs(load):
            problems.append(("artifact_damaged", bad))
        for bad in merge_problems:
            problems.append(("artifact_damaged", bad))
        if drain_started:
            self.log.end(cut_off=started - finished)
        else:  # Locust ended without a stopping event (e.g. it crashed)
            self.log.end()
        for kind, detail in problems:
            self.log.event(kind, detail, step=i)
            step["degraded"] = True
            if kind in ("load_failed", "step_all_failed"):
                step["failed"] = True
            self.progress.say(f"  {self.v.name}: {detail}")
        step["status"] = "failed" if step.get("failed") else \
            "degraded" if step.get("degraded") else "complete"
        self.log.save()
        self._check_server()


def _worker_died_detail(i: int, k: int, code: int, log: Path) -> str:
    why = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
    return (f"Locust worker {k} of step {i} {why} before the step ended; see {log.name}: "
            f"{proc.tail(log, 3)[-300:]}")


def queue_keys(v: Variant) -> list[str]:
    """The Redis lists whose length is the queue: the queue apps
    (INFBENCH_QUEUE_KEY, default "infbench"): `<prefix>:queue`."""
    prefixes = {s.env.get("INFBENCH_QUEUE_KEY", "infbench") for s in v.services
                if s.server != "redis"}
    return sorted(f"{p}:queue" for p in prefixes)


def body_limit(images: Path, batch: int) -> int:
    """A request body limit that the profile's largest request fits in: at least the servers'
    default, else twice the largest batch of sample images; refused above MAX_BODY_CAP."""
    sizes = sorted((p.stat().st_size for p in images.glob("*.jpg")), reverse=True)
    if not sizes:
        return MAX_BODY_DEFAULT
    largest = sum(sizes[i % len(sizes)] for i in range(batch)) + 1024 * batch
    limit = max(MAX_BODY_DEFAULT, 2 * largest)
    if limit > MAX_BODY_CAP:
        raise LaunchError(f"a request of {batch} sample images is ~{largest / 2**20:,.0f} MiB; "
                          f"over the {MAX_BODY_CAP / 2**30:.0f} GiB the servers accept")
    return limit


class CpuWatch:
    """Samples the server's CPU during a pause: a server still busy with abandoned requests
    after the load has gone is part of the result, not noise to hide."""

    IDLE_FRACTION = 0.10  # of one core

    def __init__(self, topology: Topology | None) -> None:
        self.topology = topology
        self.samples: list[tuple[float, float]] = []  # (monotonic, cpu seconds)

    def sample(self) -> None:
        if self.topology is None:
            return
        total = 0.0
        for p, _, _ in self.topology.processes():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        self.samples.append((time.monotonic(), total))

    def busy_seconds(self, start: float) -> float | None:
        """Seconds from the phase start until the first ~1 s window under IDLE_FRACTION."""
        s = self.samples
        for a in range(len(s)):
            for b in range(a + 1, len(s)):
                if s[b][0] - s[a][0] >= 0.9:
                    if (s[b][1] - s[a][1]) / (s[b][0] - s[a][0]) < self.IDLE_FRACTION:
                        return round(s[a][0] - start, 1)
                    break
        return None


def prepare(plan: Plan, say: Callable[[str], None]) -> tuple[Path, dict[str, Path]]:
    images = assets.ensure_images()
    say(f"sample images: {len(images)} JPEGs in {assets.images_dir()}")
    models: dict[str, Path] = {}
    for v in plan.variants:
        m = plan.model_of(v)
        if m.name not in models:
            models[m.name] = assets.ensure_model(m)
    return assets.images_dir(), models


@dataclass
class Outcome:
    run_dir: Path
    results: dict[str, str]
    status: str  # complete | interrupted | failed


def run_status(results: dict[str, str]) -> str:
    """complete only if every variant completed without a fault; failed if none ran through."""
    values = list(results.values())
    if values and all(v == "complete" for v in values):
        return "complete"
    if any(v in ("complete", "degraded") for v in values):
        return "partial"
    return "failed"


def harness_identity() -> dict[str, Any]:
    """Who runs this run: a `running` run.json whose harness is gone was interrupted."""
    me = psutil.Process(os.getpid())
    return {"pid": me.pid, "create_time": me.create_time()}


def run_study(plan: Plan, stream: TextIO | None = None,
              variant_run: type[VariantRun] = VariantRun) -> Outcome:
    """Run every planned variant. Ctrl-C/SIGTERM/SIGHUP (as KeyboardInterrupt) stops the run:
    what was measured is kept, everything started is ended, the outcome says `interrupted`."""
    stream = stream or sys.stdout
    for v in plan.variants:  # every way in comes here: a model the runtime cannot serve
        v.check_model(plan.model_of(v), plan.runtime)
    if plan.profile.capture:  # tcpdump there and allowed to capture, before anything starts
        capture.preflight()
    per_variant = plan.profile.planned_seconds() + STARTUP_ESTIMATE_S
    progress = Progress(len(plan.variants), per_variant, stream)
    images, models = prepare(plan, progress.say)
    model_names = sorted({plan.model_of(v).name for v in plan.variants})
    run_dir = new_run_dir(plan.results, plan.profile, model_names, plan.run_id)
    _update_latest(plan.results, run_dir)
    run_info: dict[str, Any] = {
        "schema": RUN_SCHEMA, "run_id": run_dir.name, "status": "running",
        "started": time.time(), "ended": None, "wall_seconds": None,
        "profile": plan.profile.name, "models": model_names, "runtime": plan.runtime,
        "variants": [v.name for v in plan.variants], "results": {}, "stopped_in": None,
        "current": None, "error": None, "harness": harness_identity(),
        "command": sys.argv, "machine": manifest.machine(), "git": manifest.git_revision(),
    }
    write_json(run_dir / "run.json", run_info)
    proc.watch_run(run_dir / "run.json")
    progress.say(f"run {run_dir}  ({len(plan.variants)} variant(s), profile "
                 f"{plan.profile.name!r}, up to ~{fmt_duration(per_variant)} each)")
    results: dict[str, str] = {}
    try:
        for index, v in enumerate(plan.variants, start=1):
            out = run_dir / v.name
            files.mkdir(out)
            model = plan.model_of(v)
            run_info["current"] = v.name
            write_json(run_dir / "run.json", run_info)
            write_json(out / "manifest.json", manifest.build({
                "variant": as_dict(v), "profile": as_dict(plan.profile),
                "model": as_dict(model), "model_path": str(models[model.name]),
                "runtime": plan.runtime, "run_id": run_dir.name,
                "experiments_file": str(plan.experiments.path)}))
            progress.say(f"[{index}/{len(plan.variants)} {v.name}] {v.description}")
            status = variant_run(plan, v, index, out, progress, images,
                                 models[model.name]).execute()
            results[v.name] = status
            run_info["results"] = results
            write_json(run_dir / "run.json", run_info)
        run_info["status"] = run_status(results)
    except KeyboardInterrupt:
        run_info["status"] = "interrupted"
        done = set(results)
        stopped = next((v.name for v in plan.variants if v.name not in done), None)
        if stopped:
            results[stopped] = "interrupted"
            run_info["stopped_in"] = stopped
    except WriteError as e:
        run_info["status"] = "failed"
        run_info["error"] = str(e)
        raise
    finally:
        with signals_deferred():
            proc.stop_all()
            run_info["results"] = results
            run_info["current"] = None
            run_info["ended"] = time.time()
            run_info["wall_seconds"] = round(run_info["ended"] - run_info["started"], 1)
            if run_info["status"] == "running":
                run_info["status"] = "failed"
            try:
                write_json(run_dir / "run.json", run_info)
            except WriteError as e:
                progress.say(f"infbench: {e}")
                run_info["status"] = "failed"
            progress.say("")
    return Outcome(run_dir, results, run_info["status"])
