"""The TF-Serving-compatible server's process: the command line and the environment, the two
listeners, the model load, Uvicorn (`python -m servers.tfserving`; the contract is
servers.tfserving's docstring)."""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

from servers.shared import probes
from servers.shared.cli import Parser
from servers.shared.errors import reason
from servers.shared.settings import CALL_STYLES, SettingsError, load_settings
from servers.tfserving.core import PROG, Core
from servers.tfserving.grpc_api import bind_grpc, serve_grpc
from servers.tfserving.rest import RestApi
from servers.tfserving.servable import Options

DEFAULT_CALL = "predict_on_batch"
DEFAULT_GRPC_THREADS = 8


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port 0-65535, got {text!r}")
    return int(text)


def _version(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 2**63:
        raise argparse.ArgumentTypeError(f"expected a positive version number, got {text!r}")
    return int(text)


def _parser() -> Parser:
    p = Parser(prog=f"python -m {PROG}", program=PROG,
               description="A TensorFlow-Serving-compatible REST + gRPC server for one model "
                           "(INFBENCH_MODEL_PATH).")
    p.add_argument("--rest-port", required=True, type=_port, help="REST port (0: any free)")
    p.add_argument("--grpc-port", required=True, type=_port, help="gRPC port (0: any free)")
    p.add_argument("--model-name", default="default", help="the name clients ask for")
    p.add_argument("--model-version", default=1, type=_version, help="the served version")
    p.add_argument("--host", default="127.0.0.1", help="address both servers bind")
    return p


def options(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Options:
    """The command line and the environment, validated (SettingsError or exit 1)."""
    args = _parser().parse_args(argv)
    env = dict(os.environ) if env is None else env
    if not args.model_name or "/" in args.model_name or ":" in args.model_name:
        raise SettingsError(f"--model-name {args.model_name!r}: must be non-empty, without "
                            "'/' or ':'")
    settings = load_settings(env)
    call = env.get("INFBENCH_CALL", "").strip() or DEFAULT_CALL
    if call not in CALL_STYLES:  # load_settings has checked a set value already
        raise SettingsError(f"INFBENCH_CALL: expected one of {', '.join(CALL_STYLES)}")
    threads_raw = env.get("INFBENCH_GRPC_THREADS", "").strip()
    threads = int(threads_raw) if threads_raw.isdigit() else DEFAULT_GRPC_THREADS
    if threads_raw and (not threads_raw.isdigit() or threads < 1):
        raise SettingsError(f"INFBENCH_GRPC_THREADS: expected a positive integer, "
                            f"got {threads_raw!r}")
    timing = env.get("INFBENCH_TIMING_DIR", "").strip()
    return Options(host=args.host, rest_port=args.rest_port, grpc_port=args.grpc_port,
                   model_name=args.model_name, model_version=args.model_version,
                   settings=settings, call=call, grpc_threads=threads,
                   timing_dir=Path(timing) if timing else None)


def _rest_socket(host: str, port: int) -> socket.socket:
    """Bound here, handed to Uvicorn: port 0 works, and the bound port is known for certain.

    The protocol must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections
    only when their socket says so, and without it each response (headers, then body) waits
    ~40 ms on Nagle and the client's delayed ACK, which would be charged to REST.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot bind REST to {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    try:
        opts = options(argv)
    except SettingsError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    import uvicorn

    core = Core(opts)
    sock = None
    try:
        sock = _rest_socket(opts.host, opts.rest_port)
        core.rest_port = int(sock.getsockname()[1])
        core.grpc_server, core.grpc_port = bind_grpc(core)
        core.timings.create()
    except OSError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        if sock is not None:
            sock.close()
        return 1
    serve_grpc(core, core.grpc_server)
    print(f"{PROG}: REST on http://{opts.host}:{core.rest_port} gRPC on "
          f"{opts.host}:{core.grpc_port} pid={os.getpid()}", file=sys.stderr, flush=True)
    probes.start_from_env()  # INFBENCH_PROBE_DIR: the memory probes' thread (opt-in)
    try:
        # Before Uvicorn listens: /health answers only once the model is warm, while gRPC
        # is already up and says NOT_SERVING.
        core.load()
    except Exception as exc:
        print(f"{PROG}: error: cannot load {opts.settings.model_path}: "
              f"{reason(exc)}",
              file=sys.stderr, flush=True)
        core.shutdown()
        sock.close()
        return 1
    config = uvicorn.Config(RestApi(core).app(), log_level="warning", access_log=False,
                            lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        core.shutdown()  # a no-op after the lifespan's, but covers a failed startup
        sock.close()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())

