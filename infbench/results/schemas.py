"""Every versioned file of a run: its current version and what each version changed.

The writers stamp these numbers; the readers (infbench/results/readers.py) migrate an older
file step by step to the current shape and refuse a newer one. A new version is one line here,
its comment, and one migration in the reader.
"""

from __future__ import annotations

from typing import Any

# run.json. 1: first version. 2: statuses "partial"/"degraded", "harness" (pid and start time,
# so a run left "running" by a dead harness is told apart), "events" per variant.
RUN_SCHEMA = 2

# phases.json. 1: first version. 2: "services" (start / healthy / stop per service replica),
# "events" (faults and notes on the run's clock), a status per step ("complete", "degraded",
# "failed") and the variant status "degraded". Version 1 files read unchanged.
# 3: the culprit window's phases ("window", "window_drain", "window_rest") and "window" (its
# reason and the probes' answers), "settled" (a profile with `settle` that stopped cycling
# early: after which cycle, why, the time to the verdict); 1-2 files read unchanged.
# 4: the crosscheck's "tool" phases (a dedicated tool's round: wrk, hey or h2load, with its
# figures) and the fault "tool_failed"; 1-3 files read unchanged.
PHASES_SCHEMA = 4
PHASE_KINDS = ("setup", "baseline", "step", "drain", "pause", "rest", "cooldown", "trim",
               "census", "window", "window_drain", "window_rest", "tool")

# summary.json. 1: first version. 2: "services" (memory and CPU per service of a topology),
# "events" and "faults", a status per step, variant status "degraded". 3: per step "stable",
# "stability" (windows), "memory_flat", "loadgen", "limited_by_loadgen", "open_loop",
# "efficiency", "notes" (infbench/analysis/trust.py); "model_alone" per variant. 4: verdict
# "no verdict" for a profile that runs its sweep once (no cycles), which 1-3 called
# "inconclusive"; the verdict's "trend" (slope, its 95% interval, every cycle up, steady climb)
# and "detection_limit" (per source), read as absent from 1-3; a heap census that climbs in
# every cycle is a leak (1-3 judged RSS's last step). 5: the verdict's "culprit" (the types that
# grew, from the census; the culprit window's lines; heaptrack's native stacks), "arenas" (where
# retention's free memory is), "settled" (from phases.json); malloc's memory in use that climbs
# in every cycle is a steady climb too; 1-4 read with no culprit. 6: "cpu_io" (per service
# and step: CPU and run-queue wait per request, off-CPU share, energy per request or why not;
# infbench/analysis/cpu_io.py); 1-5 read with "cpu_io": None (not measured). 7: "wire" (the packet
# capture's figures and findings per step, from wire.json; None without a capture); 1-6 read
# with none. 8: "machine_limit" per variant (usable cores over the model alone's CPU per image
# at its best batch) and "limit" per step (served over it, and net of the load generator's CPU;
# infbench/analysis/limit.py); 1-7 read with none (not measured). 9: "model_calls" (per step:
# the batches each server's model ran, how busy it was, how long requests waited for it, from
# calls-<pid>.jsonl; infbench/analysis/model_calls.py); 1-8 read with none (not written).
SUMMARY_SCHEMA = 9

# model_alone.json (written by the child servers/image/model_alone.py, which stamps the same
# number). 1: first version. 2: CPU per image and cores kept busy beside each figure, decode
# alone ("decode_*"), and "cores" (usable cores: CPU affinity capped by a cgroup quota); 1 read
# with those as None (not measured).
MODEL_ALONE_SCHEMA = 2

# manifest.json. 1: first version.
MANIFEST_SCHEMA = 1

# compare-<A>-vs-<B>.json. 1: first version.
COMPARE_SCHEMA = 1

# wire.json (the wire view per step, infbench/measure/capture.py). 1: first version.
WIRE_SCHEMA = 1

# capacity.json. 1: first version.
CAPACITY_SCHEMA = 1

# crosscheck.json (infbench/modes/crosscheck.py). 1: first version.
CROSSCHECK_SCHEMA = 1

# profile.json (request profiling). 1: first version. 2: per pass `requests_measured` and
# `timing_lines_measured`; the off pass's `keepalive` check.
PROFILE_SCHEMA = 2

# What summary.json says where the profile runs its sweep once (version 4 on).
MIN_CYCLES = 3
NO_VERDICT = "no verdict"
NO_CYCLES = (f"this profile has no cycles (it runs its sweep once); a leak, allocator "
             f"retention or plateau verdict compares at least {MIN_CYCLES} (a profile with "
             "cycles = N, e.g. PROFILE=cycles)")


def profile_cycles(profile: dict[str, Any] | None) -> int | None:
    """How many times the profile runs its sweep (a profile from before `cycles` ran it once);
    None when the profile is not known."""
    if profile is None:
        return None
    cycles = profile.get("cycles", 1)
    return cycles if isinstance(cycles, int) and not isinstance(cycles, bool) else None


def runs_once(cycles: int | None, counted: int, ran_steps: bool) -> bool:
    """Whether the variant ran a profile without cycles: as its profile says (`cycles` 1), or,
    the profile unknown, no cycle counted while steps ran (phases.json numbered cycles only for
    a cycled profile until every step carried one). One cycle and no profile could be a cycled
    run cut short: not said to run once."""
    if cycles is not None:
        return cycles == 1
    return counted == 0 and ran_steps
