"""The TCP segments of a classic libpcap file (what `tcpdump -w` writes): our own reader.

A sample file like the others (results/samples.py), so it lives at the bottom layer; the flows
and what they say are infbench/analysis/wire.py's. What it reads:

  file header   magic a1b2c3d4 (microsecond stamps) or a1b23c4d (nanosecond), either byte
                order; version 2.4; snap length; link type
  link types    1 EN10MB (Linux's `lo` as tcpdump -i lo sees it: Ethernet with zero MACs),
                0 NULL and 108 LOOP (BSD loopback), 101 RAW / 228 IPV4 / 229 IPV6 (bare IP),
                113 LINUX_SLL and 276 LINUX_SLL2 (`-i any`); 802.1Q tags are skipped
  network       IPv4 (options skipped; fragments after the first ignored) and IPv6 (the
                fixed header; extension headers before TCP are walked)
  transport     TCP only; anything else is counted, not returned

A record cut short by the end of the file (tcpdump stopped mid-write) is counted as `torn`;
a packet cut by the snap length keeps its true payload length (`length`, from the IP header)
and the bytes that were captured (`data`). Not read: pcapng (tcpdump writes it only when asked).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from pathlib import Path

FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10

_MAGICS = {0xA1B2C3D4: 1e-6, 0xA1B23C4D: 1e-9}
_ETHER, _NULL, _LOOP, _RAW, _IPV4, _IPV6, _SLL, _SLL2 = 1, 0, 108, 101, 228, 229, 113, 276
_IPV6_EXT = {0, 43, 60}  # hop-by-hop, routing, destination options: walked to reach TCP


class PcapError(ValueError):
    """A file that is not a pcap this reader knows; one line, naming the file."""


@dataclass(frozen=True)
class Segment:
    t: float            # capture time, seconds since the epoch (the run's clock)
    src: str
    sport: int
    dst: str
    dport: int
    seq: int
    ack: int
    flags: int
    length: int         # payload bytes on the wire (from the IP lengths)
    data: bytes         # the payload bytes captured (fewer than `length` past the snap length)


@dataclass
class Capture:
    segments: list[Segment] = field(default_factory=list)
    linktype: int = 0
    snaplen: int = 0
    packets: int = 0     # records in the file
    other: int = 0       # records that were not TCP over IP
    torn: int = 0        # a last record cut short by the end of the file


def _ip_payload(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(IP version, the IP packet) of one link-layer frame, or None if it holds no IP."""
    if linktype == _ETHER:
        off, ethertype = 14, int.from_bytes(frame[12:14], "big") if len(frame) >= 14 else 0
        while ethertype in (0x8100, 0x88A8) and len(frame) >= off + 4:  # VLAN tags
            ethertype = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
        version = {0x0800: 4, 0x86DD: 6}.get(ethertype)
        return (version, frame[off:]) if version else None
    if linktype in (_NULL, _LOOP):
        if len(frame) < 4:
            return None
        family = int.from_bytes(frame[:4], "big" if linktype == _LOOP else "little")
        if family > 0xFFFF:  # NULL is host byte order: the writer's may not be ours
            family = int.from_bytes(frame[:4], "big")
        version = 4 if family == 2 else 6 if family in (10, 24, 28, 30) else None
        return (version, frame[4:]) if version else None
    if linktype in (_SLL, _SLL2):
        off, proto = (16, frame[14:16]) if linktype == _SLL else (20, frame[0:2])
        version = {0x0800: 4, 0x86DD: 6}.get(int.from_bytes(proto, "big"))
        return (version, frame[off:]) if version else None
    if linktype in (_RAW, _IPV4, _IPV6):
        version = frame[0] >> 4 if frame else 0
        return (version, frame) if version in (4, 6) else None
    return None


def _tcp(t: float, version: int, ip: bytes) -> Segment | None:
    if version == 4:
        if len(ip) < 20 or ip[9] != 6:
            return None
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        if int.from_bytes(ip[6:8], "big") & 0x1FFF:  # a later fragment: no TCP header in it
            return None
        src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
        tcp, tcp_len = ip[ihl:], total - ihl
    else:
        if len(ip) < 40:
            return None
        nxt, off = ip[6], 40
        tcp_len = int.from_bytes(ip[4:6], "big")
        while nxt in _IPV6_EXT and len(ip) >= off + 2:
            nxt, ext = ip[off], (ip[off + 1] + 1) * 8
            off += ext
            tcp_len -= ext
        if nxt != 6:
            return None
        src, dst = str(ipaddress.IPv6Address(ip[8:24])), str(ipaddress.IPv6Address(ip[24:40]))
        tcp = ip[off:]
    if len(tcp) < 20:
        return None
    sport, dport, seq, ack, off_flags = struct.unpack("!HHIIH", tcp[:14])
    hl = (off_flags >> 12) * 4
    length = max(0, tcp_len - hl)
    return Segment(t=t, src=src, sport=sport, dst=dst, dport=dport, seq=seq,
                   ack=ack, flags=off_flags & 0x3F, length=length, data=tcp[hl:hl + length])


def read(path: Path) -> Capture:
    """Every TCP segment of a pcap file, in file order (a PcapError if it is not one)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise PcapError(f"{path}: cannot read: {e.strerror or type(e).__name__}") from None
    if len(raw) < 24:
        raise PcapError(f"{path}: not a pcap file ({len(raw)} bytes, no file header)")
    for order in ("<", ">"):
        (magic,) = struct.unpack(order + "I", raw[:4])
        if magic in _MAGICS:
            break
    else:
        raise PcapError(f"{path}: not a classic pcap file (magic {raw[:4].hex()}; pcapng is "
                        "not read)")
    unit = _MAGICS[magic]
    _, _, _, _, snaplen, linktype = struct.unpack(order + "HHiIII", raw[4:24])
    cap = Capture(linktype=linktype & 0x0FFFFFFF, snaplen=snaplen)
    record = struct.Struct(order + "IIII")
    pos = 24
    while pos < len(raw):
        if pos + 16 > len(raw):
            cap.torn += 1
            break
        sec, frac, incl, _orig = record.unpack_from(raw, pos)
        pos += 16
        if pos + incl > len(raw):
            cap.torn += 1
            break
        frame = raw[pos:pos + incl]
        pos += incl
        cap.packets += 1
        found = _ip_payload(cap.linktype, frame)
        seg = _tcp(sec + frac * unit, *found) if found else None
        if seg is None:
            cap.other += 1
        else:
            cap.segments.append(seg)
    return cap

