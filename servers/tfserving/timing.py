"""The TF-Serving-compatible server's time split: one record per predict request, and its
lines (the fields: servers.tfserving's docstring)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from servers.shared.timings import TimingsWriter


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


@dataclass


class Timing:
    """One predict request's phases (seconds while measuring; written in ms)."""

    protocol: str
    t: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    format: str | None = None
    batch: int = 0
    status: int | str = 0
    receive: float = 0.0
    parse: float = 0.0
    decode: float = 0.0
    queue: float = 0.0
    model: float = 0.0
    decode_cpu: float | None = None  # the handling thread's CPU (time.thread_time) in decode
    model_cpu: float | None = None  # ... and in the model call (TF's own op threads not in it)
    serialize: float = 0.0
    total: float = 0.0
    done: bool = False

    @contextmanager
    def decoding(self) -> Iterator[None]:
        """Time the block as the decode phase: wall clock and the handling thread's CPU."""
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.decode = time.perf_counter() - started
            self.decode_cpu = time.thread_time() - cpu

    def record(self) -> dict[str, Any]:
        return {
            "t": round(self.t, 6), "protocol": self.protocol, "format": self.format,
            "batch": self.batch, "status": self.status, "ok": self.status in (200, "OK"),
            "receive_ms": _ms(self.receive), "parse_ms": _ms(self.parse),
            "decode_ms": _ms(self.decode), "queue_ms": _ms(self.queue),
            "model_ms": _ms(self.model), "serialize_ms": _ms(self.serialize),
            "total_ms": _ms(self.total),
            "decode_cpu_ms": None if self.decode_cpu is None else _ms(self.decode_cpu),
            "model_cpu_ms": None if self.model_cpu is None else _ms(self.model_cpu),
        }


class TimingLog(TimingsWriter):
    """The predict requests' lines (servers.shared.timings); without a folder it keeps
    nothing, so the measuring stays on and costs a few clock reads."""

    def finish(self, rec: Timing, status: int | str) -> None:
        """Close a request's record (once) and queue its line."""
        if rec.done:
            return
        rec.done = True
        rec.status = status
        rec.total = time.perf_counter() - rec.t0
        if self.folder is not None:
            self.append(rec.record())


