"""The load driver: one headless Locust process per step, in its own process group."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.config import DEFAULT_IMAGE_SIZE, Profile, Request, Step, as_dict
from infbench.config.schedule import step_seed
from infbench.launch import proc
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
                python: str = sys.executable, locustfile: Path = LOCUSTFILE) -> list[str]:
    # --stop-timeout lets in-flight requests finish after the step (the drain); Locust kills
    # what is still running after it, and the locustfile counts those as cut off.
    # An open-loop step is one Locust user whose scheduler greenlet sends on the schedule.
    open_loop = profile.rate_of(step) > 0
    return [
        python, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", host,
        "--users", "1" if open_loop else str(profile.users_of(step)),
        "--spawn-rate", "1" if open_loop else f"{profile.spawn_rate_of(step):g}",
        "--run-time", f"{max(1, math.ceil(step.seconds))}s",
        "--stop-timeout", f"{profile.drain_timeout:g}",
        "--csv", str(prefix), "--html", f"{prefix}.html",
        "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
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

    def counts(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.counts_path.read_text())
            return data
        except (OSError, ValueError):
            return {}

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
    prefix = out_dir / step_name(index, step)
    counts = out_dir / f"{step_name(index, step)}_counts.json"
    env = locust_env(profile, step, images, counts, request, image_size, index)
    env.update(extra_env or {})
    group = proc.Group(locust_argv(profile, step, host, prefix, locustfile=locustfile),
                       log_path=out_dir / f"{step_name(index, step)}_locust.log",
                       env=env,
                       cwd=ROOT)
    # Sampled until the group exits (run.py stops it after the drain): no hook needed there.
    cpu = LoadgenSampler(lambda: group_pids(group.pid), Path(f"{prefix}_loadgen.csv"),
                         group.alive).start()
    return StepLoad(group=group, counts_path=counts, launched=time.time(), prefix=prefix,
                    cpu=cpu)


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
