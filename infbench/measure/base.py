"""What every sampler of the monitor shares: a daemon thread writing one CSV file on a clock.

The process sampler, the Redis sampler and the load generator's sampler each open a file,
write a header, then sample every `interval` seconds until told to stop; only what one sample
reads differs. One loop for the three, so start/stop, flushing and the pacing cannot drift
apart (and a fourth sampler gets them right for free).
"""

from __future__ import annotations

import abc
import csv
import threading
import time
from pathlib import Path
from typing import Any, Self


class CsvSampler(abc.ABC):
    """Calls sample() every `interval` s on a daemon thread, from start() until stop() (or
    until done() says the sampled thing is gone), writing to `path` under `columns`."""

    # Take one more sample once told to stop (the load generator's last seconds count).
    final_sample = False
    # Flush the file when this many seconds have passed since the last flush (0: every sample).
    flush_every_s = 0.0
    # A folder we cannot write to: end quietly (the run's other files say why) or raise.
    quiet_open_errors = False

    def __init__(self, path: Path, columns: list[str], interval: float, name: str) -> None:
        self.path = path
        self.columns = columns
        self.interval = interval
        self.samples = 0
        self.cpu_s = 0.0  # the sampler thread's own CPU time, to report its overhead
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    @abc.abstractmethod
    def sample(self, out: Any) -> bool:
        """Write this sample's rows to the csv writer `out`. False: the sample failed (the
        thing sampled did not answer), and the next is tried a whole interval later."""

    def done(self) -> bool:
        """Whether the thing sampled is gone, so that this sample is the last."""
        return False

    def finish(self) -> None:
        """Release what the samples held (a connection), on the sampler's thread."""
        return None

    def _run(self) -> None:
        try:
            f = self.path.open("w", newline="")
        except OSError:
            if self.quiet_open_errors:
                return
            raise
        try:
            with f:
                out = csv.writer(f)
                out.writerow(self.columns)
                self._loop(f, out)
        finally:
            self.finish()

    def _loop(self, f: Any, out: Any) -> None:
        last_flush = time.monotonic()
        cpu0 = time.thread_time()
        while True:
            tick = time.monotonic()
            last = self._stop.is_set() or self.done()
            if last and not self.final_sample:
                return
            ok = self.sample(out)
            if tick - last_flush >= self.flush_every_s:
                f.flush()
                last_flush = tick
            self.cpu_s = time.thread_time() - cpu0
            if last:
                return
            wait = self.interval if not ok else self.interval - (time.monotonic() - tick)
            self._stop.wait(max(0.0, wait))
