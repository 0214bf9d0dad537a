"""Leak or allocator retention? Each variant run under glibc and with jemalloc preloaded, on a
cycled profile, and the two verdicts compared.

    python -m infbench diagnose [<variant> ...] [--profile P]   (make diagnose)

The differential hypothesis: growth that vanishes under jemalloc is glibc's retention, growth
that stays is a leak (infbench/analysis/verdict.py: differential). The pairs run in one study
(infbench/modes/sweep.py), each jemalloc variant under its own name (`<variant>-jemalloc`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

from infbench import config
from infbench.analysis import verdict
from infbench.launch import get_launcher
from infbench.modes.sweep import Outcome, Plan, run_study
from infbench.report import build, markdown
from infbench.results import schemas
from infbench.results.files import check_writable

ALLOCATOR = "jemalloc"
FALLBACK_PROFILE = "cycles"


def under(v: config.Variant, allocator: str) -> config.Variant:
    """The variant with `allocator` preloaded in every service but Redis, under its own name."""
    return dataclasses.replace(v, name=f"{v.name}-{allocator}", services=tuple(
        dataclasses.replace(s, allocator=allocator) if s.server != "redis" else s
        for s in v.services))


def cycled_profile(exp: config.Experiments, name: str, default: str) -> config.Profile:
    """The profile named, else `default` (the study's) if it is cycled, else `cycles`; one of
    fewer than schemas.MIN_CYCLES cycles is a ConfigError."""
    name = name or (default if exp.profile(default).cycles >= schemas.MIN_CYCLES
                    else FALLBACK_PROFILE)
    profile = exp.profile(name)
    if profile.cycles < schemas.MIN_CYCLES:
        raise config.ConfigError(f"diagnose needs a profile of at least {schemas.MIN_CYCLES} "
                                 f"cycles; {name!r} has {profile.cycles}")
    return profile


def diagnose(exp: config.Experiments, variants: Sequence[config.Variant],
             profile: config.Profile, *, model: str, runtime: str, results: Path,
             run_id: str, say: Callable[[str], None] = print) -> Outcome:
    """Run each variant and its jemalloc twin, side by side, and say each one's hypothesis."""
    for v in variants:
        v.check_profile(profile)
        v.check_model(exp.model_for(v, model), runtime)
    paired = [x for v in variants for x in (v, under(v, ALLOCATOR))]
    check_writable(results)
    get_launcher(runtime).prepare(paired, say)
    outcome = run_study(Plan(experiments=exp, variants=paired, profile=profile,
                             model_override=model, runtime=runtime, results=results,
                             run_id=run_id))
    summary = build.build(outcome.run_dir)
    say("\n".join(markdown.verdict_lines(summary)))
    found = {r["variant"]: r.get("verdict") or {} for r in summary["variants"]}
    say(f"\nunder glibc, then with {ALLOCATOR} preloaded:")
    for v in variants:
        d = verdict.differential(found.get(v.name, {}), found.get(f"{v.name}-{ALLOCATOR}", {}))
        say(f"  {v.name}: {d['hypothesis']} — {d['reason']}")
    say(f"\nresults: {outcome.run_dir}/summary.md")
    return outcome
