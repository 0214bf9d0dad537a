"""What a native-stacks window (infbench/measure/native_stacks.py, heaptrack attached) costs a
server: requests/s without, with, with and without it (ABBA, one server), and the time of each
start() and stop().

    flock /work/bench.lock python -m benchmarks.native_stacks_overhead [--seconds 5]
        [--native-kb 64] [--clients 2]

The server is tests/fixtures/planted_app.py on Uvicorn (PLANTED_NATIVE_VIA=strdup, so that
the window has a leak to name); the clients are threads here, each a keep-alive connection
sending POST /predict back to back.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import free_port
from infbench.measure import native_stacks
from infbench.paths import ROOT


def rate(port: int, seconds: float, clients: int) -> float:
    counts = [0] * clients
    end = time.monotonic() + seconds

    def loop(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while time.monotonic() < end:
            c.request("POST", "/predict", body=b'{"x": 1}',
                      headers={"Content-Type": "application/json"})
            c.getresponse().read()
            counts[i] += 1
        c.close()

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--native-kb", type=int, default=64)
    ap.add_argument("--clients", type=int, default=2)
    args = ap.parse_args()
    why = native_stacks.available()
    if why:
        sys.exit(f"native_stacks_overhead: {why}")
    port = free_port()
    env = {**os.environ, "PLANTED_NATIVE_KB": str(args.native_kb),
           "PLANTED_NATIVE_VIA": "strdup"}
    p = subprocess.Popen([sys.executable, "-m", "uvicorn", "tests.fixtures.planted_app:app",
                          "--host", "127.0.0.1", "--port", str(port), "--no-access-log",
                          "--log-level", "warning"], cwd=ROOT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    break
            if p.poll() is not None or time.monotonic() > deadline:
                sys.exit("native_stacks_overhead: the planted server did not come up")
            time.sleep(0.2)
        rate(port, 1.0, args.clients)  # warm-up
        out = Path(tempfile.mkdtemp(prefix="native-stacks-bench-"))
        rates: list[tuple[str, float]] = []
        for i, phase in enumerate("ABBA"):
            if phase == "A":
                rates.append((phase, rate(port, args.seconds, args.clients)))
                continue
            w = native_stacks.Window(p.pid, out / f"window{i}")
            t = time.monotonic()
            w.start()
            start_s = time.monotonic() - t
            rates.append((phase, rate(port, args.seconds, args.clients)))
            r = w.stop()
            top = r["top"][0] if r["top"] else {"bytes_mb": 0.0, "function": "-"}
            print(f"window {i}: start {start_s:.2f} s, stop {r['took_s']:.2f} s, top "
                  f"{top['bytes_mb']:.2f} MB in {top['function']}")
        for phase, r_s in rates:
            print(f"{phase}: {r_s:.0f} requests/s")
        a = (rates[0][1] + rates[3][1]) / 2
        b = (rates[1][1] + rates[2][1]) / 2
        print(f"with/without: {b / a:.2f} (B1/A1 {rates[1][1] / rates[0][1]:.2f}, "
              f"B2/A2 {rates[2][1] / rates[3][1]:.2f}); raw files under {out}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        p.wait(timeout=15)


if __name__ == "__main__":
    main()
