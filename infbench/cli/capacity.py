"""`infbench capacity`: one variant, probed open-loop for its capacity under a p95 bound
(infbench/modes/capacity.py)."""

from __future__ import annotations

import argparse
import dataclasses
import json

from infbench import config
from infbench.analysis.capacity import Search
from infbench.cli.args import (
    Subparsers,
    add_model,
    add_probes,
    add_profile,
    add_run_id,
    add_runtime,
    one_variant_plan,
)
from infbench.cli.exits import of_status
from infbench.config import Step
from infbench.modes import capacity as mode
from infbench.modes.sweep import run_study
from infbench.report import build, markdown

NAME = "capacity"


def add_parser(sub: Subparsers) -> None:
    cap = sub.add_parser(NAME, help="the highest open-loop rate a variant serves with "
                         "p95 under a bound (bisection on rate, each probe until stable)")
    cap.add_argument("variants", nargs=1, metavar="variant")
    cap.add_argument("--p95-ms", type=float, required=True, help="the latency bound (ms)")
    add_profile(cap, fallback="capacity",
                help="settings of the probes: batch (its first step), arrival, windows, "
                     "the first rate (its `rate`) (default: capacity)")
    cap.add_argument("--batch", type=int, default=0, help="images per request (default: the "
                     "profile's first step)")
    cap.add_argument("--start-rate", type=float, default=0.0,
                     help="req/s of the first probe (default: the profile's rate, else 1)")
    cap.add_argument("--tolerance", type=float, default=0.05,
                     help="stop when the lowest failing rate is within this of the highest "
                          "pass (default 0.05)")
    cap.add_argument("--max-probes", type=int, default=10)
    cap.add_argument("--probe-seconds", type=float, default=0.0,
                     help="the most a probe runs (default: the profile's first step seconds)")
    add_model(cap)
    add_runtime(cap, help=None)
    add_run_id(cap, help=None)
    add_probes(cap, help=None)


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    v = exp.variant(args.variants[0])
    if args.probes:
        v = v.with_probes()
    base = exp.profile(args.profile)
    for name, value in (("--p95-ms", args.p95_ms), ("--tolerance", args.tolerance),
                        ("--max-probes", args.max_probes)):
        if not value > 0:
            raise config.ConfigError(f"capacity {name}: must be > 0, got {value!r}")
    first = base.steps[0]
    batch = args.batch or first.batch
    search = Search(
        p95_ms=args.p95_ms, start=args.start_rate or base.rate or 1.0,
        tolerance=args.tolerance, max_probes=args.max_probes,
        probe_seconds=args.probe_seconds or first.seconds)
    profile = dataclasses.replace(base, steps=(Step(batch=batch, seconds=search.probe_seconds,
                                                    rate=search.start, until_stable=True),),
                                  cycles=1)
    plan = one_variant_plan(args, exp, v, profile)
    outcome = run_study(plan, variant_run=mode.runner(search))
    build.build(outcome.run_dir)
    doc = outcome.run_dir / v.name / "capacity.json"
    try:
        a = json.loads(doc.read_text())["answer"]
    except (OSError, ValueError, KeyError):
        a = None
    if a and a.get("found"):
        print(f"capacity of {v.name} at p95 <= {args.p95_ms:g} ms, {batch} image(s) a "
              f"request: {a['rate']:g} req/s ({a['images_per_s']:,.1f} images/s), served "
              f"{a['rps']:.2f} req/s at p95 {a['p95_ms']:,.0f} ms; the next rate up failed: "
              f"{a.get('bounded_by')}" + ("" if a.get("converged") else " (not converged)"))
    elif a:
        print(f"no rate of {v.name} met p95 <= {args.p95_ms:g} ms ({a.get('bounded_by')})")
    print(f"results: {outcome.run_dir / v.name}/capacity.json, capacity.png")
    markdown.print_faults(build.build(outcome.run_dir))
    return of_status(outcome.status)
