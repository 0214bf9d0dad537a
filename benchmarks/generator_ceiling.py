"""How many requests a second can our Locust send at all? Its ceiling on a null endpoint.

    flock /work/bench.lock python -m benchmarks.generator_ceiling [--seconds 10] [--batch 1]
        [--users 20] [--rates 100,200,400,800,1600]

A null server (tests/fixtures/sleep_app.py with no sleep: it reads the body and answers) is
pinned to
one core and Locust to the other, so the two do not fight for a CPU and the figure is the
generator's own. Then:

  closed loop   `--users` users without waiting (ImageClient, one keep-alive connection each,
                on geventhttpclient): requests/s, and requests/s per core of Locust CPU
  open loop     each rate of `--rates` (OpenLoopClient, geventhttpclient): the rate sent, the
                send lag, Locust's CPU; the ceiling is the highest rate sent in full (>= 95%)
                with a send lag p99 under 10 ms

Every row also says what one request cost in CPU: the generator's (Locust's CPU seconds over
the step / requests) and the server's, in microseconds.

Each step also says whether monitor/loadgen.py flagged it as limited by the load generator:
the flag must rise where the ceiling is. A server that cannot keep up would cap the figures
instead of Locust: its CPU is printed too (near 100% of its core: the ceiling is the server's).
Results: printed, and results/bench/ceiling-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import health, server
from infbench.analysis import loadgen, trust
from infbench.config import Profile, Step
from infbench.launch import proc
from infbench.measure import assets, load
from infbench.paths import ROOT

SEND_SHARE = 0.95
LAG_P99_MS = 10.0


def one_step(host: str, profile: Profile, out: Path, core: int | None,
             server_proc: psutil.Process | None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    step = load.start_step(profile, profile.steps[0], 1, host, out, assets.images_dir())
    try:
        if core is not None:
            os.sched_setaffinity(step.group.pid, {core})
        srv0 = _cpu(server_proc)
        step.group.popen.wait(timeout=profile.steps[0].seconds + 120)
        srv1 = _cpu(server_proc)
    finally:
        step.group.stop(grace=2.0)
    c = step.counts()
    t0, t1 = c.get("test_start"), c.get("test_stopping")
    batch = profile.steps[0].batch
    stats = _aggregate(out / f"step1-b{batch}_stats.csv")
    gen = loadgen.figures(out / f"step1-b{batch}_loadgen.csv", t0, t1) or {}
    span = (t1 - t0) if t0 and t1 else None
    done = c.get("finished", 0)
    row: dict[str, Any] = {
        "requests": done, "failed": c.get("failed"),
        "rps": round(done / span, 1) if span else None,
        "p50_ms": stats.get("50%"), "locust_cpu_pct": gen.get("cpu_pct"),
        "locust_peak_demand_pct": gen.get("peak_demand_pct"), "limited": gen.get("limited"),
        "server_cpu_pct": round(100 * (srv1 - srv0) / span, 1)
        if span and srv0 is not None and srv1 is not None else None}
    cpu = gen.get("cpu_pct")
    row["rps_per_core"] = round(row["rps"] / (cpu / 100), 0) if row["rps"] and cpu else None
    row["locust_us_per_request"] = round(1e6 * cpu / 100 / row["rps"], 1) \
        if row["rps"] and cpu else None
    srv = row["server_cpu_pct"]
    row["server_us_per_request"] = round(1e6 * srv / 100 / row["rps"], 1) \
        if row["rps"] and srv else None
    ol = trust.open_loop_figures(c, t1)
    if ol:
        row.update({"rate": ol["rate"], "send_rate": ol["send_rate"],
                    "lag_p99_ms": ol["lag_p99_ms"], "cap_hits": ol["cap_hits"]})
        row["kept_up"] = bool(ol["send_rate"] and ol["send_rate"] >= SEND_SHARE * ol["rate"]
                              and (ol["lag_p99_ms"] or 0) < LAG_P99_MS)
    return row


def _cpu(p: psutil.Process | None) -> float | None:
    if p is None:
        return None
    try:
        t = p.cpu_times()
        return float(t.user + t.system)
    except psutil.Error:
        return None


def _aggregate(path: Path) -> dict[str, Any]:
    import csv

    if not path.exists():
        return {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r.get("Name") == "Aggregated":
                return {k: _float(v) for k, v in r.items()}
    return {}


def _float(v: str | None) -> float | None:
    try:
        return float(v) if v not in (None, "", "N/A") else None
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--rates", default="100,200,400,800,1600")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = ap.parse_args(argv)
    cores = sorted(os.sched_getaffinity(0))
    gen_core, srv_core = (cores[0], cores[1]) if len(cores) > 1 else (None, None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"ceiling-{stamp}"
    rows: list[dict[str, Any]] = []
    try:
        with server("sleep", sleep_ms=0, cpus={srv_core} if srv_core is not None else None,
                    log=_log(work)) as port:
            host = f"http://127.0.0.1:{port}"
            pid = (health(port) or {}).get("pid")
            sp = psutil.Process(pid) if isinstance(pid, int) else None
            closed = Profile(name="ceiling", steps=(Step(args.batch, args.seconds),),
                             users=args.users, spawn_rate=float(args.users), wait=(0.0, 0.0),
                             drain_timeout=10, request_timeout=30)
            r = one_step(host, closed, work / "closed", gen_core, sp)
            rows.append({"load": f"closed, {args.users} users", **r})
            print(rows[-1], flush=True)
            for k, rate in enumerate(float(x) for x in args.rates.split(",")):
                prof = Profile(name="ceiling", steps=(Step(args.batch, args.seconds,
                                                           rate=rate),),
                               arrival="poisson", drain_timeout=10, request_timeout=30)
                r = one_step(host, prof, work / f"open{k}", gen_core, sp)
                rows.append({"load": f"open, {rate:g}/s", **r})
                print(rows[-1], flush=True)
    finally:
        proc.stop_all()
    kept = [r for r in rows if r.get("kept_up")]
    ceiling = max((r["send_rate"] for r in kept), default=None)
    print(f"\nnull endpoint, batch {args.batch} ({args.seconds:g} s a step), Locust on core "
          f"{gen_core}, server on core {srv_core}")
    print(f"{'load':18} {'req/s':>8} {'Locust CPU %':>13} {'req/s per core':>15} "
          f"{'lag p99 ms':>11} {'server CPU %':>13} {'Locust us/req':>14} "
          f"{'server us/req':>14}  limited")
    for r in rows:
        print(f"{r['load']:18} {_f(r['rps']):>8} {_f(r['locust_cpu_pct']):>13} "
              f"{_f(r['rps_per_core']):>15} {_f(r.get('lag_p99_ms')):>11} "
              f"{_f(r['server_cpu_pct']):>13} {_f(r['locust_us_per_request']):>14} "
              f"{_f(r['server_us_per_request']):>14}  {'yes' if r['limited'] else 'no'}")
    print(f"open-loop ceiling (sent >= {SEND_SHARE:.0%} of the rate, lag p99 < "
          f"{LAG_P99_MS:g} ms): {_f(ceiling)} req/s")
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"ceiling-{stamp}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows, "open_loop_ceiling_rps": ceiling}, indent=2))
    print(f"written {out}")
    return 0


def _log(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return work / "server.log"


def _f(x: Any) -> str:
    return "-" if x is None else f"{x:,.0f}" if isinstance(x, float) else str(x)


if __name__ == "__main__":
    sys.exit(main())
