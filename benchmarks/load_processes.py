"""The generator's ceiling with 1 and with N Locust processes (`load_processes`), ABBA.

    flock /tmp/infbench-heavy.lock python -m benchmarks.load_processes [--processes 2]
        [--users 64] [--seconds 8] [--rounds 2]

The fastest server we have (benchmarks/delay_server.py with no delay: asyncio, one process)
under a closed loop of `--users` users that never wait, the same step with one Locust
process and with `--processes` (Locust's master and its workers: infbench/measure/
distributed.py), in the order A B B A (`--rounds` times). Nothing is pinned: the question is
what the run itself gets from more generator processes on this machine, where the server and
every Locust process share the cores. Printed per round and as the median ratio B / A:
requests/s, p50, Locust's CPU (every process, % of one core), the busiest process's demand
(CPU + run-queue wait) and whether a process was flagged limited, the server's CPU. On a
2-core machine a second generator process mostly takes the server's core: the ratio says
how much of the generator's limit it removes, and the server's CPU says when the server is
the limit instead. Results: printed, and results/bench/load-processes-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.loadgen_bench import JSON_REQUEST, delay_server
from infbench.analysis import crosscheck, loadgen
from infbench.config import Profile, Step
from infbench.launch import proc
from infbench.measure import assets, load
from infbench.paths import ROOT


def one_round(host: str, processes: int, users: int, seconds: float, out: Path, n: int,
              server: psutil.Process) -> dict[str, Any]:
    step = Step(batch=1, seconds=seconds)
    profile = Profile(name="load-processes", steps=(step,), users=users,
                      spawn_rate=float(users), wait=(0.0, 0.0), drain_timeout=10,
                      request_timeout=30, load_processes=processes)
    t = server.cpu_times()
    srv0 = t.user + t.system
    out.mkdir(parents=True, exist_ok=True)
    run = load.start_step(profile, step, n, host, out, assets.images_dir(), JSON_REQUEST)
    try:
        run.group.popen.wait(timeout=seconds + 120)
    finally:
        code = run.stop(grace=2.0)
    problems = run.finish()
    t = server.cpu_times()
    c = run.counts()
    prefix = out / load.step_name(n, step)
    figs = crosscheck.step_figures(prefix, c)
    t0, t1 = c.get("test_start"), c.get("test_stopping")
    gen = loadgen.figures(Path(f"{prefix}_loadgen.csv"), t0, t1) or {}
    span = (t1 - t0) if t0 and t1 else None
    return {"processes": processes, **figs, "exit_code": code, "problems": problems,
            "locust_cpu_pct": gen.get("total_cpu_pct"),
            "busiest_demand_pct": gen.get("peak_demand_pct"),
            "processes_limited": gen.get("processes_limited"),
            "server_cpu_pct": round(100 * (t.user + t.system - srv0) / span, 1) if span
            else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--rounds", type=int, default=1, help="ABBA blocks")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = ap.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"load-processes-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    order = [1, args.processes, args.processes, 1] * args.rounds
    try:
        with delay_server(0, None, work / "server.log") as (port, sp):
            host = f"http://127.0.0.1:{port}"
            for n, k in enumerate(order, start=1):
                rows.append(one_round(host, k, args.users, args.seconds, work / f"r{n}", n,
                                      sp))
                print({x: rows[-1].get(x) for x in (
                    "processes", "rps", "p50_ms", "locust_cpu_pct", "busiest_demand_pct",
                    "processes_limited", "server_cpu_pct", "exit_code", "problems")},
                      flush=True)
    finally:
        proc.stop_all()
    print(f"\nnull server (delay_server, 0 ms), {args.users} users without waiting, "
          f"{args.seconds:g} s a round, order {' '.join(map(str, order))} processes")
    keys = ("rps", "p50_ms", "locust_cpu_pct", "busiest_demand_pct", "server_cpu_pct")
    print(f"{'processes':>9} " + " ".join(f"{k:>19}" for k in keys) + "  limited")
    for r in rows:
        print(f"{r['processes']:>9} " + " ".join(f"{_f(r.get(k)):>19}" for k in keys)
              + f"  {r.get('processes_limited')}")
    ratios: dict[str, float | None] = {}
    for k in keys:
        a = [r[k] for r in rows if r["processes"] == 1 and r.get(k)]
        b = [r[k] for r in rows if r["processes"] == args.processes and r.get(k)]
        ratios[k] = round(statistics.median(b) / statistics.median(a), 3) if a and b else None
    print(f"median ratio {args.processes} processes / 1: " +
          ", ".join(f"{k} {_f(v, 3)}" for k, v in ratios.items()))
    out = args.out / f"load-processes-{stamp}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows, "ratios": ratios}, indent=2))
    print(f"written {out}")
    return 0


def _f(x: Any, nd: int = 1) -> str:
    return "-" if x is None else f"{x:,.{nd}f}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    sys.exit(main())
