"""`python -m servers.peers.ray --port P`: a local Ray cluster and Serve's HTTP proxy on
127.0.0.1:P serving servers/peers/ray/app.py, until SIGTERM or SIGINT.

Ray's own processes (GCS, raylet, the Serve controller, the proxy and the replica actors) are
started by ray.init() from this process, so they are its descendants: the harness samples them
as the service's. Its session folder is a short one under /tmp (Ray's sockets live there and a
Unix socket path is limited to 107 bytes), removed at exit. /health answers 200 once the
application is running (Serve's own /-/healthz says only that the proxy is up).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import threading


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m servers.peers.ray")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--object-store-mb", type=int, default=128)
    args = p.parse_args(argv)
    stop = threading.Event()
    import ray
    from ray import serve

    from servers.peers.ray.app import app

    session = tempfile.mkdtemp(prefix="infbench-ray-")
    try:
        ray.init(num_cpus=args.num_cpus, include_dashboard=False, _temp_dir=session,
                 _node_ip_address=args.host,
                 object_store_memory=args.object_store_mb * 2**20, log_to_driver=True,
                 configure_logging=False)
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(app, name="infbench", route_prefix="/")
        # After ray.init: its core worker installs a SIGTERM handler that aborts the driver
        # (exit -6, the cluster left to its own shutdown); ours shuts Serve and Ray down.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"ray serve: application running on http://{args.host}:{args.port}",
              flush=True)
        stop.wait()
        serve.shutdown()
        ray.shutdown()
    finally:
        shutil.rmtree(session, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
