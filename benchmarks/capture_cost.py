"""What the packet capture costs: the same variant and load with `capture` off and on, in ABBA
order, through the real CLI; requests/s and p50 latency of each run, then on/off as ratios.

    flock /tmp/infbench-heavy.lock python -m benchmarks.capture_cost [--variant tfs-rest-row]
        [--model MODEL] [--seconds 15] [--users 4] [--batch 1] [--rounds 1]

One round is off, on, on, off (each a run of its own: a fresh server, the same profile), so a
drift of the machine over the round falls on both sides alike. The profile is written here: one
closed-loop step of `--users` users without waiting, `--seconds` long. Results: printed, and
results/bench/capture-<time>.json (each run's folder is kept under results/bench/capture-runs/).
`make bench-capture` runs it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from infbench.paths import ROOT

PROFILE = """
[profiles.capture-bench]
description = "benchmarks/capture_cost.py: one step, no wait"
users = {users}
spawn_rate = {users}
wait = [0.0, 0.0]
steps = [{{ batch = {batch}, seconds = {seconds} }}]
baseline = 2
pause = 1
cooldown = 1
drain_timeout = 10
request_timeout = 30
sample_interval = 0.2
"""


def one_run(args: argparse.Namespace, exp: Path, results: Path, on: bool) -> dict[str, float]:
    argv = [sys.executable, "-m", "infbench", "--results", str(results), "--experiments",
            str(exp), "run", args.variant, "--profile", "capture-bench",
            "--capture" if on else "--no-capture"]
    if args.model:
        argv += ["--model", args.model]
    res = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        sys.exit(f"capture_cost: the run failed (exit {res.returncode}):\n{res.stdout[-2000:]}"
                 f"\n{res.stderr[-2000:]}")
    run_dir = (results / "latest").resolve()
    s = json.loads((run_dir / args.variant / "summary.json").read_text())
    (step,) = s["steps"]
    wire = s.get("wire") or {}
    return {"rps": step["rps"], "p50_ms": step["p50_ms"], "requests": step["requests"],
            "wire_requests": sum(f.get("requests") or 0 for w in wire.get("steps") or []
                                 for f in (w.get("services") or {}).values()) if on else 0,
            "run": run_dir.name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", default="tfs-rest-row")
    ap.add_argument("--model", default="")
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--users", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args()
    out = ROOT / "results" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    exp = out / "capture-experiments.toml"
    exp.write_text((ROOT / "experiments.toml").read_text() + PROFILE.format(
        users=args.users, batch=args.batch, seconds=args.seconds))
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    for r in range(args.rounds):
        for label in ("off", "on", "on", "off"):
            got = one_run(args, exp, out / "capture-runs", label == "on")
            runs[label].append(got)
            print(f"round {r + 1} capture {label:>3}: {got['rps']:8.2f} req/s, p50 "
                  f"{got['p50_ms']:6.1f} ms ({got['requests']} requests"
                  + (f", {got['wire_requests']} on the wire" if label == "on" else "") + ")",
                  flush=True)

    def mean(label: str, key: str) -> float:
        return statistics.fmean(x[key] for x in runs[label])

    rps = mean("on", "rps") / mean("off", "rps")
    p50 = mean("on", "p50_ms") / mean("off", "p50_ms")
    print(f"capture on / off: req/s x{rps:.3f}, p50 x{p50:.3f} ({args.variant}, {args.users} "
          f"users, batch {args.batch}, {args.seconds:.0f} s a run, {args.rounds} ABBA round(s))")
    path = out / f"capture-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"args": vars(args), "runs": runs, "rps_ratio": rps,
                                "p50_ratio": p50}, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
