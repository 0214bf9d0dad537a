"""Capacity under a latency bound: the highest open-loop rate a variant serves with p95 <= N ms.

    python -m infbench capacity <variant> --p95-ms N      (make capacity_<variant> P95_MS=N)

Each probe is a rate, open loop (requests sent on schedule, latency from the intended send
time), until the step is stable. The search (when a probe passes, the next rate, the answer)
is infbench/analysis/capacity.py; `runner` plugs it into the run loop
(infbench/modes/sweep.py) as a VariantRun whose load is the probes, so a capacity run is a run
folder like any other (phases, Locust files, report), plus `<variant>/capacity.json` and
`<variant>/capacity.png` (infbench/report/plots.py).
"""

from __future__ import annotations

import dataclasses
import math

from infbench.analysis import summary, trust
from infbench.analysis.capacity import (
    RateProbe,
    Search,
    document,
    next_rate,
    probe_from_step,
    probe_passes,
    probe_window,
)
from infbench.config import Step
from infbench.modes.sweep import VariantRun
from infbench.report import plots
from infbench.results import files


def runner(search: Search) -> type[VariantRun]:
    """A VariantRun whose load is the probe search (for run.run_study)."""

    class CapacityRun(VariantRun):
        def _load(self) -> None:
            p = base = self.profile
            batch = p.steps[0].batch
            probes: list[RateProbe] = []
            i = 0
            while (rate := next_rate(probes, search)) is not None:
                i += 1
                rate = float(f"{rate:.4g}")
                window, seconds = probe_window(
                    rate, base.window_of(Step(batch=batch, seconds=search.probe_seconds)),
                    base.stable_windows, search)
                self.profile = dataclasses.replace(base, stable_window_s=window)
                spec = Step(batch=batch, seconds=seconds, rate=rate, until_stable=True)
                self._step(i, search.max_probes, spec, 1)
                self.profile = base
                probes.append(self._probe(i, rate))
                ok, why = probe_passes(probes[-1], search)
                pr = probes[-1]
                self.progress.say(
                    f"  probe {i}: {rate:g} req/s offered -> {_f(pr.rps)} served, p95 "
                    f"{_f(pr.p95_ms)} ms: {'pass' if ok else 'fail'}"
                    + ("" if ok else f" ({why})"))
                files.write_json(self.out / "capacity.json", document(probes, search))
                if p.pause:
                    self._hold("pause", p.pause, f"pause {i}", index=i, batch=batch)
            files.write_json(self.out / "capacity.json", document(probes, search))
            plots.capacity_plot(probes, search, self.out / "capacity.png",
                 f"{self.v.name}: latency vs throughput, {batch} image(s)/request, open loop")

        def _probe(self, i: int, rate: float) -> RateProbe:
            plist = self.log.data["phases"]
            steps = [st for st in summary.step_figures(self.out, [], plist)
                     if st["index"] == i]
            if not steps:
                return RateProbe(rate=rate, rps=None, p50_ms=None, p95_ms=None, index=i)
            trust.annotate(self.out, steps, plist, [])
            return probe_from_step(steps[0], rate)

    return CapacityRun


def _f(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:,.2f}" if x < 100 else f"{x:,.0f}"
