"""Redis, sampled over its own protocol once a second, on the run's clock.

For every Redis service of a topology: the queue's length (LLEN of the keys the services are
told to use), memory, clients, operations a second and whether a snapshot (BGSAVE) runs - the
field study saw `100 changes in 300 seconds. Saving...` just when its failures began. Written
to `<variant>/redis-<replica>.csv`; a snapshot starting is a note on the run's clock.
No client library: the harness speaks RESP itself, in a few lines.
"""

from __future__ import annotations

import contextlib
import csv
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infbench.measure.base import CsvSampler
from infbench.paths import HOST

COLUMNS = ["time", "queue_length", "used_memory_mb", "connected_clients", "ops_per_sec",
           "rdb_bgsave_in_progress", "rdb_changes_since_last_save", "total_commands_processed",
           "keys"]


def _command(*args: str) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Resp:
    """A minimal RESP connection: enough for INFO, LLEN and DBSIZE."""

    def __init__(self, port: int, timeout: float = 2.0) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def call(self, *args: str) -> str | int | None:
        self.sock.sendall(_command(*args))
        head = self._line()
        kind, rest = head[:1], head[1:]
        if kind == b":":
            return int(rest)
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise OSError(rest.decode())
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise OSError("connection closed")
                self.buf += chunk
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data.decode("utf-8", "replace")
        raise OSError(f"unexpected reply {head[:40]!r}")


def parse_info(text: str) -> dict[str, str]:
    return dict(line.split(":", 1) for line in text.splitlines()
                if ":" in line and not line.startswith("#"))


class RedisSampler(CsvSampler):
    """One thread per Redis replica; `note(kind, detail)` records a snapshot starting."""

    def __init__(self, port: int, out: Path, queue_keys: list[str],
                 note: Callable[[str, str], None], interval: float = 1.0) -> None:
        super().__init__(out, COLUMNS, interval, f"redis {port}")
        self.port = port
        self.out = out
        self.queue_keys = queue_keys
        self.note = note
        self._conn: Resp | None = None
        self._saving = False

    def sample(self, out: Any) -> bool:
        t = time.time()
        try:
            if self._conn is None:
                self._conn = Resp(self.port)
            conn = self._conn
            info = parse_info(str(conn.call("INFO") or ""))
            qlen = sum(int(conn.call("LLEN", k) or 0) for k in self.queue_keys)
            keys = conn.call("DBSIZE")
        except (OSError, ValueError):
            self.finish()
            return False
        bg = info.get("rdb_bgsave_in_progress", "0") == "1"
        if bg and not self._saving:
            self.note("redis_snapshot", f"Redis on port {self.port} started an RDB "
                      f"snapshot ({info.get('rdb_changes_since_last_save', '?')} "
                      "changes since the last)")
        self._saving = bg
        out.writerow([f"{t:.3f}", qlen, f"{int(info.get('used_memory', 0)) / 2**20:.2f}",
                      info.get("connected_clients", ""),
                      info.get("instantaneous_ops_per_sec", ""), int(bg),
                      info.get("rdb_changes_since_last_save", ""),
                      info.get("total_commands_processed", ""), keys])
        self.samples += 1
        return True

    def finish(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None


def read_samples(path: Path) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    if not path.exists():
        return rows
    with path.open(newline="") as f:
        for raw in csv.DictReader(f):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                rows.append({k: float(raw[k]) for k in COLUMNS if raw.get(k) not in (None, "")})
    return rows
