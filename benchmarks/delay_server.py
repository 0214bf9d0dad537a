"""A server that answers every POST after a fixed delay, all requests concurrently: the load
generator's benchmark target (benchmarks/loadgen_bench.py).

    python -m benchmarks.delay_server --port N [--delay-ms 20]

Plain asyncio, HTTP/1.1 keep-alive, TCP_NODELAY on every connection: it reads the request (its
Content-Length body), sleeps `--delay-ms` without holding anyone else up, and answers
`{"ok": true}`; GET /health answers at once with its pid. So its throughput at N connections
is N / delay, whatever the request, and what a generator reports beside another on it is the
generator's own difference. Bound to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket

MAX_BODY = 64 * 2**20


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 delay: float) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method = lines[0].split(" ", 1)[0]
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length > MAX_BODY:
                writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
                break
            if length:
                await reader.readexactly(length)
            if method == "GET":
                body = json.dumps({"status": "ok", "pid": os.getpid()}).encode()
            elif delay > 0:
                await asyncio.sleep(delay)
                body = b'{"ok": true}'
            else:
                body = b'{"ok": true}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError,
            asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def _main(port: int, delay: float) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, delay), "127.0.0.1", port,
                                        backlog=1024)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay-ms", type=float, default=20.0)
    args = ap.parse_args()
    asyncio.run(_main(args.port, args.delay_ms / 1000.0))


if __name__ == "__main__":
    main()
