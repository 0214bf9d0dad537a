"""`infbench trace`: where one request's time goes, each variant's entry service profiled
request by request (infbench/modes/request_profile.py). It was `infbench profile`, a word the
load profiles (`--profile`) already had; `profile` still works, with a one-line notice."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from infbench import config
from infbench.cli.args import Subparsers, add_model, add_profile, add_run_id, add_runtime, env
from infbench.cli.exits import of_status
from infbench.launch import get_launcher
from infbench.measure import assets
from infbench.modes import request_profile
from infbench.modes.sweep import Plan, run_study
from infbench.report import request_profile as profile_report
from infbench.results.files import check_writable

NAME = "trace"
OLD_NAME = "profile"


def add_parser(sub: Subparsers) -> None:
    prof = sub.add_parser(NAME, help="where one request's time goes: the entry service "
                          "profiled per request (pyinstrument, yappi) against its timing lines")
    prof.add_argument("variants", nargs="+", metavar="variant",
                      help="one or more variants (two or more: side by side)")
    # A string default goes through type=int when the trace command is parsed: a bad
    # INFBENCH_REQUESTS is argparse's one-line error there, and no other command reads it.
    prof.add_argument("--requests", type=int, default=env("REQUESTS") or "20",
                      help="measured sequential requests per pass (default 20; env "
                           "INFBENCH_REQUESTS)")
    prof.add_argument("--warmup", type=int, default=3, help="warm-up requests per pass")
    add_profile(prof, fallback="scoring-latency",
                help="profile whose request timeout and sampling settings apply "
                     "(default: scoring-latency)")
    add_model(prof)
    add_runtime(prof, help=None)
    add_run_id(prof, help=None)


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    variants = [exp.variant(n) for n in args.variants]
    if args.requests < 1 or args.warmup < 0:
        raise config.ConfigError(f"profile: --requests must be >= 1 and --warmup >= 0, got "
                                 f"{args.requests} and {args.warmup}")
    base = exp.profile(args.profile)
    profile = dataclasses.replace(base, name="profile", cycles=1, model_alone=False)
    settings = request_profile.PassSettings(requests=args.requests, warmup=args.warmup,
                                        timeout=base.request_timeout)
    for v in variants:
        m = exp.model_for(v, args.model)
        v.check_model(m, args.runtime)
        if m.is_file:
            assets.check_model_file(m)
    check_writable(Path(args.results))
    get_launcher(args.runtime).prepare(variants, print)
    plan = Plan(experiments=exp, variants=variants, profile=profile, model_override=args.model,
                runtime=args.runtime, results=Path(args.results), run_id=args.run_id)
    outcome = run_study(plan, variant_run=request_profile.runner(settings))
    profile_report.report(outcome.run_dir, [v.name for v in variants], print)
    print(f"\nresults: {outcome.run_dir}/<variant>/profile/ (profile.md, profile.json, "
          f"<pass>/server/*, <pass>/client.*)")
    return of_status(outcome.status)
