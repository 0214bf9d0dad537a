"""Command line: `python -m infbench <command>` (the makefile calls these).

Every option also has an environment variable (INFBENCH_PROFILE, INFBENCH_MODEL, ...), so
`make run PROFILE=quick` and `INFBENCH_PROFILE=quick python -m infbench run` agree.
Exit codes: 0 complete, 1 an error (config, a failed run, a file that could not be written,
two runs that cannot be compared, a bad thresholds file), 2 usage, 3 partial (a variant failed
or ran with faults: a restart, a load-generator failure, a step whose requests all failed),
4 a threshold failed (`check`) or the two opinions disagreed (`crosscheck`), 130 Ctrl-C,
143 SIGTERM, 129 SIGHUP.

One module per command (infbench/cli/<command>.py; `list` is listing.py), each with `NAME`,
`add_parser(sub)` and `run(args) -> exit code`; the arguments several commands share are
declared once, in args.py; the exit codes and the signal that stopped a run are exits.py's.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Protocol

from infbench import config
from infbench.cli import (
    args,
    build,
    capacity,
    check,
    compare,
    crosscheck,
    diagnose,
    exits,
    export,
    gpu_pack,
    listing,
    overhead,
    peers,
    report,
    run,
    trace,
)
from infbench.cli.args import Subparsers
from infbench.launch import LaunchError, proc
from infbench.measure import assets, tools
from infbench.report import compare as comparison
from infbench.report import thresholds
from infbench.results import readers, store
from infbench.results.files import WriteError


class Command(Protocol):
    NAME: str

    def add_parser(self, sub: Subparsers) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


# In the order `infbench --help` lists them.
COMMANDS: tuple[Command, ...] = (listing, build, run, capacity, trace, diagnose, crosscheck,
                                 export, report, compare, check, overhead, peers,
                                 gpu_pack)


def install_signals() -> None:
    """SIGINT back to Python's default (a run started in the background from a script inherits
    it ignored), SIGTERM and SIGHUP through the same path, SIGXFSZ ignored so that a file-size
    limit is an OSError on the write (one line) rather than a silent kill."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, exits.on_signal)
    signal.signal(signal.SIGHUP, exits.on_signal)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infbench", description=__doc__.splitlines()[0])
    args.add_global(p)
    sub = p.add_subparsers(dest="cmd", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


# Options before the command that take a value (args.add_global).
GLOBAL_VALUES = ("--experiments", "--results")


def renamed(argv: list[str]) -> list[str]:
    """A command under its old name runs under its new one, after a one-line notice."""
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        i += 2 if argv[i] in GLOBAL_VALUES else 1
    if i < len(argv) and argv[i] == trace.OLD_NAME:
        print(f"infbench: `{trace.OLD_NAME}` is now `{trace.NAME}` (a profile is a load "
              f"profile, --profile); running `{trace.NAME}`", file=sys.stderr)
        return [*argv[:i], trace.NAME, *argv[i + 1:]]
    return argv


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(renamed(sys.argv[1:] if argv is None else list(argv)))
    install_signals()
    command = next(c for c in COMMANDS if ns.cmd == c.NAME)
    try:
        return command.run(ns)
    except (config.ConfigError, store.ReportError, assets.AssetError, LaunchError,
            WriteError, comparison.CompareError, thresholds.ThresholdError,
            readers.ReadError, tools.ToolError) as e:
        print(f"infbench: error: {e}", file=sys.stderr)
        return exits.EXIT_FAILED
    except KeyboardInterrupt:
        print("infbench: interrupted", file=sys.stderr)
        return exits.interrupt_code()
    finally:
        proc.stop_all()
        proc.WATCHDOG.close()


if __name__ == "__main__":
    sys.exit(main())
