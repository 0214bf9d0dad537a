"""`infbench peers`: the peer serving stacks' environments, built from their locks (`make peers`).

A run builds a missing one itself (the native launcher's prepare); this builds them ahead, side
by side, and says how long each took and how large it is. `--lock` re-resolves a peer's
requirements.in into its lock instead (`make peers-lock PEER=<name>`).
"""

from __future__ import annotations

import argparse

from infbench.cli.args import Subparsers
from infbench.config import envs as config_envs
from infbench.launch import envs

NAME = "peers"


def add_parser(sub: Subparsers) -> None:
    sp = sub.add_parser(NAME, help="build the peer serving stacks' environments (make peers)")
    sp.add_argument("names", nargs="*", help="peer environments (default: all of "
                                             "servers/peers/*/requirements.lock)")
    sp.add_argument("--rebuild", action="store_true", help="rebuild even if up to date")
    sp.add_argument("--lock", action="store_true",
                    help="resolve requirements.in into the lock (pip, this Python) instead")


def run(args: argparse.Namespace) -> int:
    names = list(args.names) or list(config_envs.known())
    if args.lock:
        for name in names:
            envs.resolve(name, print)
        return 0
    for name in names:
        envs.check_known(name)
        if args.rebuild and envs.ready(name):
            (config_envs.env_dir(name) / envs.STAMP).unlink()
    envs.ensure_all(names, print)
    for name in names:
        print(f"peer environment {name}: ready, {envs.size_mb(name):.0f} MB in "
              f"{config_envs.env_dir(name)}")
    return 0
