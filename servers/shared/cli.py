"""The servers' command-line parser: argparse, except that a bad argument is ONE line on stderr,

    <program>: error: <argparse's message>

and exit status 1 (argparse's own is the usage and then status 2), like every other start-up
error of our servers. `program` is the name the line starts with (default: `prog`); give it
to each sub-command's parser too (add_parser(..., program=...)), whose errors are its own.
"""

from __future__ import annotations

import argparse
from typing import Any, NoReturn

EXIT_USAGE = 1


class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser with the one-line error above."""

    def __init__(self, *args: Any, program: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.program = program or self.prog

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.program}: error: {message}\n")


def positive_int(text: str) -> int:
    """An argument type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value
