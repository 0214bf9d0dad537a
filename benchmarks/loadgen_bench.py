"""Our closed loop against wrk on the same 20 ms server, and the closed loop's ceiling.

    make bench-loadgen      (flock $(BENCH_LOCK) python -m benchmarks.loadgen_bench
                             [--seconds 10] [--connections 8,64] [--rounds 2] [--delay-ms 20]
                             [--ceiling-users 20])

The server is benchmarks/delay_server.py (asyncio, answers every POST after `--delay-ms`, all
connections concurrently, TCP_NODELAY), pinned to one core; the generator (wrk, or our Locust
step) to the other. The request is the one-image JSON body ({"instances": [{"b64": ...}]}),
built by loadtests/locustfile.py itself and written out for wrk (loadtests/request_dump.py).
At each connection count the two alternate ABBA (wrk, ours, ours, wrk for --rounds 2), each
for --seconds; the medians are set beside each other as ratios against issue 21's goals:

  req/s   ours >= 0.95 x wrk's
  p50     ours within max(1 ms, 5%) of wrk's
  ceiling our closed loop on a null server (the same server, no delay): >= 4,000 req/s per
          core of Locust CPU (benchmarks/generator_ceiling.py's one_step, multipart body)

and what one request costs in CPU µs: the generator's (wrk's rusage; Locust's from its
`_loadgen.csv`) beside the server's (its /proc CPU times over the round). Printed, and
results/bench/loadgen-<time>.json. The ratios are only as quiet as the machine: on a machine
shared with other work, say so beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import free_port, health
from benchmarks.generator_ceiling import one_step
from infbench.analysis import crosscheck, loadgen
from infbench.config import Profile, Request, Step
from infbench.launch import proc
from infbench.measure import assets, load, tools
from infbench.paths import ROOT

RPS_GOAL = 0.95
P50_SHARE, P50_FLOOR_MS = 0.05, 1.0
CEILING_GOAL = 4000.0  # req/s per core of Locust CPU
JSON_REQUEST = Request(path="/predict", body="json", json_template={"instances": "{images}"},
                       image={"b64": "{b64}"})


@contextlib.contextmanager
def delay_server(delay_ms: float, cpus: set[int] | None, log: Path) -> Iterator[
        tuple[int, psutil.Process]]:
    port = free_port()
    with log.open("ab") as out:
        p = subprocess.Popen([sys.executable, "-m", "benchmarks.delay_server", "--port",
                              str(port), "--delay-ms", f"{delay_ms:g}"], cwd=ROOT,
                             start_new_session=True, stdout=out, stderr=subprocess.STDOUT)
        try:
            if cpus:
                os.sched_setaffinity(p.pid, cpus)
            deadline = time.monotonic() + 30
            while (h := health(port)) is None or h.get("pid") != p.pid:
                if p.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"delay server did not come up (exit {p.poll()})")
                time.sleep(0.1)
            yield port, psutil.Process(p.pid)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def _cpu(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def _per_request(cpu_s: float | None, ok: int) -> float | None:
    return round(1e6 * cpu_s / ok, 1) if cpu_s is not None and ok else None


def our_round(host: str, profile: Profile, out: Path, n: int, core: int | None,
              server: psutil.Process) -> dict[str, Any]:
    step = profile.steps[0]
    srv0 = _cpu(server)
    run = load.start_step(profile, step, n, host, out, assets.images_dir(), JSON_REQUEST)
    try:
        if core is not None:
            os.sched_setaffinity(run.group.pid, {core})
        run.group.popen.wait(timeout=step.seconds + 120)
    finally:
        code = run.group.stop(grace=2.0)
    srv = _cpu(server) - srv0
    c = run.counts()
    prefix = out / load.step_name(n, step)
    figs = crosscheck.step_figures(prefix, c)
    t0, t1 = c.get("test_start"), c.get("test_stopping")
    gen = loadgen.figures(Path(f"{prefix}_loadgen.csv"), t0, t1) or {}
    total = gen.get("total_cpu_pct")
    cpu_s = total / 100 * (t1 - t0) if total is not None and t0 and t1 else None
    return {"who": "infbench", **figs, "exit_code": code, "cpu_s": cpu_s,
            "limited": gen.get("limited"),
            "generator_us_per_request": _per_request(cpu_s, figs["ok"]),
            "server_us_per_request": _per_request(srv, figs["ok"]),
            "error": None if code == 0 and figs["ok"] else f"Locust exit {code}, "
                                                           f"{figs['ok']} ok"}


def wrk_round(replay: tools.Replay, c: int, seconds: float, folder: Path, n: int,
              core: int | None, server: psutil.Process) -> dict[str, Any]:
    srv0 = _cpu(server)
    r = tools.run("wrk", replay, c, seconds, folder, f"wrk-c{c}-round{n}",
                  cpus={core} if core is not None else None)
    srv = _cpu(server) - srv0
    return {"who": "wrk", "requests": r.requests, "ok": r.ok, "errors": r.errors,
            "rps": r.rps, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "cpu_s": r.cpu_s,
            "generator_us_per_request": _per_request(r.cpu_s, r.ok),
            "server_us_per_request": _per_request(srv, r.ok), "error": r.error}


def compare_at(c: int, host: str, args: argparse.Namespace, work: Path, core: int | None,
               server: psutil.Process) -> dict[str, Any]:
    folder = work / f"c{c}"
    folder.mkdir(parents=True, exist_ok=True)
    profile = Profile(name="loadgen", steps=(Step(1, args.seconds),), users=c,
                      spawn_rate=1000.0, wait=(0.0, 0.0), drain_timeout=10,
                      request_timeout=30)
    env = load.locust_env(profile, profile.steps[0], assets.images_dir(),
                          folder / "dump_counts.json", JSON_REQUEST)
    tools.dump_request(load.LOCUSTFILE, env, folder)
    replay = tools.Replay.from_dump(folder, host)
    tools.run("wrk", replay, c, 2, folder, "wrk-warmup")  # not counted
    rows: list[dict[str, Any]] = []
    k = {"tool": 0, "ours": 0}
    for side in crosscheck.order(args.rounds):
        k[side] += 1
        row = wrk_round(replay, c, args.seconds, folder, k[side], core, server) \
            if side == "tool" else our_round(host, profile, folder, k[side], core, server)
        rows.append(row)
        print(f"  c={c} {row['who']:8} rps {row['rps']}  p50 {row['p50_ms']} ms  p99 "
              f"{row['p99_ms']} ms  CPU µs/req gen {row['generator_us_per_request']} server "
              f"{row['server_us_per_request']}" + (f"  FAULT {row['error']}"
                                                  if row["error"] else ""), flush=True)
    wrk = crosscheck.medians([r for r in rows if r["who"] == "wrk"])
    ours = crosscheck.medians([r for r in rows if r["who"] == "infbench"])

    def med(who: str, key: str) -> float | None:
        vals = sorted(r[key] for r in rows if r["who"] == who and r.get(key) is not None)
        return vals[len(vals) // 2] if vals else None

    rps_ratio = round(ours["rps"] / wrk["rps"], 3) if ours["rps"] and wrk["rps"] else None
    p50_ok = None
    if ours["p50_ms"] is not None and wrk["p50_ms"] is not None:
        p50_ok = abs(ours["p50_ms"] - wrk["p50_ms"]) <= max(P50_FLOOR_MS,
                                                             P50_SHARE * wrk["p50_ms"])
    return {"connections": c, "rounds": rows, "wrk": wrk, "ours": ours,
            "rps_ratio": rps_ratio, "rps_goal_met": None if rps_ratio is None
            else rps_ratio >= RPS_GOAL,
            "p50_delta_ms": None if p50_ok is None else round(ours["p50_ms"] - wrk["p50_ms"],
                                                              3),
            "p50_goal_met": p50_ok,
            "generator_us_per_request": {"wrk": med("wrk", "generator_us_per_request"),
                                         "ours": med("infbench", "generator_us_per_request")},
            "server_us_per_request": {"wrk": med("wrk", "server_us_per_request"),
                                      "ours": med("infbench", "server_us_per_request")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--connections", default="8,64")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    ap.add_argument("--ceiling-users", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = ap.parse_args(argv)
    tools.require("wrk")
    assets.ensure_images()
    cores = sorted(os.sched_getaffinity(0))
    gen_core, srv_core = (cores[0], cores[1]) if len(cores) > 1 else (None, None)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"loadgen-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    srv_cpus = {srv_core} if srv_core is not None else None
    results: list[dict[str, Any]] = []
    try:
        with delay_server(args.delay_ms, srv_cpus, work / "server.log") as (port, sp):
            host = f"http://127.0.0.1:{port}"
            for c in (int(x) for x in args.connections.split(",")):
                results.append(compare_at(c, host, args, work, gen_core, sp))
        with delay_server(0, srv_cpus, work / "null-server.log") as (port, sp):
            closed = Profile(name="ceiling", steps=(Step(1, args.seconds),),
                             users=args.ceiling_users, spawn_rate=1000.0, wait=(0.0, 0.0),
                             drain_timeout=10, request_timeout=30)
            ceiling = one_step(f"http://127.0.0.1:{port}", closed, work / "ceiling", gen_core,
                               sp)
    finally:
        proc.stop_all()
    print(f"\n{args.delay_ms:g} ms server, one-image JSON body, {args.seconds:g} s a round, "
          f"ABBA x{args.rounds}; generator on core {gen_core}, server on core {srv_core}")
    print(f"{'conns':>5} {'wrk req/s':>10} {'ours req/s':>10} {'ratio':>6} {'goal':>5} "
          f"{'wrk p50':>8} {'ours p50':>8} {'delta':>7} {'goal':>5} "
          f"{'gen µs/req wrk/ours':>20} {'server µs/req wrk/ours':>23}")
    for r in results:
        g, s = r["generator_us_per_request"], r["server_us_per_request"]
        print(f"{r['connections']:>5} {_f(r['wrk']['rps']):>10} {_f(r['ours']['rps']):>10} "
              f"{_f(r['rps_ratio'], 3):>6} {_yes(r['rps_goal_met']):>5} "
              f"{_f(r['wrk']['p50_ms'], 2):>8} {_f(r['ours']['p50_ms'], 2):>8} "
              f"{_f(r['p50_delta_ms'], 2):>7} {_yes(r['p50_goal_met']):>5} "
              f"{_f(g['wrk']) + ' / ' + _f(g['ours']):>20} "
              f"{_f(s['wrk']) + ' / ' + _f(s['ours']):>23}")
    per_core = ceiling.get("rps_per_core")
    print(f"closed-loop ceiling on a null server, {args.ceiling_users} users: "
          f"{_f(ceiling.get('rps'))} req/s at {_f(ceiling.get('locust_cpu_pct'))}% of a core "
          f"= {_f(per_core)} req/s per core (goal >= {CEILING_GOAL:,.0f}: "
          f"{_yes(None if per_core is None else per_core >= CEILING_GOAL)}); server CPU "
          f"{_f(ceiling.get('server_cpu_pct'))}%")
    out = args.out / f"loadgen-{stamp}.json"
    out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                               "goals": {"rps_ratio": RPS_GOAL, "p50_share": P50_SHARE,
                                         "p50_floor_ms": P50_FLOOR_MS,
                                         "ceiling_rps_per_core": CEILING_GOAL},
                               "comparisons": results, "ceiling": ceiling}, indent=2))
    print(f"written {out}")
    faults = [r["error"] for c in results for r in c["rounds"] if r.get("error")]
    for f in faults:
        print(f"FAULT: {f}")
    return 1 if faults else 0


def _f(x: Any, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}" if isinstance(x, (int, float)) else str(x)


def _yes(x: bool | None) -> str:
    return "-" if x is None else "yes" if x else "no"


if __name__ == "__main__":
    sys.exit(main())
