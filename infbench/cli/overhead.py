"""`infbench overhead`: what the probes cost in one run, with and without them
(infbench/report/overhead.py; `make bench-probes` runs the study, then this)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infbench.cli.args import Subparsers, add_run
from infbench.report import overhead
from infbench.results import store

NAME = "overhead"


def add_parser(sub: Subparsers) -> None:
    add_run(sub.add_parser(NAME, help="what the probes cost: req/s and p50 with and without "
                           "them, from a run of variants with and without probes"))


def run(args: argparse.Namespace) -> int:
    run_dir = store.resolve_run(Path(args.results), args.run)
    print("\n".join(overhead.table(run_dir)))
    return 0
