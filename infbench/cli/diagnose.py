"""`infbench diagnose`: leak or allocator retention (infbench/modes/diagnose.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infbench import config
from infbench.cli.args import (
    Subparsers,
    add_probes,
    add_profile,
    add_run_id,
    add_selection,
    selected,
    study_profile,
)
from infbench.cli.exits import of_status
from infbench.modes import diagnose as mode

NAME = "diagnose"


def add_parser(sub: Subparsers) -> None:
    d = sub.add_parser(NAME, help="leak or allocator retention? run each variant under "
                       "glibc and with jemalloc preloaded, on a cycled profile, and compare")
    add_selection(d)
    add_profile(d, help="a cycled profile (env INFBENCH_PROFILE; default: the study's if "
                        "cycled, else `cycles`)")
    add_run_id(d)
    add_probes(d, help="the server-side memory probes too (env INFBENCH_PROBES=1)")


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    variants = selected(exp, args)
    if args.probes:
        variants = [v.with_probes() for v in variants]
    profile = mode.cycled_profile(exp, args.profile, study_profile(exp, args))
    outcome = mode.diagnose(exp, variants, profile, model=args.model, runtime=args.runtime,
                            results=Path(args.results), run_id=args.run_id)
    return of_status(outcome.status)
