"""`infbench list`: the variants, profiles, studies and models of the experiments file."""

from __future__ import annotations

import argparse

from infbench import config
from infbench.cli.args import Subparsers

NAME = "list"


def add_parser(sub: Subparsers) -> None:
    sub.add_parser(NAME, help="list variants, profiles and models")


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    print(f"variants ({exp.path.name}; * = in `make run`):")
    for name, v in exp.variants.items():
        mark = "*" if name in exp.study_variants else " "
        print(f"  {mark} {name:32s} {v.description}")
    print("profiles:")
    for name, p in exp.profiles.items():
        default = " (default)" if name == exp.study_profile else ""
        print(f"    {name:32s} {p.description}{default}"
              f" [up to ~{p.planned_seconds() / 60:.1f} min a variant]")
    if exp.studies:
        print("studies (make run_study STUDY=<name>):")
        for name, st in exp.studies.items():
            print(f"    {name:32s} {st.description} [profile {st.profile}, "
                  f"{len(st.variants)} variants]")
    print("models:")
    for name, m in exp.models.items():
        default = " (default)" if name == exp.study_model else ""
        print(f"    {name:32s} {m.description or m.path}{default}")
    return 0
