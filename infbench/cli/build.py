"""`infbench build`: the model(s) and sample images the selected variants need."""

from __future__ import annotations

import argparse

from infbench import config
from infbench.cli.args import Subparsers, add_selection, selected
from infbench.launch import get_launcher
from infbench.measure import assets

NAME = "build"


def add_parser(sub: Subparsers) -> None:
    add_selection(sub.add_parser(NAME, help="build the model(s) and sample images a run needs"))


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    variants = selected(exp, args)
    for v in variants:
        v.check_model(exp.model_for(v, args.model), args.runtime)
    launcher = get_launcher(args.runtime)
    images = assets.ensure_images()
    print(f"sample images: {len(images)} JPEGs in {assets.images_dir()}")
    launcher.prepare(variants, print)
    done: set[str] = set()
    for v in variants:
        m = exp.model_for(v, args.model)
        if m.name not in done:
            path = assets.ensure_model(m)
            print(f"model {m.name!r}: {path}")
            done.add(m.name)
        print(f"variant {v.name}: ready ({args.runtime}, model {m.name!r})")
    return 0
