"""Thresholds a run must meet, for CI: `python -m infbench check RUN --thresholds FILE`.

A thresholds file (or the `[thresholds]` table of experiments.toml) holds rules, each a string
`<metric> <op> <value>` or a table with the rule and where it applies:

    rules = [
      "growth_mb < 200",
      "failures == 0",
      'verdict != "leak*"',                                  # strings: == / != with * globs
      { rule = "p95_ms < 2000", variants = ["starlette-uvicorn"], steps = [1] },
      { rule = "efficiency > 0.8", optional = true },       # no data: SKIP instead of FAIL
    ]

A rule applies to every variant of the run unless it names `variants`; a per-step metric
(req/s, latencies) must hold at every step (or the `steps` named). A figure that is missing is
"no data", which fails unless the rule is `optional`. Exit codes: 0 every rule passed, 4 some
rule failed (EXIT_FAILED_THRESHOLD), 1 an error (a bad file, a run that cannot be read).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infbench.results import readers, store

EXIT_FAILED_THRESHOLD = 4

VARIANT_METRICS = {  # name -> (where in summary.json, description)
    "start_mb": (("memory_mb", "start"), "memory after API start (MB)"),
    "end_mb": (("memory_mb", "end"), "memory after the test (MB)"),
    "growth_mb": (("memory_mb", "growth"), "after test - after API start (MB)"),
    "peak_mb": (("memory_mb", "peak"), "largest memory sample (MB)"),
    "after_cooldown_mb": (("memory_mb", "after_cooldown"), "memory after cooldown (MB)"),
    "retained_mb": (("memory_mb", "retained"), "after cooldown - after API start (MB)"),
    "pss_growth_mb": (("processes_mb", "pss", "growth"), "PSS growth, all processes (MB)"),
    "requests": (("totals", "requests"), "requests completed"),
    "failures": (("totals", "failures"), "failed requests"),
    "cut_off": (("totals", "cut_off"), "requests cut off by the drain timeout"),
    "faults": (("faults",), "fault events (restarts, dead replicas, ...)"),
    "status": (("status",), "variant status: complete, degraded, failed, interrupted"),
    "verdict": (("verdict", "verdict"),
                "leak / allocator retention / plateau / inconclusive / no verdict"),
    "growth_per_cycle_mb": (("verdict", "growth_per_cycle_mb"), "growth per cycle (MB)"),
}
STEP_METRICS = {
    "rps": "requests/s", "images_per_s": "images/s", "p50_ms": "median latency (ms)",
    "p95_ms": "95th percentile latency (ms)", "p99_ms": "99th percentile latency (ms)",
    "step_failures": "failed requests in the step",
    "efficiency": "served / decode+model alone at the step's batch (when the model alone ran)",
    "limit_fraction": "served / the machine's limit for the step (when the model alone ran)",
}
# Where a per-step metric sits in a step of summary.json, when not under its own name.
STEP_PATHS = {"step_failures": ("failures",), "efficiency": ("efficiency", "efficiency"),
              "limit_fraction": ("limit", "fraction")}
OPS = ("<=", ">=", "==", "!=", "<", ">")
RULE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|!=|<|>)\s*(.+?)\s*$")
RULE_KEYS = {"rule", "variants", "steps", "optional"}


class ThresholdError(Exception):
    """A thresholds file that cannot be used; one line naming it."""


@dataclass(frozen=True)
class Rule:
    text: str
    metric: str
    op: str
    value: float | str
    variants: tuple[str, ...] | None = None
    steps: tuple[int, ...] | None = None
    optional: bool = False


@dataclass(frozen=True)
class Outcome:
    rule: Rule
    variant: str
    result: str  # PASS | FAIL | SKIP
    detail: str


def parse_rule(text: str, where: str) -> tuple[str, str, float | str]:
    m = RULE.match(text)
    if not m:
        raise ThresholdError(f"{where}: {text!r} is not '<metric> <op> <value>' (ops: "
                             f"{' '.join(OPS)})")
    metric, op, raw = m.groups()
    if metric not in VARIANT_METRICS and metric not in STEP_METRICS:
        known = ", ".join([*VARIANT_METRICS, *STEP_METRICS])
        raise ThresholdError(f"{where}: unknown metric {metric!r} (known: {known})")
    value: float | str
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "\"'":
        value = raw[1:-1]
        if op not in ("==", "!="):
            raise ThresholdError(f"{where}: {text!r}: a text value takes == or != only")
    else:
        try:
            value = float(raw.replace("_", ""))
        except ValueError:
            raise ThresholdError(f"{where}: {text!r}: the value {raw!r} is neither a number "
                                 "nor a quoted text") from None
    return metric, op, value


def _rule(entry: Any, where: str) -> Rule:
    if isinstance(entry, str):
        return Rule(entry.strip(), *parse_rule(entry, where))
    if not isinstance(entry, dict):
        raise ThresholdError(f"{where}: a rule is a string or a table, not {entry!r}")
    unknown = sorted(set(entry) - RULE_KEYS)
    if unknown:
        raise ThresholdError(f"{where}: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(sorted(RULE_KEYS))})")
    text = entry.get("rule")
    if not isinstance(text, str):
        raise ThresholdError(f"{where}: needs rule = \"<metric> <op> <value>\"")
    variants, steps = entry.get("variants"), entry.get("steps")
    if variants is not None and not (isinstance(variants, list)
                                     and all(isinstance(v, str) for v in variants)):
        raise ThresholdError(f"{where}.variants: a list of variant names")
    if steps is not None and not (isinstance(steps, list) and all(
            isinstance(s, int) and not isinstance(s, bool) for s in steps)):
        raise ThresholdError(f"{where}.steps: a list of step numbers")
    optional = entry.get("optional", False)
    if not isinstance(optional, bool):
        raise ThresholdError(f"{where}.optional: true or false")
    metric, op, value = parse_rule(text, where)
    if steps is not None and metric not in STEP_METRICS:
        raise ThresholdError(f"{where}: steps = [...] applies to per-step metrics only "
                             f"({', '.join(STEP_METRICS)})")
    return Rule(text.strip(), metric, op, value,
                tuple(variants) if variants is not None else None,
                tuple(steps) if steps is not None else None, optional)


def parse(table: dict[str, Any], where: str) -> list[Rule]:
    """The rules of a thresholds table ({"rules": [...]})."""
    unknown = sorted(set(table) - {"rules"})
    if unknown:
        raise ThresholdError(f"{where}: unknown key {unknown[0]!r} (known: rules)")
    rules = table.get("rules")
    if not isinstance(rules, list) or not rules:
        raise ThresholdError(f"{where}: needs rules = [\"growth_mb < 200\", ...]")
    return [_rule(entry, f"{where}: rules[{n}]") for n, entry in enumerate(rules)]


def load(path: Path, table_required: bool = False) -> list[Rule]:
    """A thresholds file: `rules = [...]` at the top, or in a `[thresholds]` table (so
    experiments.toml can hold them; `table_required` for that file)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ThresholdError(f"{path}: no such file") from None
    except OSError as e:
        raise ThresholdError(f"{path}: cannot read: {e.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ThresholdError(f"{path}: not valid TOML: {e}") from None
    if "thresholds" in raw:
        if not isinstance(raw["thresholds"], dict):
            raise ThresholdError(f"{path}: thresholds must be a table")
        return parse(raw["thresholds"], f"{path}: thresholds")
    if table_required:
        raise ThresholdError(f"{path}: no [thresholds] table: give a thresholds file "
                             "(--thresholds FILE, THRESHOLDS=FILE for make)")
    return parse(raw, str(path))


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    if isinstance(data, dict) and "value" in data:  # a figure with its context
        data = data["value"]
    return data


def _holds(op: str, have: Any, want: float | str) -> bool:
    if isinstance(want, str):
        match = fnmatch.fnmatchcase(str(have), want)
        return match if op == "==" else not match
    x = float(have)
    return {"<": x < want, "<=": x <= want, ">": x > want, ">=": x >= want,
            "==": x == want, "!=": x != want}[op]


def _show(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:,.2f}".rstrip("0").rstrip(".")
    return f"{x:,}" if isinstance(x, int) and not isinstance(x, bool) else str(x)


def _usable(x: Any, want: float | str) -> bool:
    if isinstance(want, str):
        return x is not None
    return isinstance(x, int | float) and not isinstance(x, bool)


def evaluate(rule: Rule, summary: dict[str, Any]) -> Outcome:
    """One rule on one variant's summary."""
    name = summary["variant"]
    no_data = Outcome(rule, name, "SKIP" if rule.optional else "FAIL",
                      "no data" + (" (optional rule)" if rule.optional else ""))
    if rule.metric in VARIANT_METRICS:
        have = _dig(summary, VARIANT_METRICS[rule.metric][0])
        if not _usable(have, rule.value):
            return no_data
        ok = _holds(rule.op, have, rule.value)
        return Outcome(rule, name, "PASS" if ok else "FAIL", f"{rule.metric} = {_show(have)}")
    steps = [s for s in summary.get("steps", [])
             if rule.steps is None or s.get("index") in rule.steps]
    path = STEP_PATHS.get(rule.metric, (rule.metric,))
    seen = [(s, _dig(s, path)) for s in steps if _usable(_dig(s, path), rule.value)]
    if not seen:
        return no_data
    bad = [(s, v) for s, v in seen if not _holds(rule.op, v, rule.value)]
    missing = len(steps) - len(seen)
    prefix = ""
    if bad:
        shown = bad
    elif rule.op in ("<", "<=", ">", ">=") and len(seen) > 1:
        # Passed: the step closest to the limit says how much room there is.
        pick = max if rule.op in ("<", "<=") else min
        shown, prefix = [pick(seen, key=lambda sv: float(sv[1]))], "closest: "
    else:
        shown = seen[:1]
        prefix = f"all {len(seen)} steps, e.g. " if len(seen) > 1 else ""
    detail = prefix + ", ".join(f"step {s['index']} ({s.get('batch')} img/req): {_show(v)}"
                                for s, v in shown)
    if missing:
        detail += f"; {missing} step(s) without data"
    failed = bool(bad) or (missing > 0 and not rule.optional)
    return Outcome(rule, name, "FAIL" if failed else "PASS", f"{rule.metric} {detail}")


def check(run_dir: Path, rules: list[Rule]) -> list[Outcome]:
    """Every rule on every variant it applies to; a named variant missing from the run is
    "no data"."""
    info = readers.run_json(run_dir)
    summaries = {}
    for vd in store.variant_dirs(run_dir, info):
        if not (vd / "summary.json").exists():
            raise readers.ReadError(f"{vd / 'summary.json'}: no such file (make report "
                                    f"RUN={run_dir.name} writes it)")
        s = readers.summary_json(vd)
        summaries[s["variant"]] = s
    out = []
    for rule in rules:
        for name in rule.variants if rule.variants is not None else list(summaries):
            if name in summaries:
                out.append(evaluate(rule, summaries[name]))
            else:
                out.append(Outcome(rule, name, "SKIP" if rule.optional else "FAIL",
                                   "no data: no such variant in this run"))
    return out


def lines(outcomes: list[Outcome]) -> list[str]:
    width = max((len(o.variant) for o in outcomes), default=0)
    out = [f"{o.result:4s}  {o.variant:{width}s}  {o.rule.text}: {o.detail}" for o in outcomes]
    failed = sum(o.result == "FAIL" for o in outcomes)
    skipped = sum(o.result == "SKIP" for o in outcomes)
    out.append(f"thresholds: {len(outcomes)} checks, {failed} FAIL, {skipped} SKIP "
               f"-> {'exit 4' if failed else 'ok'}")
    return out
