"""What watches a variant's services while it runs, behind one protocol: a run holds a list.

A monitor is made at one of two moments, by a factory registered for it:

    launch    before the services start, so that it sees them from their first second
              (the /proc sampler)
    healthy   once every service answers its health check (Redis's own figures; glibc's
              view from outside, in cycled profiles)

and the run loop calls the same hooks on every monitor in its list: `step_start(index, kind)`
before a step's load starts and `step_end(index, kind)` once its load generator has stopped
(kind "step", or "window" for the culprit window's), `rest(cycle)` at the end of each rest
between cycles, `trim()` at the end (after the cooldown), and `stop()` on every exit path,
before the services stop. A hook a monitor does not need is a no-op. Adding a
monitor is its class and one registered factory here; the run loop does not change.

(The restart watch, infbench/measure/procwatch.py, is the run loop's fault check, polled with
its health checks; it is not a measurement and is not in this list.)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.config import Profile, Variant
from infbench.measure import energy, gpu
from infbench.measure.capture import Capture
from infbench.measure.cgroup import CgroupSampler
from infbench.measure.outside import OutsideWatch
from infbench.measure.phases import PhaseLog
from infbench.measure.prometheus import MetricsSampler
from infbench.measure.redis import RedisSampler
from infbench.measure.sampler import ProcessSampler
from infbench.results.samples import CGROUP_FILE, ENERGY_FILE, GPU_FILE, METRICS_FILE


@dataclass(frozen=True)
class Context:
    """What a monitor may be made from."""

    variant: Variant
    profile: Profile
    topology: Any  # infbench.launch.topology.Topology
    log: PhaseLog
    out: Path
    queue_keys: list[str]
    say: Callable[[str], None] = print  # a line on the run's console


class Monitor:
    def step_start(self, index: int, kind: str) -> None:
        """Before step `index`'s load starts (it waits for this to return)."""

    def step_end(self, index: int, kind: str) -> None:
        """Once step `index`'s load generator has stopped."""

    def rest(self, cycle: int) -> None:
        """At the end of each rest between cycles."""

    def trim(self) -> list[dict[str, Any]]:
        """At the end, after the cooldown: what it asked the processes to give back."""
        return []

    def stop(self) -> None:
        """On every exit path, before the services stop; records what it measured."""


Factory = Callable[[Context], list[Monitor]]
FACTORIES: dict[str, list[Factory]] = {"launch": [], "healthy": []}


def register(moment: str) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        FACTORIES[moment].append(factory)
        return factory
    return add


def start(moment: str, ctx: Context) -> list[Monitor]:
    return [m for factory in FACTORIES[moment] for m in factory(ctx)]


class _Processes(Monitor):
    def __init__(self, ctx: Context) -> None:
        self.log = ctx.log
        self.sampler = ProcessSampler(ctx.topology.processes, ctx.out / "processes.csv",
                                      ctx.profile.sample_interval).start()

    def stop(self) -> None:
        s = self.sampler
        s.stop()
        self.log.data["sampler"] = {"file": "processes.csv", "samples": s.samples,
                                    "interval_s": s.interval, "cpu_s": round(s.cpu_s, 3)}


class _Energy(Monitor):
    """The machine's powercap counters (energy.csv), or why there are none, in phases.json."""

    def __init__(self, ctx: Context) -> None:
        self.log = ctx.log
        found, why = energy.zones(Path(os.environ.get("INFBENCH_POWERCAP", energy.POWERCAP)))
        self.why = why
        self.sampler = energy.EnergySampler(found, ctx.out / ENERGY_FILE).start() \
            if found else None

    def stop(self) -> None:
        s = self.sampler
        if s is None:
            self.log.data["energy"] = {"available": False, "why": self.why}
            return
        s.stop()
        self.log.data["energy"] = {"available": True, "file": ENERGY_FILE,
                                   "zones": [z.name for z in s.zones], "samples": s.samples}
        if s.failed:
            self.log.event("energy_failed", f"{s.failed} of {s.samples} energy samples had a "
                           "powercap zone that did not answer (energy.csv has gaps)")


class _Gpu(Monitor):
    """The GPUs' memory and utilisation (gpu.csv) where a GPU and nvidia-ml-py are, or why
    not, in phases.json."""

    def __init__(self, ctx: Context) -> None:
        self.log = ctx.log
        nvml, handles, why = gpu.open_nvml()
        self.why = why
        self.sampler = gpu.GpuSampler(nvml, handles, ctx.out / GPU_FILE).start() \
            if handles else None

    def stop(self) -> None:
        s = self.sampler
        if s is None:
            self.log.data["gpu"] = {"available": False, "why": self.why}
            return
        s.stop()
        self.log.data["gpu"] = {"available": True, "file": GPU_FILE, "gpus": len(s.handles),
                                "samples": s.samples}
        if s.failed:
            self.log.event("gpu_failed", f"{s.failed} of {s.samples} GPU samples had a GPU "
                           f"that did not answer (gpu.csv has gaps; first: {s.first_error})")


class _Redis(Monitor):
    def __init__(self, ctx: Context, port: int, out: Path) -> None:
        self.sampler = RedisSampler(port, out, ctx.queue_keys,
                                    note=lambda kind, detail: ctx.log.event(kind, detail)).start()

    def stop(self) -> None:
        self.sampler.stop()


class _Metrics(Monitor):
    """A service's own /metrics (server = "url", `metrics`): metrics.csv, and its process
    collector's RSS and CPU in phases.json `metrics`."""

    def __init__(self, ctx: Context, replica: Any) -> None:
        self.log = ctx.log
        self.say = ctx.say
        self.label = replica.spec.label
        self.out = replica.spec.out_dir / METRICS_FILE
        self.sampler = MetricsSampler(
            replica.spec.service.metrics, self.out, ctx.profile.sample_interval,
            note=lambda kind, detail: ctx.log.event(kind, f"{self.label}: {detail}",
                                                    replica=self.label)).start()

    def stop(self) -> None:
        s = self.sampler
        s.stop()
        found: dict[str, Any] = {"file": str(self.out.relative_to(self.log.path.parent)),
                                 "url": s.url, "samples": s.samples, "failed": s.failed,
                                 "interval_s": s.interval}
        if "rss_mb" in s.last:
            found.update(rss_mb_first=round(s.first["rss_mb"], 3),
                         rss_mb_last=round(s.last["rss_mb"], 3))
        if "cpu_s" in s.last:
            found["cpu_s"] = round(s.last["cpu_s"] - s.first.get("cpu_s", 0.0), 3)
        self.log.data.setdefault("metrics", {})[self.label] = found
        if s.failed:
            self.say(f"  WARNING {self.label}: {s.failed} of {s.samples} scrapes of {s.url} "
                     "failed")
        elif "rss_mb" in s.last:
            self.say(f"  {self.label} by its /metrics: RSS {s.first['rss_mb']:.1f} -> "
                     f"{s.last['rss_mb']:.1f} MB, CPU {found.get('cpu_s', 0.0):.2f} s")
        self.log.save()


class _Cgroup(Monitor):
    """A url server's cgroup (`cgroup`): cgroup_memory.csv, its CPU in phases.json `cgroup`."""

    def __init__(self, ctx: Context, replica: Any) -> None:
        self.log = ctx.log
        self.label = replica.spec.label
        self.sampler = CgroupSampler(
            Path(replica.spec.service.cgroup), replica.spec.out_dir / CGROUP_FILE,
            ctx.profile.sample_interval,
            note=lambda kind, detail: ctx.log.event(kind, f"{self.label}: {detail}",
                                                    replica=self.label)).start()

    def stop(self) -> None:
        s = self.sampler
        s.stop()
        found: dict[str, Any] = {"folder": str(s.folder), "source": s.source,
                                 "samples": s.samples, "failed": s.failed}
        if len(s.cpu) == 2:
            found["cpu_s"] = round(s.cpu[1] - s.cpu[0], 3)
        self.log.data.setdefault("cgroup", {})[self.label] = found
        self.log.save()


class _Outside(Monitor):
    def __init__(self, ctx: Context) -> None:
        self.watch = OutsideWatch(ctx.topology, ctx.log)

    def rest(self, cycle: int) -> None:
        self.watch.rest(cycle)

    def trim(self) -> list[dict[str, Any]]:
        return self.watch.trim()


class _Capture(Monitor):
    def __init__(self, ctx: Context) -> None:
        self.capture = Capture(ctx)

    def step_start(self, index: int, kind: str) -> None:
        self.capture.step_start(index, kind)

    def step_end(self, index: int, kind: str) -> None:
        self.capture.step_end(index, kind)

    def stop(self) -> None:
        self.capture.stop()


@register("launch")
def processes(ctx: Context) -> list[Monitor]:
    """Every process of every service, from /proc: processes.csv."""
    return [_Processes(ctx)]


@register("launch")
def energy_counters(ctx: Context) -> list[Monitor]:
    """The machine's powercap energy counters, where readable: energy.csv."""
    return [_Energy(ctx)]


@register("launch")
def gpus(ctx: Context) -> list[Monitor]:
    """The GPUs' memory and utilisation, where a GPU and nvidia-ml-py are: gpu.csv."""
    return [_Gpu(ctx)]


@register("healthy")
def redis(ctx: Context) -> list[Monitor]:
    """Each Redis replica's own figures (INFO, the queue lengths): redis_stats.csv."""
    return [_Redis(ctx, r.spec.port, r.spec.out_dir / "redis_stats.csv")
            for r in ctx.topology.replicas if r.spec.service.server == "redis"]


@register("healthy")
def metrics(ctx: Context) -> list[Monitor]:
    """A service's own Prometheus /metrics (server = "url", `metrics`), scraped every sample
    interval: metrics.csv."""
    return [_Metrics(ctx, r) for r in ctx.topology.replicas if r.spec.service.metrics]


@register("healthy")
def cgroup(ctx: Context) -> list[Monitor]:
    """A url server's cgroup (server = "url", `cgroup`), every sample interval:
    cgroup_memory.csv (the docker runtime's format)."""
    return [_Cgroup(ctx, r) for r in ctx.topology.replicas if r.spec.service.cgroup]


@register("healthy")
def outside(ctx: Context) -> list[Monitor]:
    """glibc's totals read through gdb at each rest of a cycled profile (INFBENCH_OUTSIDE=0:
    off): outside.jsonl."""
    if ctx.profile.cycles > 1 and os.environ.get("INFBENCH_OUTSIDE", "1") != "0":
        return [_Outside(ctx)]
    return []


@register("healthy")
def capture(ctx: Context) -> list[Monitor]:
    """tcpdump on lo for each step, and the wire view read from it (profile `capture = true`,
    CAPTURE=1): wire/step-<i>.pcap, wire.json."""
    return [_Capture(ctx)] if ctx.profile.capture else []
