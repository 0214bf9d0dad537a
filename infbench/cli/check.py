"""`infbench check`: a run against thresholds (infbench/report/thresholds.py); exit 4 if one
fails."""

from __future__ import annotations

import argparse
from pathlib import Path

from infbench.cli.args import Subparsers, add_run, env
from infbench.report import thresholds
from infbench.results import store

NAME = "check"


def add_parser(sub: Subparsers) -> None:
    chk = sub.add_parser(NAME, help="check a run against thresholds (exit 4 if one fails)")
    add_run(chk)
    chk.add_argument("--thresholds", default=env("THRESHOLDS"),
                     help="thresholds file (default: the [thresholds] table of the "
                          "experiments file; env INFBENCH_THRESHOLDS)")


def run(args: argparse.Namespace) -> int:
    run_dir = store.resolve_run(Path(args.results), args.run)
    source = Path(args.thresholds or args.experiments)
    rules = thresholds.load(source, table_required=not args.thresholds)
    outcomes = thresholds.check(run_dir, rules)
    print(f"run {run_dir.name}: {len(rules)} rule(s) from {source}")
    print("\n".join(thresholds.lines(outcomes)))
    failed = any(o.result == "FAIL" for o in outcomes)
    return thresholds.EXIT_FAILED_THRESHOLD if failed else 0
