"""Our open-loop Locust against MLPerf LoadGen's Server scenario: same server, same rate.

    flock /work/bench.lock python -m benchmarks.loadgen_check [--server model|sleep]
        [--rate 15] [--seconds 60] [--batch 1] [--model small] [--rounds 1]

LoadGen (`mlcommons-loadgen`, the reference harness of MLPerf Inference) schedules Poisson
arrivals at `server_target_qps` and measures each query from its scheduled time to its
completion: the definition our open-loop load follows. Here LoadGen's queries are sent over
HTTP by a pool of threads with keep-alive connections (a query waiting for a free thread waits
on LoadGen's clock, as ours waits for an in-flight slot), and our Locust step runs the same
rate with Poisson arrivals against the same server. Rounds alternate (LoadGen, Locust,
LoadGen, ...) so that drift on a shared machine falls on both.

Agreement is stated, not assumed: achieved rate within RATE_TOL (or, if wider, 3 standard
deviations of the difference between two Poisson counts of that size), p50 within P50_TOL (or
FLOOR_MS), p99 within P99_TOL (or FLOOR_MS). The tail is noisier than the median on 2 shared
cores, hence the wider p99 tolerance. Results: printed, and results/bench/loadgen-<time>.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.common import multipart, post, server
from infbench.analysis.stability import percentile, read_requests
from infbench.config import Profile, Step
from infbench.launch import proc
from infbench.measure import assets, load
from infbench.paths import ROOT

RATE_TOL = 0.05
P50_TOL = 0.15
P99_TOL = 0.35
FLOOR_MS = 3.0
THREADS = 64


def run_loadgen(port: int, body: bytes, ctype: str, rate: float, seconds: float,
                out: Path, seed: int) -> dict[str, Any]:
    """One LoadGen Server-scenario run; its summary's figures."""
    import mlperf_loadgen as lg

    local = threading.local()

    def send() -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/predict", body=body, headers={"Content-Type": ctype})
            r = conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            local.conn = None
            conn.close()

    pool = ThreadPoolExecutor(max_workers=THREADS)

    def one(sample_id: int) -> None:
        send()
        lg.QuerySamplesComplete([lg.QuerySampleResponse(sample_id, 0, 0)])

    def issue(samples: list[Any]) -> None:
        for s in samples:
            pool.submit(one, s.id)

    def flush() -> None:
        pass

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Server
    settings.mode = lg.TestMode.PerformanceOnly
    settings.server_target_qps = rate
    settings.server_target_latency_ns = 60 * 10**9  # report, do not judge
    settings.min_duration_ms = int(seconds * 1000)
    settings.max_duration_ms = int(seconds * 1000 * 2)
    settings.min_query_count = max(1, int(rate * seconds * 0.9))
    settings.schedule_rng_seed = seed
    log = lg.LogSettings()
    log.log_output.outdir = str(out)
    log.log_output.copy_summary_to_stdout = False
    out.mkdir(parents=True, exist_ok=True)
    sut = lg.ConstructSUT(issue, flush)
    qsl = lg.ConstructQSL(1024, 1024, lambda _s: None, lambda _s: None)
    try:
        lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        pool.shutdown(wait=True)
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    return parse_summary((out / "mlperf_log_summary.txt").read_text())


def parse_summary(text: str) -> dict[str, Any]:
    """The figures of LoadGen's mlperf_log_summary.txt we compare (ms, req/s)."""
    def num(label: str) -> float | None:
        m = re.search(re.escape(label) + r"\s*:\s*([0-9.eE+-]+)", text)
        return float(m.group(1)) if m else None

    ns = 1e6
    p50, p99 = num("50.00 percentile latency (ns)"), num("99.00 percentile latency (ns)")
    return {"rate": num("Completed samples per second"),
            "scheduled_rate": num("Scheduled samples per second"),
            "p50_ms": None if p50 is None else p50 / ns,
            "p99_ms": None if p99 is None else p99 / ns}


def run_locust(host: str, batch: int, rate: float, seconds: float, out: Path,
               seed: int) -> dict[str, Any]:
    """One open-loop Locust step; its figures from the per-request log."""
    out.mkdir(parents=True, exist_ok=True)
    profile = Profile(name="loadgen-check", steps=(Step(batch, seconds, rate=rate),),
                      arrival="poisson", arrival_seed=seed, drain_timeout=30,
                      request_timeout=60)
    step = load.start_step(profile, profile.steps[0], 1, host, out, assets.images_dir())
    try:
        step.group.popen.wait(timeout=seconds + 120)
    finally:
        step.group.stop(grace=2.0)
    c = step.counts()
    rows = read_requests(out / f"step1-b{batch}_requests.csv") or []
    ok = [r for r in rows if r.ok]
    lat = [r.latency_ms for r in rows]
    t0, t1 = c.get("test_start"), c.get("test_stopping")
    # Completed per second over the time the schedule ran, as LoadGen counts it.
    span = max(r.t_end for r in rows) - t0 if rows and t0 else None
    ol = c.get("open_loop") or {}
    return {"rate": len(ok) / span if span else None,
            "scheduled_rate": ol.get("sent", 0) / (t1 - t0) if t0 and t1 else None,
            "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
            "failures": len(rows) - len(ok), "lag_p99_ms": (ol.get("lag_ms") or {}).get("p99")}


def agree(ours: float | None, ref: float | None, tol: float, floor: float = 0.0) -> bool:
    if ours is None or ref is None:
        return False
    return abs(ours - ref) <= max(tol * ref, floor)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", choices=("model", "sleep"), default="model")
    ap.add_argument("--model", default="small")
    ap.add_argument("--call", default="predict")
    ap.add_argument("--sleep-ms", type=float, default=20.0)
    ap.add_argument("--rate", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    args = ap.parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    work = args.out / f"loadgen-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    body, ctype = multipart(args.batch)
    results: dict[str, list[dict[str, Any]]] = {"loadgen": [], "locust": []}
    try:
        with server(args.server, sleep_ms=args.sleep_ms, model=args.model, call=args.call,
                    log=work / "server.log") as port:
            post(port, body, ctype, n=20)  # warm-up: first calls trace the model
            for k in range(args.rounds):
                results["loadgen"].append(run_loadgen(port, body, ctype, args.rate,
                                                      args.seconds, work / f"loadgen{k}", k))
                print("loadgen", k, results["loadgen"][-1], flush=True)
                results["locust"].append(run_locust(f"http://127.0.0.1:{port}", args.batch,
                                                    args.rate, args.seconds,
                                                    work / f"locust{k}", k))
                print("locust ", k, results["locust"][-1], flush=True)
    finally:
        proc.stop_all()

    def med(side: str, key: str) -> float | None:
        vals = [r[key] for r in results[side] if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    # Two independent Poisson schedules of N requests differ by ~sqrt(2N) requests: the rate
    # tolerance is never tighter than 3 of those standard deviations.
    n = max(1.0, args.rate * args.seconds * args.rounds)
    rate_tol = max(RATE_TOL, 3 * math.sqrt(2 / n))
    checks = {
        "rate": (med("locust", "rate"), med("loadgen", "rate"), rate_tol, 0.0),
        "p50_ms": (med("locust", "p50_ms"), med("loadgen", "p50_ms"), P50_TOL, FLOOR_MS),
        "p99_ms": (med("locust", "p99_ms"), med("loadgen", "p99_ms"), P99_TOL, FLOOR_MS),
    }
    verdicts = {k: agree(*v) for k, v in checks.items()}
    print(f"\nserver {args.server} ({args.model if args.server == 'model' else args.sleep_ms}), "
          f"batch {args.batch}, {args.rate:g} req/s Poisson, {args.seconds:g} s, "
          f"{args.rounds} round(s)")
    print(f"{'figure':8} {'LoadGen':>10} {'Locust':>10} {'tolerance':>16}  agree")
    for k, (ours, ref, tol, floor) in checks.items():
        tol_s = f"{tol:.0%}" + (f" or {floor:g} ms" if floor else "")
        print(f"{k:8} {ref if ref is not None else float('nan'):10.2f} "
              f"{ours if ours is not None else float('nan'):10.2f} {tol_s:>16}  "
              f"{'yes' if verdicts[k] else 'NO'}")
    doc = {"args": {k: str(v) for k, v in vars(args).items()}, "results": results,
           "checks": {k: {"locust": v[0], "loadgen": v[1], "tolerance": v[2],
                          "floor_ms": v[3], "agree": verdicts[k]}
                      for k, v in checks.items()},
           "loadgen_version": _version("mlcommons-loadgen")}
    (args.out / f"loadgen-{stamp}.json").write_text(json.dumps(doc, indent=2))
    print(f"\nwritten {args.out / f'loadgen-{stamp}.json'}")
    return 0 if all(verdicts.values()) else 1


def _version(dist: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


if __name__ == "__main__":
    sys.exit(main())
