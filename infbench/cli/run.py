"""`infbench run`: the selected variants under a profile (infbench/modes/sweep.py), then the
report."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from infbench import config
from infbench.cli.args import (
    TRUE,
    Subparsers,
    add_probes,
    add_profile,
    add_run_id,
    add_selection,
    env,
    env_flag,
    selected,
    study_profile,
)
from infbench.cli.exits import EXIT_FAILED, EXIT_PARTIAL, interrupt_code
from infbench.launch import get_launcher
from infbench.measure import assets
from infbench.modes.sweep import Plan, run_study
from infbench.report import build, markdown, tables
from infbench.results.files import check_writable

NAME = "run"


def add_parser(sub: Subparsers) -> None:
    r = sub.add_parser(NAME, help="run variants under a profile and write the report")
    add_selection(r)
    add_profile(r, help="profile (env INFBENCH_PROFILE)")
    add_run_id(r)
    add_probes(r, help="start the server-side memory probes in every variant (as probes = "
                       "true would; env INFBENCH_PROBES=1)")
    r.add_argument("--model-alone", action="store_true", default=env_flag("MODEL_ALONE"),
                   help="measure the model alone (no HTTP) before each variant's load, for "
                        "serving efficiency (as model_alone = true in the profile would; env "
                        "INFBENCH_MODEL_ALONE=1)")
    r.add_argument("--url", default=env("URL"),
                   help="where a variant's `server = \"url\"` entry service answers, instead "
                        "of its `url` (env INFBENCH_URL)")
    r.add_argument("--capture", action=argparse.BooleanOptionalAction, default=capture_env(),
                   help="a packet capture (tcpdump) of each step's loopback traffic and its wire "
                        "view, as capture = true in the profile would; --no-capture: none "
                        "whatever the profile says (env INFBENCH_CAPTURE=1 / 0)")
    r.add_argument("--load-processes", default=env("LOAD_PROCESSES") or None, metavar="N",
                   help="Locust's master and N worker processes per step (N > 1), as "
                        "load_processes = N in the profile would (env INFBENCH_LOAD_PROCESSES)")


def with_url(variants: list[config.Variant], url: str) -> list[config.Variant]:
    """--url / INFBENCH_URL: every selected variant whose entry is a server = "url" service
    sends its load there; a variant of another kind is a one-line error (the url would be
    ignored)."""
    checked = config.external_url("--url (INFBENCH_URL)", url)
    others = [v.name for v in variants if v.entry_service.server != "url"]
    if others:
        raise config.ConfigError(f"--url (INFBENCH_URL): only for variants whose entry is "
                                 f"server = 'url'; not {', '.join(others)}")
    return [config.with_server(v, url=checked) for v in variants]


def positive_int(raw: str | int) -> int:
    """--load-processes / INFBENCH_LOAD_PROCESSES: a whole number of processes, 1 or more."""
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise config.ConfigError(f"--load-processes (INFBENCH_LOAD_PROCESSES): a whole number "
                                 f">= 1, got {raw!r}")
    return n


def capture_env() -> bool | None:
    """INFBENCH_CAPTURE: 1/true/yes on, 0/false/no off, unset: as the profile says."""
    raw = env("CAPTURE").lower()
    return True if raw in TRUE else False if raw in ("0", "false", "no") else None


def run(args: argparse.Namespace) -> int:
    exp = config.load(args.experiments)
    variants = selected(exp, args)
    if args.url:
        variants = with_url(variants, args.url)
    if args.probes:
        variants = [v.with_probes() for v in variants]
    profile = exp.profile(args.profile or study_profile(exp, args))
    if args.model_alone:
        profile = dataclasses.replace(profile, model_alone=True)
    if args.capture is not None:
        profile = dataclasses.replace(profile, capture=args.capture)
    if args.load_processes is not None:
        profile = dataclasses.replace(profile, load_processes=positive_int(args.load_processes))
    checked: set[str] = set()
    for v in variants:  # validate every model and request before anything starts
        m = exp.model_for(v, args.model)
        v.check_profile(profile)
        v.check_model(m, args.runtime)
        if m.is_file and m.name not in checked:
            assets.check_model_file(m)
            checked.add(m.name)
    check_writable(Path(args.results))
    get_launcher(args.runtime).prepare(variants, print)
    plan = Plan(experiments=exp, variants=variants, profile=profile,
                model_override=args.model, runtime=args.runtime, results=Path(args.results),
                run_id=args.run_id)
    outcome = run_study(plan)
    summary = build.build(outcome.run_dir)
    print("\n".join(markdown.lines(tables.memory_table(summary["variants"]))))
    if any("cgroup_memory_mb" in r for r in summary["variants"]):
        print("\ncontainer cgroup memory (as `docker stats` shows it):")
        print("\n".join(markdown.lines(tables.cgroup_table(summary["variants"]))))
    print("\n".join(markdown.verdict_lines(summary)))
    print(f"\nresults: {outcome.run_dir}/report.html, summary.md (plots: memory_overlay.png, "
          f"<variant>/memory.png)")
    if summary.get("html_error"):
        print(f"report.html not written: {summary['html_error']}")
    markdown.print_faults(summary)
    found = markdown.wire_lines(summary["variants"])
    if found:
        print("\nthe wire (packet captures) says:")
        print("\n".join(found))
    if outcome.status == "interrupted":
        print(f"interrupted in {summary['run'].get('stopped_in')}: what was measured is kept; "
              f"`make report RUN={outcome.run_dir.name}` rebuilds this report")
        return interrupt_code()
    not_complete = {n: s for n, s in outcome.results.items() if s != "complete"}
    if not_complete:
        print(f"run {outcome.status}: " + ", ".join(f"{n} {s}" for n, s in not_complete.items())
              + " (see summary.md, phases.json events and <variant>/server.log)")
        return EXIT_PARTIAL if outcome.status == "partial" else EXIT_FAILED
    return 0
