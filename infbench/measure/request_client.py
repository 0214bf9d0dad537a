"""The client of request profiling: one request at a time to the entry service, timed by the
client's own clock and, in a profiled pass, profiled in this process as well."""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import time
from pathlib import Path
from typing import Any

from infbench.measure.load import LoadError
from infbench.results import files


class Client:
    """Sequential POST /score over one keep-alive connection, timed with the client's own clock.

    A request that fails on the connection (the server closed it while idle, as Gunicorn's sync
    workers do, or a worker died) is sent once more on a new connection: POST /score only reads,
    so sending it again is safe. A second failure, or a timeout (the server may still be working
    on it), is a LoadError naming the entity."""

    def __init__(self, url: str, timeout: float) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.partition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=timeout)

    def score(self, entity_id: int) -> dict[str, Any]:
        for attempt in (1, 2):
            try:
                row = self._score(entity_id)
            except (OSError, http.client.HTTPException) as e:
                self.conn.close()  # the next request() opens a new connection
                if attempt == 2 or isinstance(e, TimeoutError):
                    raise LoadError(f"POST /score for entity {entity_id}: "
                                    f"{type(e).__name__}: {e}") from None
                continue
            if attempt == 2:
                row["retried"] = True
            return row
        raise AssertionError("unreachable")

    def _score(self, entity_id: int) -> dict[str, Any]:
        t0 = time.perf_counter()
        body = json.dumps({"entity_id": entity_id}).encode()
        t1 = time.perf_counter()
        self.conn.request("POST", "/score", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        t2 = time.perf_counter()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        t3 = time.perf_counter()
        if resp.status != 200 or not isinstance(data, dict):
            detail = data.get("error") if isinstance(data, dict) else \
                raw[:200].decode(errors="replace")
            raise LoadError(f"POST /score for entity {entity_id}: {resp.status} {detail}")
        return {"entity_id": entity_id, "status": resp.status,
                "client_ms": round((t2 - t1) * 1000, 3),
                "client_json_ms": round(((t1 - t0) + (t3 - t2)) * 1000, 3),
                "timing": data.get("timing")}

    def close(self) -> None:
        self.conn.close()


class ClientProfiler:
    """The client's requests under one profiler, paused between requests (the waits for the
    server's files are not the client's time)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.profiler: Any = None
        if kind == "pyinstrument":
            from pyinstrument import Profiler

            self.profiler = Profiler(interval=0.001, async_mode="disabled")
        elif kind == "yappi":
            import yappi

            yappi.stop()
            yappi.clear_stats()
            yappi.set_clock_type("wall")

    @contextlib.contextmanager
    def on(self) -> Any:
        if self.kind == "pyinstrument":
            self.profiler.start()
        elif self.kind == "yappi":
            import yappi

            yappi.start(builtins=False, profile_threads=False)
        try:
            yield
        finally:
            if self.kind == "pyinstrument":
                self.profiler.stop()
            elif self.kind == "yappi":
                import yappi

                yappi.stop()

    def write(self, out: Path) -> list[Path]:
        if self.kind == "pyinstrument" and self.profiler.last_session is not None:
            html = out / "client.html"
            files.write_text(html, self.profiler.output_html())
            return [html]
        if self.kind == "yappi":
            import yappi

            stats = yappi.get_func_stats()
            try:
                stats.save(str(out / "client.pstat"), type="pstat")
            except OSError as e:
                raise files.WriteError(f"cannot write {out / 'client.pstat'}: "
                                       f"{files.describe(e)}") from None
            text = io.StringIO()
            text.write("client (this harness process), yappi wall clock, the measured "
                       "requests only\n")
            stats.sort("ttot", "desc").print_all(out=text, columns={
                0: ("name", 100), 1: ("ncall", 8), 2: ("tsub", 10), 3: ("ttot", 10),
                4: ("tavg", 10)})
            yappi.get_thread_stats().print_all(out=text)
            yappi.clear_stats()
            files.write_text(out / "client.txt", text.getvalue())
            return [out / "client.pstat", out / "client.txt"]
        return []
