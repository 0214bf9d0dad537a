"""The load driver: one headless Locust process per step, in its own process group (or, with
`load_processes` above 1, Locust's master and its workers, each in its own: distributed.py)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infbench.config import DEFAULT_IMAGE_SIZE, Profile, Request, Step, as_dict
from infbench.config.schedule import step_seed
from infbench.launch import proc
from infbench.launch.topology import free_ports
from infbench.measure import distributed
from infbench.measure.loadgen import LoadgenSampler, group_pids
from infbench.paths import ROOT

LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"


class LoadError(Exception):
    """The load could not be sent (Locust would not start, the client lost the service): the
    variant fails with this one line; the run goes on with the next."""


def step_name(index: int, step: Step) -> str:
    """File prefix of a step's Locust artifacts, e.g. step1-b10."""
    return f"step{index}-b{step.batch}"


def locust_argv(profile: Profile, step: Step, host: str, prefix: Path,
                python: str = sys.executable, locustfile: Path = LOCUSTFILE,
                master_port: int = 0) -> list[str]:
    # --stop-timeout lets in-flight requests finish after the step (the drain); Locust kills
    # what is still running after it, and the locustfile counts those as cut off.
    # An open-loop step is one Locust user whose scheduler greenlet sends on the schedule (one
    # per worker of a distributed step, each with its share of the rate: distributed.py).
    open_loop = profile.rate_of(step) > 0
    master = []
    if profile.distributed:
        master = ["--master", "--expect-workers", str(profile.load_workers),
                  "--expect-workers-max-wait", f"{profile.load_worker_wait:g}",
                  "--master-bind-host", profile.load_master_bind,
                  "--master-bind-port", str(master_port)]
    users = profile.load_workers if profile.distributed else 1
    return [
        python, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", host,
        "--users", str(users) if open_loop else str(profile.users_of(step)),
        "--spawn-rate", str(users) if open_loop else f"{profile.spawn_rate_of(step):g}",
        "--run-time", f"{max(1, math.ceil(step.seconds))}s",
        "--stop-timeout", f"{profile.drain_timeout:g}",
        "--csv", str(prefix), "--html", f"{prefix}.html",
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0", *master,
    ]


def locust_env(profile: Profile, step: Step, images: Path, counts: Path,
               request: Request | None = None, image_size: int = 0,
               index: int = 1) -> dict[str, str]:
    request = request or Request()
    env = dict(os.environ)
    env.update({
        "INFBENCH_IMAGES": str(images),
        "INFBENCH_BATCH": str(step.batch),
        "INFBENCH_REQUEST": json.dumps(as_dict(request)),
        "INFBENCH_IMAGE_SIZE": str(request.image_size or image_size or DEFAULT_IMAGE_SIZE),
        "INFBENCH_WAIT_MIN": f"{profile.wait[0]:g}",
        "INFBENCH_WAIT_MAX": f"{profile.wait[1]:g}",
        "INFBENCH_REQUEST_TIMEOUT": f"{profile.request_timeout:g}",
        "INFBENCH_COUNTS": str(counts),
        "INFBENCH_PREDICT_WEIGHT": str(profile.predict_weight),
        "INFBENCH_FEEDBACK_WEIGHT": str(profile.feedback_weight),
        "INFBENCH_ON_START": profile.on_start,
        "INFBENCH_UNTIL_STABLE": "1" if step.until_stable else "0",
        "INFBENCH_STABLE_WINDOW_S": f"{profile.window_of(step):g}",
        "INFBENCH_STABLE_WINDOWS": str(profile.stable_windows),
        "INFBENCH_STABLE_TOLERANCE": f"{profile.stable_tolerance:g}",
        "INFBENCH_RATE": f"{profile.rate_of(step):g}",
        "INFBENCH_ARRIVAL": profile.arrival,
        "INFBENCH_ARRIVAL_SEED": str(step_seed(profile.arrival_seed, index)),
        "INFBENCH_MAX_IN_FLIGHT": str(profile.max_in_flight),
        "PYTHONUNBUFFERED": "1",
    })
    return env


# After a distributed step's master ends: how long past the drain its workers may take to
# finish their in-flight requests and write their files.
WORKER_QUIT_MARGIN_S = 10.0


@dataclass
class StepLoad:
    """A running Locust step, and what its counters say so far."""

    group: proc.Group
    counts_path: Path
    launched: float
    prefix: Path | None = None
    _last: tuple[float, int] | None = None
    rps: float = 0.0
    cpu: LoadgenSampler | None = None  # the generator's own CPU (monitor/loadgen.py)
    # A distributed step (distributed.py): the master is `group`, these its local workers;
    # `parts` every worker's (counters, request log), the external ones' after the local ones.
    workers: list[proc.Group] = field(default_factory=list)
    parts: list[tuple[Path, Path]] = field(default_factory=list)
    master_counts: Path | None = None
    dead: dict[int, int] = field(default_factory=dict)  # worker k -> its exit code
    final: dict[str, Any] | None = None  # the merged counters, once finish() wrote them
    master_ended: float | None = None  # monotonic time the master was first seen ended

    def running(self, drain_s: float) -> bool:
        """Whether the step is still going: its master (or lone process) runs; or, in a
        distributed step, the master has quit and told the workers to, and a worker is still
        draining its in-flight requests (Locust's stop timeout, the profile's drain) or has
        not yet written its request log. The master leaves half a second after it says quit,
        so the workers' drain is waited for here, at most `drain_s` + WORKER_QUIT_MARGIN_S
        after the master ended; then stop() ends whatever is left."""
        if self.group.poll() is None:
            return True
        if self.master_counts is None:
            return False
        now = time.monotonic()
        if self.master_ended is None:
            self.master_ended = now
        if now - self.master_ended > drain_s + WORKER_QUIT_MARGIN_S:
            return False
        return (any(w.poll() is None for w in self.workers)
                or any(not log.exists() for _, log in self.parts))

    def counts(self) -> dict[str, Any]:
        if self.final is not None:
            return self.final
        if self.master_counts is not None:
            return distributed.merge_counts(distributed.read_json(self.master_counts),
                                            [distributed.read_json(c) for c, _ in self.parts])
        try:
            data: dict[str, Any] = json.loads(self.counts_path.read_text())
            return data
        except (OSError, ValueError):
            return {}

    def newly_dead(self) -> list[tuple[int, int]]:
        """Local workers that died (k from 1, exit code), each said once: one that ended
        before the step stopped, or with an error. A worker leaves when its master tells it,
        after the step (exit code 0): that is not a death."""
        found = []
        master = distributed.read_json(self.master_counts) if self.master_counts else None
        stopped = bool(master and master.get("test_stopping"))
        for k, w in enumerate(self.workers, start=1):
            code = w.poll()
            if code is not None and k not in self.dead and (code != 0 or not stopped):
                self.dead[k] = code
                found.append((k, code))
        return found

    def stop(self, grace: float = 2.0) -> int | None:
        """The master, then its workers (each by its group): the master's exit code."""
        code = self.group.stop(grace=grace)
        for w in self.workers:
            w.stop(grace=grace)
        return code

    def finish(self) -> list[str]:
        """A distributed step's merged `_counts.json` and `_requests.csv`, once every process
        has ended; what is missing from them (a worker's files), said."""
        if self.master_counts is None or self.prefix is None:
            return []
        problems = []
        merged = self.counts()
        requests = Path(f"{self.prefix}_requests.csv")
        rows, missing = distributed.merge_requests([r for _, r in self.parts], requests)
        merged["merged_requests"] = rows
        if isinstance(merged.get("open_loop"), dict):
            merged["open_loop"]["lag_ms"] = distributed.lag_figures(requests)
        for k in merged.get("parts_missing", []):
            problems.append(f"worker {k} wrote no counters ({self.parts[k - 1][0].name})")
        for k in missing:
            problems.append(f"worker {k} wrote no request log ({self.parts[k - 1][1].name}):"
                            " the step's percentiles lack its requests")
        self.final = merged
        if merged:
            tmp = self.counts_path.with_name(self.counts_path.name + ".tmp")
            tmp.write_text(json.dumps(merged))
            tmp.replace(self.counts_path)
        return problems

    def update_rate(self) -> float:
        """Requests finished per second since the last call (a live figure, not a result)."""
        c = self.counts()
        now, done = time.monotonic(), int(c.get("finished", 0))
        if self._last is not None and now - self._last[0] >= 1.0:
            self.rps = (done - self._last[1]) / (now - self._last[0])
            self._last = (now, done)
        elif self._last is None:
            self._last = (now, done)
        return self.rps


def start_step(profile: Profile, step: Step, index: int, host: str, out_dir: Path,
               images: Path, request: Request | None = None, image_size: int = 0,
               locustfile: Path = LOCUSTFILE, extra_env: dict[str, str] | None = None
               ) -> StepLoad:
    name = step_name(index, step)
    prefix = out_dir / name
    counts = out_dir / f"{name}_counts.json"
    env = locust_env(profile, step, images, counts, request, image_size, index)
    env.update(extra_env or {})
    if profile.distributed:
        return _start_distributed(profile, step, index, host, out_dir, env, locustfile)
    group = proc.Group(locust_argv(profile, step, host, prefix, locustfile=locustfile),
                       log_path=out_dir / f"{name}_locust.log",
                       env=env,
                       cwd=ROOT)
    # Sampled until the group exits (run.py stops it after the drain): no hook needed there.
    cpu = LoadgenSampler(lambda: group_pids(group.pid), Path(f"{prefix}_loadgen.csv"),
                         group.alive).start()
    return StepLoad(group=group, counts_path=counts, launched=time.time(), prefix=prefix,
                    cpu=cpu)


def _start_distributed(profile: Profile, step: Step, index: int, host: str, out_dir: Path,
                       env: dict[str, str], locustfile: Path) -> StepLoad:
    """The master, then `load_processes` local workers, each in its own process group; a
    script per external worker (distributed.py)."""
    name = step_name(index, step)
    prefix = out_dir / name
    port = profile.load_master_port or free_ports(1)[0]
    n = profile.load_workers
    parts = [distributed.part_paths(out_dir, name, k) for k in range(1, n + 1)]
    envs = [distributed.worker_env(env, k, n, profile.rate_of(step), profile.arrival,
                                   profile.arrival_seed, index, *parts[k - 1])
            for k in range(1, n + 1)]
    for k in range(profile.load_processes + 1, n + 1):
        distributed.write_worker_script(out_dir / f"{name}_worker{k}.sh", envs[k - 1],
                                        locustfile, port)
    master_env = dict(env)
    master_counts = out_dir / f"{name}_master_counts.json"
    master_env["INFBENCH_COUNTS"] = str(master_counts)
    group = proc.Group(locust_argv(profile, step, host, prefix, locustfile=locustfile,
                                   master_port=port),
                       log_path=out_dir / f"{name}_locust.log", env=master_env, cwd=ROOT)
    load = StepLoad(group=group, counts_path=out_dir / f"{name}_counts.json",
                    launched=time.time(), prefix=prefix, parts=parts,
                    master_counts=master_counts)
    try:
        for k in range(1, profile.load_processes + 1):
            load.workers.append(proc.Group(
                distributed.worker_argv(locustfile, "127.0.0.1", port),
                log_path=out_dir / f"{name}_w{k}_locust.log", env=envs[k - 1], cwd=ROOT))
    except OSError:
        load.stop()
        raise

    def pids() -> list[int]:
        return [p for g in (group, *load.workers) for p in group_pids(g.pid)]

    load.cpu = LoadgenSampler(pids, Path(f"{prefix}_loadgen.csv"), group.alive).start()
    return load


def check_outputs(load: StepLoad | None) -> list[str]:
    """Locust's files of a finished step, checked: a truncated HTML (a file-size limit, a full
    disk) or a stats CSV without its totals is a damaged artifact, not a result."""
    if load is None or load.prefix is None:
        return []
    problems = []
    stats = Path(f"{load.prefix}_stats.csv")
    html = Path(f"{load.prefix}.html")
    try:
        if "Aggregated" not in stats.read_text(errors="replace"):
            problems.append(f"{stats.name} has no 'Aggregated' row (cut short?)")
    except OSError as e:
        problems.append(f"{stats.name}: {e.strerror or e}")
    try:
        with html.open("rb") as f:
            f.seek(max(0, html.stat().st_size - 64))
            if b"</html>" not in f.read().lower():
                problems.append(f"{html.name} is truncated (no closing </html>)")
    except OSError as e:
        problems.append(f"{html.name}: {e.strerror or e}")
    return problems
