"""A service's own Prometheus `/metrics`, scraped on the run's clock: metrics.csv.

For a server the harness does not start (server = "url", `metrics = "<url>"`), what it says
of itself is the only memory and CPU there may be: the standard process collector's
`process_resident_memory_bytes` and `process_cpu_seconds_total` are its RSS and CPU. Every
sample of every scrape is written, one row each: time, name, labels, value.

The text exposition format is parsed here (comments and HELP/TYPE lines skipped; `name`,
`{labels}` with quoted, escaped values, a value, an optional timestamp). A scrape that fails -
no answer, not HTTP 200, a line that is not a sample - is a fault: the first one an event
(`metrics_failed`) in phases.json, every one counted.
"""

from __future__ import annotations

import math
import re
import time
import urllib.error
from collections.abc import Callable
from typing import Any

from infbench.launch import loopback
from infbench.measure.base import CsvSampler
from infbench.results.samples import METRICS_COLUMNS

RSS = "process_resident_memory_bytes"
CPU = "process_cpu_seconds_total"
NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
MAX_BYTES = 16 * 1024 * 1024


class ParseError(ValueError):
    pass


def _labels(line: str, start: int) -> tuple[str, int]:
    """The text between '{' at `start` and its '}' (quotes and escapes respected), and the
    index after the '}'."""
    i = start + 1
    quoted = False
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "}" and not quoted:
            return line[start + 1:i].strip().rstrip(","), i + 1
        i += 1
    raise ParseError(f"unclosed labels: {line[:120]!r}")


def parse(text: str) -> list[tuple[str, str, float]]:
    """Every sample of a text exposition: (name, labels as written, value)."""
    out: list[tuple[str, str, float]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = NAME.match(line)
        if m is None:
            raise ParseError(f"not a sample: {line[:120]!r}")
        name, rest_at = m.group(0), m.end()
        labels = ""
        if rest_at < len(line) and line[rest_at] == "{":
            labels, rest_at = _labels(line, rest_at)
        fields = line[rest_at:].split()
        if not fields or len(fields) > 2 or (rest_at < len(line) and not line[rest_at].isspace()):
            raise ParseError(f"not a sample: {line[:120]!r}")
        try:
            value = float(fields[0])
        except ValueError:
            raise ParseError(f"not a number: {fields[0][:40]!r} in {line[:120]!r}") from None
        out.append((name, labels, value))
    return out


def process_figures(samples: list[tuple[str, str, float]]) -> dict[str, float]:
    """The process collector's RSS (MB) and CPU (s), where the exposition has them."""
    found: dict[str, float] = {}
    for name, labels, value in samples:
        if labels or math.isnan(value):
            continue
        if name == RSS:
            found["rss_mb"] = value / 1e6
        elif name == CPU:
            found["cpu_s"] = value
    return found


class MetricsSampler(CsvSampler):
    """Scrapes `url` every `interval` s; `failed` counts the scrapes that failed, `note` is
    told the first (kind, detail)."""

    flush_every_s = 5.0

    def __init__(self, url: str, path: Any, interval: float,
                 note: Callable[[str, str], None]) -> None:
        super().__init__(path, METRICS_COLUMNS, interval, "infbench-metrics")
        self.url = url
        self.note = note
        self.failed = 0
        self.last: dict[str, float] = {}
        self.first: dict[str, float] = {}

    def scrape(self) -> list[tuple[str, str, float]]:
        try:
            with loopback.urlopen(self.url, timeout=max(1.0, min(5.0, 2 * self.interval))) as r:
                if r.status != 200:
                    raise ParseError(f"HTTP {r.status}")
                body = r.read(MAX_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise ParseError(f"HTTP {e.code}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ParseError(f"no answer ({getattr(e, 'reason', e)})") from None
        if len(body) > MAX_BYTES:
            raise ParseError(f"an exposition over {MAX_BYTES // 2**20} MiB")
        return parse(body.decode("utf-8", "replace"))

    def sample(self, out: Any) -> bool:
        now = time.time()
        self.samples += 1
        try:
            found = self.scrape()
        except ParseError as e:
            self.failed += 1
            if self.failed == 1:
                self.note("metrics_failed", f"scrape of {self.url} failed: {e} (every failed "
                          "scrape is counted in phases.json metrics.failed)")
            return False
        for name, labels, value in found:
            out.writerow([f"{now:.3f}", name, labels, repr(value)])
        figures = process_figures(found)
        if figures:
            self.first = self.first or figures
            self.last = figures
        return True
