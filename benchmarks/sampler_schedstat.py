"""What reading every thread's schedstat adds to one sample of the /proc sampler
(infbench/measure/sampler.py): the sampler thread's CPU per sample of one process with
`--threads` threads, without and with `RunWait.read`, alternated ABBA.

    flock /tmp/infbench-heavy.lock python -m benchmarks.sampler_schedstat [--threads 60]
        [--samples 2000]

A TensorFlow server has some 40-70 threads; the sampler reads their schedstat every
sampler.SCHED_EVERY_S (0.5 s), so the added cost per read times 2 is its share of a core per
process.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from infbench.measure import sampler


def per_sample_us(samples: int, waits: sampler.RunWait | None) -> float:
    pid = os.getpid()
    cpu = time.thread_time()
    for _ in range(samples):
        sampler.read_proc(pid, rollup=False)
        if waits is not None:
            waits.read(pid)
    return 1e6 * (time.thread_time() - cpu) / samples


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=60)
    ap.add_argument("--samples", type=int, default=2000)
    a = ap.parse_args()
    stop = threading.Event()
    idle = [threading.Thread(target=stop.wait, daemon=True) for _ in range(a.threads - 1)]
    for t in idle:
        t.start()
    print(f"threads: {len(os.listdir(f'/proc/{os.getpid()}/task'))}")
    off: list[float] = []
    on: list[float] = []
    for order in ("ABBA", "ABBA"):
        for k in order:
            (off if k == "A" else on).append(
                per_sample_us(a.samples, None if k == "A" else sampler.RunWait()))
    stop.set()
    a_us, b_us = sorted(off)[len(off) // 2], sorted(on)[len(on) // 2]
    print(f"per sample, CPU of the sampler's thread: without schedstat {a_us:.0f} us, with "
          f"{b_us:.0f} us; read every {sampler.SCHED_EVERY_S:g} s: "
          f"+{(b_us - a_us) / sampler.SCHED_EVERY_S / 1e4:.2f} % of a core per process")


if __name__ == "__main__":
    main()
