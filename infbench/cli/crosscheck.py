"""`infbench crosscheck`: a variant's entry driven by a dedicated tool (wrk or hey for HTTP,
h2load for gRPC) beside our closed loop, alternating, the figures side by side
(infbench/modes/crosscheck.py). Exit 0 when they agree within the stated tolerance, 4 when
they do not, 3 when a round had a fault (no verdict), 1 an error."""

from __future__ import annotations

import argparse
import dataclasses

from infbench import config
from infbench.cli.args import (
    Subparsers,
    add_model,
    add_profile,
    add_run_id,
    add_runtime,
    env,
    one_variant_plan,
)
from infbench.cli.exits import EXIT_DISAGREE, EXIT_PARTIAL, of_status
from infbench.config import Step
from infbench.measure import tools
from infbench.modes import crosscheck as mode
from infbench.modes.sweep import run_study
from infbench.report import build, markdown
from infbench.report import crosscheck as report
from infbench.results import readers

NAME = "crosscheck"
SPAWN_RATE = 1000.0  # users a second: every connection of ours is open within a few ms


def add_parser(sub: Subparsers) -> None:
    x = sub.add_parser(NAME, help="a dedicated tool (wrk/hey, h2load for gRPC) beside "
                       "infbench's closed loop on a variant, alternating (exit 4 if they "
                       "disagree)")
    x.add_argument("variants", nargs=1, metavar="variant")
    add_profile(x, fallback="crosscheck",
                help="the batch (its first step), users, seconds and pauses (default: "
                     "crosscheck)")
    x.add_argument("--connections", type=int, default=0,
                   help="connections of the tool = users of ours (default: the profile's "
                        "users)")
    x.add_argument("--seconds", type=float, default=0.0,
                   help="seconds a round (default: the profile's first step)")
    x.add_argument("--rounds", type=int, default=2,
                   help="rounds of each side, ABBA (default 2: tool, ours, ours, tool)")
    x.add_argument("--warmup", type=float, default=2.0,
                   help="seconds of the tool before the first round, not counted (default 2)")
    x.add_argument("--tool", default=env("CROSSCHECK_TOOL", "wrk"), choices=tools.HTTP_TOOLS,
                   help="the HTTP tool (gRPC entries take h2load; env "
                        "INFBENCH_CROSSCHECK_TOOL)")
    x.add_argument("--no-pin", dest="pin", action="store_false",
                   help="do not pin (default: the generators on the first core, the variant's "
                        "services on the others, where there are two or more)")
    add_model(x)
    add_runtime(x, help=None)
    add_run_id(x, help=None)


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    v = exp.variant(args.variants[0])
    base = exp.profile(args.profile)
    if base.rate_of(base.steps[0]) > 0:
        raise config.ConfigError(f"crosscheck: profile {base.name!r} is open loop; the tools "
                                 "run closed loop (give a profile with users)")
    connections = args.connections or base.users
    seconds = args.seconds or base.steps[0].seconds
    for name, value in (("--connections", connections), ("--seconds", seconds),
                        ("--rounds", args.rounds)):
        if not value > 0:
            raise config.ConfigError(f"crosscheck {name}: must be > 0, got {value!r}")
    tools.require(args.tool)
    profile = dataclasses.replace(
        base, users=connections, spawn_rate=SPAWN_RATE, wait=(0.0, 0.0),
        steps=(Step(batch=base.steps[0].batch, seconds=seconds),), cycles=1)
    plan = one_variant_plan(args, exp, v, profile)
    settings = mode.Settings(connections=connections, seconds=seconds, rounds=args.rounds,
                             http_tool=args.tool, warmup=max(0.0, args.warmup),
                             pin=args.pin)
    outcome = run_study(plan, variant_run=mode.runner(settings))
    markdown.print_faults(build.build(outcome.run_dir))
    out = outcome.run_dir / v.name
    try:
        doc = readers.crosscheck_json(out)
    except readers.ReadError:
        print(f"crosscheck of {v.name}: no crosscheck.json (the variant did not get to its "
              f"rounds; see {out}/phases.json and server.log)")
        return of_status(outcome.status) or EXIT_PARTIAL
    print("\n".join(report.markdown(doc)))
    print(f"results: {out}/crosscheck.json, crosscheck.md")
    code = of_status(outcome.status)
    if code:
        return code
    if doc.get("agree") is None:
        return EXIT_PARTIAL
    return 0 if doc["agree"] else EXIT_DISAGREE
