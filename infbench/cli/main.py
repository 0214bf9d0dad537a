"""Command line: `python -m infbench list|build|run|diagnose|capacity|profile|report|compare|check`.
The makefile calls these.

Every option also has an environment variable (INFBENCH_PROFILE, INFBENCH_MODEL, ...), so
`make run PROFILE=quick` and `INFBENCH_PROFILE=quick python -m infbench run` agree.
Exit codes: 0 complete, 1 an error (config, a failed run, a file that could not be written,
two runs that cannot be compared, a bad thresholds file), 2 usage, 3 partial (a variant failed
or ran with faults: a restart, a load-generator failure, a step whose requests all failed),
4 a threshold failed (`check`), 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from infbench import config
from infbench.analysis import verdict
from infbench.config import Step
from infbench.launch import LaunchError, get_launcher, proc
from infbench.measure import assets
from infbench.modes.sweep import Plan, run_study
from infbench.paths import ROOT
from infbench.report import build, compare, html, markdown, tables, thresholds
from infbench.results import files, readers, schemas, store
from infbench.results.files import WriteError, check_writable

EXIT_FAILED = 1
EXIT_PARTIAL = 3
_signal_seen: list[int] = []


def _env(name: str, default: str = "") -> str:
    return os.environ.get(f"INFBENCH_{name}", default)


def results_default() -> str:
    """Where runs go unless --results says: INFBENCH_RESULTS, else results/ in the checkout."""
    return _env("RESULTS", str(ROOT / "results"))


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # One shutdown path: SIGTERM and SIGHUP (a closed terminal) go the same way as Ctrl-C.
    _signal_seen.append(signum)
    raise KeyboardInterrupt


def _interrupt_code() -> int:
    if not _signal_seen:
        return 130
    return 128 + _signal_seen[0]


def install_signals() -> None:
    """SIGINT back to Python's default (a run started in the background from a script inherits
    it ignored), SIGTERM and SIGHUP through the same path, SIGXFSZ ignored so that a file-size
    limit is an OSError on the write (one line) rather than a silent kill."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infbench", description=__doc__.splitlines()[0])
    p.add_argument("--experiments", default=_env("EXPERIMENTS", str(ROOT / "experiments.toml")),
                   help="experiments file (env INFBENCH_EXPERIMENTS)")
    p.add_argument("--results", default=results_default(),
                   help="results folder (env INFBENCH_RESULTS)")
    sub = p.add_subparsers(dest="cmd", required=True)

    sub.add_parser("list", help="list variants, profiles and models")

    def selection(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("variants", nargs="*", help="variant names (default: the study's)")
        sp.add_argument("--all", action="store_true", help="every variant in the file")
        sp.add_argument("--study", default=_env("STUDY"),
                        help="a named study of experiments.toml: its variants and profile "
                             "(env INFBENCH_STUDY)")
        sp.add_argument("--model", default=_env("MODEL"), help="model preset (env INFBENCH_MODEL)")
        sp.add_argument("--runtime", default=_env("RUNTIME", "native"),
                        help="native or docker (env INFBENCH_RUNTIME)")

    b = sub.add_parser("build", help="build the model(s) and sample images a run needs")
    selection(b)
    r = sub.add_parser("run", help="run variants under a profile and write the report")
    selection(r)
    r.add_argument("--profile", default=_env("PROFILE"), help="profile (env INFBENCH_PROFILE)")
    r.add_argument("--run-id", default=_env("RUN_ID"), help="name of the run folder")
    r.add_argument("--probes", action="store_true",
                   default=_env("PROBES").lower() in ("1", "true", "yes"),
                   help="start the server-side memory probes in every variant (as probes = "
                        "true would; env INFBENCH_PROBES=1)")
    cap = sub.add_parser("capacity", help="the highest open-loop rate a variant serves with "
                         "p95 under a bound (bisection on rate, each probe until stable)")
    cap.add_argument("variants", nargs=1, metavar="variant")
    cap.add_argument("--p95-ms", type=float, required=True, help="the latency bound (ms)")
    cap.add_argument("--profile", default=_env("PROFILE") or "capacity",
                     help="settings of the probes: batch (its first step), arrival, windows, "
                          "the first rate (its `rate`) (default: capacity)")
    cap.add_argument("--batch", type=int, default=0, help="images per request (default: the "
                     "profile's first step)")
    cap.add_argument("--start-rate", type=float, default=0.0,
                     help="req/s of the first probe (default: the profile's rate, else 1)")
    cap.add_argument("--tolerance", type=float, default=0.05,
                     help="stop when the lowest failing rate is within this of the highest "
                          "pass (default 0.05)")
    cap.add_argument("--max-probes", type=int, default=10)
    cap.add_argument("--probe-seconds", type=float, default=0.0,
                     help="the most a probe runs (default: the profile's first step seconds)")
    cap.add_argument("--model", default=_env("MODEL"), help="model preset (env INFBENCH_MODEL)")
    cap.add_argument("--runtime", default=_env("RUNTIME", "native"))
    cap.add_argument("--run-id", default=_env("RUN_ID"))
    cap.add_argument("--probes", action="store_true",
                     default=_env("PROBES").lower() in ("1", "true", "yes"))
    prof = sub.add_parser("profile", help="where one request's time goes: the entry service "
                          "profiled per request (pyinstrument, yappi) against its timing lines")
    prof.add_argument("variants", nargs="+", metavar="variant",
                      help="one or more variants (two or more: side by side)")
    # A string default goes through type=int when the profile command is parsed: a bad
    # INFBENCH_REQUESTS is argparse's one-line error there, and no other command reads it.
    prof.add_argument("--requests", type=int, default=_env("REQUESTS") or "20",
                      help="measured sequential requests per pass (default 20; env "
                           "INFBENCH_REQUESTS)")
    prof.add_argument("--warmup", type=int, default=3, help="warm-up requests per pass")
    prof.add_argument("--profile", default=_env("PROFILE") or "scoring-latency",
                      help="profile whose request timeout and sampling settings apply "
                           "(default: scoring-latency)")
    prof.add_argument("--model", default=_env("MODEL"), help="model preset (env INFBENCH_MODEL)")
    prof.add_argument("--runtime", default=_env("RUNTIME", "native"))
    prof.add_argument("--run-id", default=_env("RUN_ID"))
    r.add_argument("--model-alone", action="store_true",
                   default=_env("MODEL_ALONE").lower() in ("1", "true", "yes"),
                   help="measure the model alone (no HTTP) before each variant's load, for "
                        "serving efficiency (as model_alone = true in the profile would; env "
                        "INFBENCH_MODEL_ALONE=1)")
    d = sub.add_parser("diagnose", help="leak or allocator retention? run each variant under "
                       "glibc and with jemalloc preloaded, on a cycled profile, and compare")
    selection(d)
    d.add_argument("--profile", default=_env("PROFILE"), help="a cycled profile (env "
                   "INFBENCH_PROFILE; default: the study's if cycled, else `cycles`)")
    d.add_argument("--run-id", default=_env("RUN_ID"), help="name of the run folder")
    d.add_argument("--probes", action="store_true",
                   default=_env("PROBES").lower() in ("1", "true", "yes"),
                   help="the server-side memory probes too (env INFBENCH_PROBES=1)")
    rep = sub.add_parser("report", help="rebuild plots and tables of a (finished or "
                         "interrupted) run from its files")
    rep.add_argument("run", nargs="?", default=_env("RUN", "latest"),
                     help="run id, 'latest' or a path")
    cmp = sub.add_parser("compare", help="compare run B with run A: per variant and step, the "
                         "change in req/s, latency and memory, and whether it is significant")
    cmp.add_argument("a", help="run A (the base): run id, 'latest' or a path")
    cmp.add_argument("b", help="run B (the new one): run id, 'latest' or a path")
    cmp.add_argument("--force", action="store_true",
                     help="compare runs whose fingerprints (profile, models, machine) differ")
    cmp.add_argument("--out", default="",
                     help="folder for compare-<A>-vs-<B>.json/.md (default: B's run folder)")
    chk = sub.add_parser("check", help="check a run against thresholds (exit 4 if one fails)")
    chk.add_argument("run", nargs="?", default=_env("RUN", "latest"),
                     help="run id, 'latest' or a path")
    chk.add_argument("--thresholds", default=_env("THRESHOLDS"),
                     help="thresholds file (default: the [thresholds] table of the "
                          "experiments file; env INFBENCH_THRESHOLDS)")
    return p


def _select(exp: config.Experiments, args: argparse.Namespace) -> list[config.Variant]:
    if args.all:
        return list(exp.variants.values())
    if args.study and not args.variants:
        return [exp.variant(n) for n in exp.study(args.study).variants]
    names = args.variants or list(exp.study_variants)
    return [exp.variant(n) for n in names]


def cmd_list(exp: config.Experiments) -> int:
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


def cmd_build(exp: config.Experiments, args: argparse.Namespace) -> int:
    variants = _select(exp, args)
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


def cmd_run(exp: config.Experiments, args: argparse.Namespace) -> int:
    variants = _select(exp, args)
    if args.probes:
        variants = [v.with_probes() for v in variants]
    default = exp.study(args.study).profile if args.study else exp.study_profile
    profile = exp.profile(args.profile or default)
    if args.model_alone:
        profile = dataclasses.replace(profile, model_alone=True)
    checked: set[str] = set()
    for v in variants:  # validate every model and request before anything starts
        m = exp.model_for(v, args.model)
        v.check_profile(profile)
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
    if outcome.status == "interrupted":
        print(f"interrupted in {summary['run'].get('stopped_in')}: what was measured is kept; "
              f"`make report RUN={outcome.run_dir.name}` rebuilds this report")
        return _interrupt_code()
    not_complete = {n: s for n, s in outcome.results.items() if s != "complete"}
    if not_complete:
        print(f"run {outcome.status}: " + ", ".join(f"{n} {s}" for n, s in not_complete.items())
              + " (see summary.md, phases.json events and <variant>/server.log)")
        return EXIT_PARTIAL if outcome.status == "partial" else EXIT_FAILED
    return 0


def cmd_capacity(exp: config.Experiments, args: argparse.Namespace) -> int:
    """One variant, probed open-loop for its capacity under a p95 bound
    (infbench/modes/capacity.py)."""
    from infbench.modes import capacity

    v = exp.variant(args.variants[0])
    if args.probes:
        v = v.with_probes()
    base = exp.profile(args.profile)
    for name, value in (("--p95-ms", args.p95_ms), ("--tolerance", args.tolerance),
                        ("--max-probes", args.max_probes)):
        if not value > 0:
            raise config.ConfigError(f"capacity {name}: must be > 0, got {value!r}")
    first = base.steps[0]
    batch = args.batch or first.batch
    search = capacity.Search(
        p95_ms=args.p95_ms, start=args.start_rate or base.rate or 1.0,
        tolerance=args.tolerance, max_probes=args.max_probes,
        probe_seconds=args.probe_seconds or first.seconds)
    profile = dataclasses.replace(base, steps=(Step(batch=batch, seconds=search.probe_seconds,
                                                    rate=search.start, until_stable=True),),
                                  cycles=1)
    m = exp.model_for(v, args.model)
    v.check_profile(profile)
    if m.is_file:
        assets.check_model_file(m)
    check_writable(Path(args.results))
    get_launcher(args.runtime).prepare([v], print)
    plan = Plan(experiments=exp, variants=[v], profile=profile, model_override=args.model,
                runtime=args.runtime, results=Path(args.results), run_id=args.run_id)
    outcome = run_study(plan, variant_run=capacity.runner(search))
    build.build(outcome.run_dir)
    doc = outcome.run_dir / v.name / "capacity.json"
    try:
        a = json.loads(doc.read_text())["answer"]
    except (OSError, ValueError, KeyError):
        a = None
    if a and a.get("found"):
        print(f"capacity of {v.name} at p95 <= {args.p95_ms:g} ms, {batch} image(s) a "
              f"request: {a['rate']:g} req/s ({a['images_per_s']:,.1f} images/s), served "
              f"{a['rps']:.2f} req/s at p95 {a['p95_ms']:,.0f} ms; the next rate up failed: "
              f"{a.get('bounded_by')}" + ("" if a.get("converged") else " (not converged)"))
    elif a:
        print(f"no rate of {v.name} met p95 <= {args.p95_ms:g} ms ({a.get('bounded_by')})")
    print(f"results: {outcome.run_dir / v.name}/capacity.json, capacity.png")
    markdown.print_faults(build.build(outcome.run_dir))
    if outcome.status == "interrupted":
        return _interrupt_code()
    return 0 if outcome.status == "complete" else EXIT_PARTIAL


def cmd_profile(exp: config.Experiments, args: argparse.Namespace) -> int:
    """Each variant's entry service profiled request by request
    (infbench/modes/request_profile.py)."""
    from infbench.modes import request_profile

    variants = [exp.variant(n) for n in args.variants]
    if args.requests < 1 or args.warmup < 0:
        raise config.ConfigError(f"profile: --requests must be >= 1 and --warmup >= 0, got "
                                 f"{args.requests} and {args.warmup}")
    base = exp.profile(args.profile)
    profile = dataclasses.replace(base, name="profile", cycles=1, model_alone=False)
    settings = request_profile.Settings(requests=args.requests, warmup=args.warmup,
                                  timeout=base.request_timeout)
    for v in variants:
        m = exp.model_for(v, args.model)
        if m.is_file:
            assets.check_model_file(m)
    check_writable(Path(args.results))
    get_launcher(args.runtime).prepare(variants, print)
    plan = Plan(experiments=exp, variants=variants, profile=profile, model_override=args.model,
                runtime=args.runtime, results=Path(args.results), run_id=args.run_id)
    outcome = run_study(plan, variant_run=request_profile.runner(settings))
    request_profile.report(outcome.run_dir, [v.name for v in variants], print)
    print(f"\nresults: {outcome.run_dir}/<variant>/profile/ (profile.md, profile.json, "
          f"<pass>/server/*, <pass>/client.*)")
    if outcome.status == "interrupted":
        return _interrupt_code()
    return 0 if outcome.status == "complete" else EXIT_PARTIAL


def under(v: config.Variant, allocator: str) -> config.Variant:
    """The variant with `allocator` preloaded in every service but Redis, under its own name."""
    return dataclasses.replace(v, name=f"{v.name}-{allocator}", services=tuple(
        dataclasses.replace(s, allocator=allocator) if s.server != "redis" else s
        for s in v.services))


def cmd_diagnose(exp: config.Experiments, args: argparse.Namespace) -> int:
    """The differential hypothesis: growth that vanishes under jemalloc is glibc's retention,
    growth that stays is a leak (infbench/analysis/verdict.py: differential)."""
    variants = _select(exp, args)
    if args.probes:
        variants = [v.with_probes() for v in variants]
    default = exp.study(args.study).profile if args.study else exp.study_profile
    name = args.profile or (default if exp.profile(default).cycles >= schemas.MIN_CYCLES
                            else "cycles")
    profile = exp.profile(name)
    if profile.cycles < schemas.MIN_CYCLES:
        raise config.ConfigError(f"diagnose needs a profile of at least {schemas.MIN_CYCLES} "
                                 f"cycles; {name!r} has {profile.cycles}")
    for v in variants:
        v.check_profile(profile)
    paired = [x for v in variants for x in (v, under(v, "jemalloc"))]
    check_writable(Path(args.results))
    get_launcher(args.runtime).prepare(paired, print)
    outcome = run_study(Plan(experiments=exp, variants=paired, profile=profile,
                             model_override=args.model, runtime=args.runtime,
                             results=Path(args.results), run_id=args.run_id))
    summary = build.build(outcome.run_dir)
    print("\n".join(markdown.verdict_lines(summary)))
    found = {r["variant"]: r.get("verdict") or {} for r in summary["variants"]}
    print("\nunder glibc, then with jemalloc preloaded:")
    for v in variants:
        d = verdict.differential(found.get(v.name, {}), found.get(f"{v.name}-jemalloc", {}))
        print(f"  {v.name}: {d['hypothesis']} — {d['reason']}")
    print(f"\nresults: {outcome.run_dir}/summary.md")
    if outcome.status == "interrupted":
        return _interrupt_code()
    return 0 if outcome.status == "complete" else EXIT_PARTIAL


def cmd_report(args: argparse.Namespace) -> int:
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


def cmd_compare(args: argparse.Namespace) -> int:
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


def cmd_check(args: argparse.Namespace) -> int:
    run_dir = store.resolve_run(Path(args.results), args.run)
    source = Path(args.thresholds or args.experiments)
    rules = thresholds.load(source, table_required=not args.thresholds)
    outcomes = thresholds.check(run_dir, rules)
    print(f"run {run_dir.name}: {len(rules)} rule(s) from {source}")
    print("\n".join(thresholds.lines(outcomes)))
    failed = any(o.result == "FAIL" for o in outcomes)
    return thresholds.EXIT_FAILED_THRESHOLD if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    install_signals()
    try:
        if args.cmd == "report":
            return cmd_report(args)
        if args.cmd == "compare":
            return cmd_compare(args)
        if args.cmd == "check":
            return cmd_check(args)
        exp = config.load(args.experiments)
        if args.cmd == "list":
            return cmd_list(exp)
        if args.cmd == "build":
            return cmd_build(exp, args)
        if args.cmd == "capacity":
            return cmd_capacity(exp, args)
        if args.cmd == "diagnose":
            return cmd_diagnose(exp, args)
        if args.cmd == "profile":
            return cmd_profile(exp, args)
        return cmd_run(exp, args)
    except (config.ConfigError, store.ReportError, assets.AssetError, LaunchError,
            WriteError, compare.CompareError, thresholds.ThresholdError,
            readers.ReadError) as e:
        print(f"infbench: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("infbench: interrupted", file=sys.stderr)
        return _interrupt_code()
    finally:
        proc.stop_all()
        proc.WATCHDOG.close()


if __name__ == "__main__":
    sys.exit(main())
