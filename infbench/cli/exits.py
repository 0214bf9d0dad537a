"""The exit codes, and the signal that stopped a run (its code is 128 + the signal).

0 complete, 1 an error, 2 usage (argparse), 3 partial, 4 a threshold failed (`check`,
report/thresholds.py) or a crosscheck's two opinions disagreed (`crosscheck`), 130 Ctrl-C,
143 SIGTERM, 129 SIGHUP. `main.install_signals` routes SIGTERM and SIGHUP through `on_signal`;
a command whose run was interrupted returns `interrupt_code()`.
"""

from __future__ import annotations

from types import FrameType

EXIT_FAILED = 1
EXIT_PARTIAL = 3
EXIT_DISAGREE = 4  # the same code as a failed threshold: the run is fine, its figures are not
_signal_seen: list[int] = []


def on_signal(signum: int, _frame: FrameType | None) -> None:
    # One shutdown path: SIGTERM and SIGHUP (a closed terminal) go the same way as Ctrl-C.
    _signal_seen.append(signum)
    raise KeyboardInterrupt


def interrupt_code() -> int:
    if not _signal_seen:
        return 130
    return 128 + _signal_seen[0]


def of_status(status: str) -> int:
    """A run's exit code from its outcome's status: interrupted, complete, else partial."""
    if status == "interrupted":
        return interrupt_code()
    return 0 if status == "complete" else EXIT_PARTIAL
