"""`infbench report`: rebuild a run's plots and tables from its files."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infbench.cli.args import Subparsers, add_run
from infbench.cli.exits import EXIT_FAILED
from infbench.report import build, markdown, tables
from infbench.results import store

NAME = "report"


def add_parser(sub: Subparsers) -> None:
    add_run(sub.add_parser(NAME, help="rebuild plots and tables of a (finished or "
                           "interrupted) run from its files"))


def run(args: argparse.Namespace) -> int:
    run_dir = store.resolve_run(Path(args.results), args.run)
    summary = build.build(run_dir)
    print("\n".join(markdown.lines(tables.memory_table(summary["variants"]))))
    print("\n".join(markdown.verdict_lines(summary)))
    print(f"\nrebuilt {run_dir}/report.html, summary.md, summary.csv and plots "
          f"(run status: {summary['run'].get('status')})")
    if summary.get("html_error"):
        print(f"infbench: error: report.html not written: {summary['html_error']}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0
