"""`infbench compare`: run B against run A (infbench/report/compare.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from infbench.cli.args import Subparsers
from infbench.report import compare, html
from infbench.results import files, store

NAME = "compare"


def add_parser(sub: Subparsers) -> None:
    cmp = sub.add_parser(NAME, help="compare run B with run A: per variant and step, the "
                         "change in req/s, latency and memory, and whether it is significant")
    cmp.add_argument("a", help="run A (the base): run id, 'latest' or a path")
    cmp.add_argument("b", help="run B (the new one): run id, 'latest' or a path")
    cmp.add_argument("--force", action="store_true",
                     help="compare runs whose fingerprints (profile, models, machine) differ")
    cmp.add_argument("--out", default="",
                     help="folder for compare-<A>-vs-<B>.json/.md (default: B's run folder)")


def run(args: argparse.Namespace) -> int:
    results = Path(args.results)
    a_dir, b_dir = store.resolve_run(results, args.a), store.resolve_run(results, args.b)
    result = compare.compare_runs(a_dir, b_dir, force=args.force)
    out = Path(args.out) if args.out else b_dir
    if args.out:
        files.mkdir(out)
    js, md = compare.write(result, out)
    print(compare.markdown(result), end="")
    print(f"\nwritten: {js}, {md}")
    if out.resolve() == b_dir.resolve() and (b_dir / "report.html").exists():
        html.rebuild(b_dir)
        print(f"added to {b_dir / 'report.html'}")
    return 0
