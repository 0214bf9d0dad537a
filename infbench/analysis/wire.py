"""The wire view of a step: TCP connections rebuilt from a packet capture, and what they say.

Pure functions over the segments of a pcap file (infbench/results/pcap.py reads it; the
capture is infbench/measure/capture.py's). The client of a connection is the side whose peer
port is one of the captured services' ports.

Per connection: the handshake (SYN -> SYN/ACK -> the client's ACK, on the capture's clock,
which on loopback is both ends'), its exchanges, retransmissions (a segment whose bytes were
all seen before) and resets. An HTTP/1.1 exchange is a *turn*: the client's payload bytes up
to the server's first payload byte are the request, the server's up to the client's next
payload byte the response (no pipelining: Locust and our clients never pipeline). Each side's
head is read from the captured bytes (`\\r\\n\\r\\n`; a head longer than the snap length is
counted as unknown) and the body is the rest of the turn's bytes. HTTP/2 (gRPC) multiplexes
streams on one connection, so turns are not requests there: its connections give bytes and
segments only, said as such.

Per response:
  server time     the request's last byte -> the response's first byte
  exchange time   the request's first byte -> the response's last byte
  stall           a delayed-ACK stall: a segment of the response after the first was sent
                  STALL_MS or more after the one before it, and within ACK_FOLLOW_MS of the
                  client's ACK that covered every byte sent before it (so the server held it
                  until that ACK came: Nagle's algorithm meeting the client's delayed ACK)

Findings, per service and step:
  delayed_ack_stall   at least STALL_MIN stalled responses, and STALL_SHARE of them
  connection_churn    CHURN_MIN_CONNECTIONS or more connections carrying at most
                      CHURN_REQUESTS requests each on average, while most requests asked to be
                      kept alive (HTTP/1.1 without `Connection: close`)
  handshake_share     the handshakes' time over handshakes + exchanges above HANDSHAKE_SHARE
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass, field
from typing import Any

from infbench.analysis.stability import percentile
from infbench.results.pcap import ACK, FIN, RST, SYN, Capture, Segment

STALL_MS = 30.0
ACK_FOLLOW_MS = 5.0
STALL_MIN = 2
STALL_SHARE = 0.01
CHURN_REQUESTS = 1.5
CHURN_MIN_CONNECTIONS = 5
HANDSHAKE_SHARE = 0.10
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_HEAD = 65536


def _after(a: int, b: int) -> int:
    """a - b in sequence space (mod 2**32), signed."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d


@dataclass
class Side:
    """One direction's bytes of one turn."""
    start: float = 0.0
    end: float = 0.0
    bytes: int = 0
    segments: list[tuple[float, int]] = field(default_factory=list)  # (time, seq after it)
    head: bytearray = field(default_factory=bytearray)
    whole: bool = True  # every byte so far captured, so `head` is the stream's start


@dataclass
class Exchange:
    request: Side
    response: Side | None = None
    stall_ms: float | None = None


@dataclass
class Connection:
    client: tuple[str, int]
    server: tuple[str, int]
    syn_t: float | None = None
    syn_seq: int | None = None
    synack_t: float | None = None
    established_t: float | None = None
    exchanges: list[Exchange] = field(default_factory=list)
    unanswered_bytes: int = 0  # server bytes before any request (mid-response at the start)
    next_seq: dict[str, int] = field(default_factory=dict)
    acks_t: list[float] = field(default_factory=list)  # the client's ACKs, in time order
    acks: list[int] = field(default_factory=list)
    retransmissions: int = 0
    resets: int = 0
    fins: int = 0
    bytes: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})
    segments: dict[str, int] = field(default_factory=lambda: {"up": 0, "down": 0})

    @property
    def handshake_ms(self) -> float | None:
        if self.syn_t is None or self.established_t is None:
            return None
        return (self.established_t - self.syn_t) * 1000.0

    @property
    def protocol(self) -> str:
        if not self.exchanges:
            return "-"
        first = self.exchanges[0].request
        if not first.whole and not first.head:
            return "unknown"
        return "h2" if bytes(first.head[:len(H2_PREFACE)]) == H2_PREFACE else "http/1.1"

    def take(self, s: Segment, up: bool) -> None:
        d = "up" if up else "down"
        if s.flags & RST:
            self.resets += 1
        if s.flags & FIN:
            self.fins += 1
        if s.flags & SYN:
            if up and not s.flags & ACK:
                if self.syn_t is None:
                    self.syn_t, self.syn_seq = s.t, s.seq
                else:
                    self.retransmissions += 1
            elif not up and s.flags & ACK and self.synack_t is None:
                self.synack_t = s.t
            self.next_seq[d] = (s.seq + 1) & 0xFFFFFFFF
            return
        if up and s.flags & ACK:
            if self.synack_t is not None and self.established_t is None:
                self.established_t = s.t
            self.acks_t.append(s.t)
            self.acks.append(s.ack)
        if s.length == 0:
            return
        end = (s.seq + s.length) & 0xFFFFFFFF
        if d not in self.next_seq:
            self.next_seq[d] = s.seq
        new = _after(end, self.next_seq[d])
        if new <= 0:
            self.retransmissions += 1
            return
        self.next_seq[d] = end
        self.bytes[d] += min(new, s.length)
        self.segments[d] += 1
        if up:
            last = self.exchanges[-1] if self.exchanges else None
            if last is None or last.response is not None:
                last = Exchange(request=Side(start=s.t))
                self.exchanges.append(last)
            _add(last.request, s, new, end)
        elif not self.exchanges:
            self.unanswered_bytes += new
        else:
            last = self.exchanges[-1]
            if last.response is None:
                last.response = Side(start=s.t)
            _add(last.response, s, new, end)

    def judge_stalls(self) -> None:
        """Mark each response that waited for the client's delayed ACK (see the module)."""
        for ex in self.exchanges:
            r = ex.response
            if r is None:
                continue
            for (t_prev, seq_prev), (t_k, _) in zip(r.segments, r.segments[1:], strict=False):
                if (t_k - t_prev) * 1000.0 < STALL_MS:
                    continue
                i = bisect.bisect_right(self.acks_t, t_prev)
                while i < len(self.acks_t) and self.acks_t[i] <= t_k:
                    if _after(self.acks[i], seq_prev) >= 0:
                        waited = (self.acks_t[i] - t_prev) * 1000.0
                        if waited >= STALL_MS and (t_k - self.acks_t[i]) * 1000.0 \
                                <= ACK_FOLLOW_MS:
                            ex.stall_ms = max(ex.stall_ms or 0.0, (t_k - t_prev) * 1000.0)
                        break
                    i += 1


def _add(side: Side, s: Segment, new: int, end: int) -> None:
    side.end = s.t
    side.bytes += min(new, s.length)
    side.segments.append((s.t, end))
    if side.whole and len(side.head) < MAX_HEAD:
        if new < s.length:  # overlaps bytes seen: only the new tail is this turn's
            side.head += s.data[s.length - new:]
        else:
            side.head += s.data
        if len(s.data) < s.length:
            side.whole = False  # cut by the snap length: what follows is not contiguous


def connections(segments: list[Segment], ports: set[int]) -> list[Connection]:
    """The TCP connections to `ports` in a capture, in the order they were first seen."""
    open_: dict[tuple[str, int, str, int], Connection] = {}
    done: list[Connection] = []
    for s in sorted(segments, key=lambda x: x.t):
        if s.dport in ports:
            key, up = (s.src, s.sport, s.dst, s.dport), True
        elif s.sport in ports:
            key, up = (s.dst, s.dport, s.src, s.sport), False
        else:
            continue
        conn = open_.get(key)
        fresh_syn = up and s.flags & SYN and not s.flags & ACK
        if conn is not None and fresh_syn and conn.syn_seq != s.seq:
            done.append(conn)  # the port used again: a new connection
            conn = None
        if conn is None:
            conn = Connection(client=(key[0], key[1]), server=(key[2], key[3]))
            open_[key] = conn
        conn.take(s, up)
    found = sorted([*done, *open_.values()], key=lambda c: _first_seen(c))
    for c in found:
        c.judge_stalls()
    return found


def _first_seen(c: Connection) -> float:
    times = [t for t in (c.syn_t, c.exchanges[0].request.start if c.exchanges else None)
             if t is not None]
    return min(times) if times else float("inf")


# -- HTTP/1.1 heads -------------------------------------------------------------------------
def head_of(buf: bytes | bytearray) -> tuple[int, str, dict[str, str]] | None:
    """(head length, first line, headers lower-cased) of an HTTP/1 message, or None when its
    end is not in `buf`."""
    end = bytes(buf).find(b"\r\n\r\n")
    if end < 0:
        return None
    text = bytes(buf[:end]).decode("latin-1")
    first, *rest = text.split("\r\n")
    headers: dict[str, str] = {}
    for line in rest:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return end + 4, first, headers


def asks_keepalive(first: str, headers: dict[str, str]) -> bool:
    conn = headers.get("connection", "").lower()
    if first.rstrip().endswith("HTTP/1.0"):
        return "keep-alive" in conn
    return "close" not in conn


# -- figures --------------------------------------------------------------------------------
def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def _mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def figures(conns: list[Connection]) -> dict[str, Any]:
    """The wire figures of one service's connections in one step."""
    http = [c for c in conns if c.protocol == "http/1.1"]
    h2 = [c for c in conns if c.protocol == "h2"]
    exchanges = [ex for c in http for ex in c.exchanges if ex.response is not None]
    heads: dict[str, list[int]] = {"req_head": [], "req_body": [], "resp_head": [],
                                   "resp_body": []}
    keepalive = 0
    for ex in exchanges:
        assert ex.response is not None
        for side, name in ((ex.request, "req"), (ex.response, "resp")):
            found = head_of(side.head)
            if found is None:
                continue
            heads[f"{name}_head"].append(found[0])
            heads[f"{name}_body"].append(side.bytes - found[0])
            if name == "req" and asks_keepalive(found[1], found[2]):
                keepalive += 1
    server_ms = [(ex.response.start - ex.request.end) * 1000.0
                 for ex in exchanges if ex.response is not None]
    exchange_ms = [(ex.response.end - ex.request.start) * 1000.0
                   for ex in exchanges if ex.response is not None]
    segs = [len(ex.response.segments) for ex in exchanges if ex.response is not None]
    handshakes = [h for c in conns if (h := c.handshake_ms) is not None]
    stalls = [ex.stall_ms for ex in exchanges if ex.stall_ms is not None]
    with_requests = [c for c in http if c.exchanges]
    hs_http = sum(h for c in http if (h := c.handshake_ms) is not None)
    busy = hs_http + sum(exchange_ms)
    return {
        "connections": len(conns),
        "opened": sum(1 for c in conns if c.syn_t is not None),
        "protocols": sorted({c.protocol for c in conns}),
        "handshake_ms": {"p50": _r(percentile(handshakes, 0.5), 3),
                         "max": _r(max(handshakes), 3) if handshakes else None},
        "requests": len(exchanges) if http else None,
        "requests_per_connection": _r(len(exchanges) / len(with_requests))
        if with_requests else None,
        "keepalive_asked": _r(keepalive / len(heads["req_head"]))
        if heads["req_head"] else None,
        "heads_unknown": len(exchanges) * 2 - len(heads["req_head"]) - len(heads["resp_head"]),
        "request_bytes": {"head": _r(_mean([float(x) for x in heads["req_head"]]), 1),
                          "body": _r(_mean([float(x) for x in heads["req_body"]]), 1)},
        "response_bytes": {"head": _r(_mean([float(x) for x in heads["resp_head"]]), 1),
                           "body": _r(_mean([float(x) for x in heads["resp_body"]]), 1)},
        "segments_per_response": {"mean": _r(_mean([float(x) for x in segs])),
                                  "max": max(segs) if segs else None},
        "server_ms": {"p50": _r(percentile(server_ms, 0.5), 3),
                      "p99": _r(percentile(server_ms, 0.99), 3)},
        "exchange_ms": {"p50": _r(percentile(exchange_ms, 0.5), 3)},
        "handshake_share": _r(hs_http / busy, 4) if busy > 0 else None,
        "stalled_responses": len(stalls),
        "stall_ms_p50": _r(percentile(stalls, 0.5), 1),
        "retransmissions": sum(c.retransmissions for c in conns),
        "resets": sum(c.resets for c in conns),
        "bytes": {"up": sum(c.bytes["up"] for c in conns),
                  "down": sum(c.bytes["down"] for c in conns)},
        "segments": {"up": sum(c.segments["up"] for c in conns),
                     "down": sum(c.segments["down"] for c in conns)},
        "h2_connections": len(h2),
    }


def findings(service: str, f: dict[str, Any]) -> list[dict[str, Any]]:
    """What a service's figures in one step say (see the module for each rule)."""
    out = []
    n = f.get("requests") or 0
    stalled = f.get("stalled_responses") or 0
    if stalled >= STALL_MIN and n and stalled / n >= STALL_SHARE:
        out.append({"kind": "delayed_ack_stall", "service": service, "detail": (
            f"{stalled} of {n} responses ({100 * stalled / n:.0f}%) waited a median "
            f"{f['stall_ms_p50']:.0f} ms for the client's delayed ACK before their last "
            "segment (Nagle's algorithm on the server's socket; Uvicorn --workers N: "
            "uvicorn#3149; INFBENCH_TCP_NODELAY=1 sets TCP_NODELAY in our servers)")})
    rpc = f.get("requests_per_connection")
    ka = f.get("keepalive_asked")
    if rpc is not None and rpc <= CHURN_REQUESTS and \
            f.get("connections", 0) >= CHURN_MIN_CONNECTIONS and ka is not None and ka >= 0.5:
        out.append({"kind": "connection_churn", "service": service, "detail": (
            f"{rpc:.2f} requests per connection over {f['connections']} connections while "
            f"{100 * ka:.0f}% of requests asked for keep-alive: connections are not kept")})
    share = f.get("handshake_share")
    if share is not None and share > HANDSHAKE_SHARE:
        out.append({"kind": "handshake_share", "service": service, "detail": (
            f"TCP handshakes are {100 * share:.0f}% of the time on the wire (handshakes + "
            f"exchanges; over {100 * HANDSHAKE_SHARE:.0f}%)")})
    return out


def step(cap: Capture, ports: dict[int, str]) -> dict[str, Any]:
    """Figures per service of one step's capture, and the findings. `ports`: each captured
    port and the service it belongs to."""
    conns = connections(cap.segments, set(ports))
    by_service: dict[str, list[Connection]] = {}
    for c in conns:
        by_service.setdefault(ports[c.server[1]], []).append(c)
    services = {name: figures(cs) for name, cs in sorted(by_service.items())}
    return {"packets": cap.packets, "tcp_segments": len(cap.segments), "torn": cap.torn,
            "linktype": cap.linktype, "snaplen": cap.snaplen, "services": services,
            "findings": [x for name, f in services.items() for x in findings(name, f)]}
