"""The arguments more than one command takes, each declared once, and how they are read.

Each `add_*` adds one argument (or one group) to a command's parser; the help string is the
common one unless the command passes its own (`help=None`: none, as argparse has it). Every
option's default is its environment variable, `INFBENCH_<NAME>` (`env`), read when the parser
is built.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TypeAlias

from infbench import config
from infbench.launch import get_launcher
from infbench.measure import assets
from infbench.modes.sweep import Plan
from infbench.paths import ROOT
from infbench.results.files import check_writable

# What `add_subparsers` returns: each command module's `add_parser(sub)` adds its parser to it.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

TRUE = ("1", "true", "yes")


def env(name: str, default: str = "") -> str:
    """INFBENCH_<name>, else the default."""
    return os.environ.get(f"INFBENCH_{name}", default)


def env_flag(name: str) -> bool:
    """INFBENCH_<name> as an on/off switch: 1, true or yes (any case) is on."""
    return env(name).lower() in TRUE


def results_default() -> str:
    """Where runs go unless --results says: INFBENCH_RESULTS, else results/ in the checkout."""
    return env("RESULTS", str(ROOT / "results"))


def add_global(p: argparse.ArgumentParser) -> None:
    """The options before the command: the experiments file and the results folder."""
    p.add_argument("--experiments", default=env("EXPERIMENTS", str(ROOT / "experiments.toml")),
                   help="experiments file (env INFBENCH_EXPERIMENTS)")
    p.add_argument("--results", default=results_default(),
                   help="results folder (env INFBENCH_RESULTS)")


MODEL_HELP = "model preset (env INFBENCH_MODEL)"
RUNTIME_HELP = "native or docker (env INFBENCH_RUNTIME)"
RUN_ID_HELP = "name of the run folder"
RUN_HELP = "run id, 'latest' or a path"


def add_model(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default=env("MODEL"), help=MODEL_HELP)


def add_runtime(sp: argparse.ArgumentParser, help: str | None = RUNTIME_HELP) -> None:
    sp.add_argument("--runtime", default=env("RUNTIME", "native"), help=help)


def add_selection(sp: argparse.ArgumentParser) -> None:
    """Which variants (names, --all or a study's), the model preset and the runtime: `selected`
    reads them."""
    sp.add_argument("variants", nargs="*", help="variant names (default: the study's)")
    sp.add_argument("--all", action="store_true", help="every variant in the file")
    sp.add_argument("--study", default=env("STUDY"),
                    help="a named study of experiments.toml: its variants and profile "
                         "(env INFBENCH_STUDY)")
    add_model(sp)
    add_runtime(sp)


def add_profile(sp: argparse.ArgumentParser, help: str, fallback: str = "") -> None:
    """--profile: INFBENCH_PROFILE, else (also when it is empty) the command's fallback."""
    sp.add_argument("--profile", default=env("PROFILE") or fallback, help=help)


def add_run_id(sp: argparse.ArgumentParser, help: str | None = RUN_ID_HELP) -> None:
    sp.add_argument("--run-id", default=env("RUN_ID"), help=help)


def add_probes(sp: argparse.ArgumentParser, help: str | None) -> None:
    sp.add_argument("--probes", action="store_true", default=env_flag("PROBES"), help=help)


def add_run(sp: argparse.ArgumentParser) -> None:
    """The one run a command reads: a run id, 'latest' or a path (INFBENCH_RUN, else latest);
    `store.resolve_run` finds it."""
    sp.add_argument("run", nargs="?", default=env("RUN", "latest"), help=RUN_HELP)


def selected(exp: config.Experiments, args: argparse.Namespace) -> list[config.Variant]:
    """The variants `add_selection`'s arguments name: --all, else the study's (when no names
    are given), else the names, else the default study's."""
    if args.all:
        return list(exp.variants.values())
    if args.study and not args.variants:
        return [exp.variant(n) for n in exp.study(args.study).variants]
    names = args.variants or list(exp.study_variants)
    return [exp.variant(n) for n in names]


def study_profile(exp: config.Experiments, args: argparse.Namespace) -> str:
    """The profile of the --study given, else the default study's."""
    return exp.study(args.study).profile if args.study else exp.study_profile



def one_variant_plan(args: argparse.Namespace, exp: config.Experiments, v: config.Variant,
                     profile: config.Profile) -> Plan:
    """What a one-variant mode (capacity, crosscheck) checks before it starts anything - the
    profile fits the variant, the model file, the results folder, the runtime - and its plan."""
    m = exp.model_for(v, args.model)
    v.check_profile(profile)
    v.check_model(m, args.runtime)
    if m.is_file:
        assets.check_model_file(m)
    check_writable(Path(args.results))
    get_launcher(args.runtime).prepare([v], print)
    return Plan(experiments=exp, variants=[v], profile=profile, model_override=args.model,
                runtime=args.runtime, results=Path(args.results), run_id=args.run_id)
