"""The request a variant's Locust users send, written out for a dedicated tool to replay.

    python loadtests/request_dump.py <locustfile> <out folder>

Run with the same environment as a Locust step (infbench/measure/load.py's `locust_env` plus the
variant's own load env), it imports the variant's Locust file exactly as Locust would, so the
body is the one the users build (the template logic stays in the Locust files, once), and
writes to the folder:

  request.body   the body of one request, as the users send it
  request.json   {"protocol": "http" | "grpc", "method", "path", "headers", "ok_status",
                  "target" (gRPC: host:port), "body_file", "notes": [what a replay of this
                  one request does not do that the users do]}

It knows the two shapes of our Locust files: the shared locustfile (BODY, HEADERS, PATH,
REQUEST) and the TF-Serving users (PAYLOAD, IS_GRPC, REST_PATH, PREDICT_METHOD, GRPC_HOST).
Any other file: one line on stderr, exit 2.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _import(locustfile: Path) -> Any:
    sys.path[:0] = [str(locustfile.parent), str(ROOT)]
    name = locustfile.stem
    spec = importlib.util.spec_from_file_location(name, locustfile)
    if spec is None or spec.loader is None:
        raise SystemExit(f"request_dump: cannot import {locustfile}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as Locust has it: a file that imports `locustfile` gets this
    spec.loader.exec_module(module)
    return module


def describe(m: Any) -> tuple[dict[str, Any], bytes]:
    """What one request of the module's users is, and its body."""
    notes: list[str] = []
    if hasattr(m, "PAYLOAD") and hasattr(m, "IS_GRPC"):  # loadtests/tfserving_users.py
        if getattr(m, "UNIQUE", False):
            notes.append("the users send a different body every request (REPEAT=0); the "
                         "tool replays the first one")
        if m.IS_GRPC:
            return ({"protocol": "grpc", "method": "POST", "path": m.PREDICT_METHOD,
                     "target": m.GRPC_HOST, "ok_status": [0],
                     "headers": {"content-type": "application/grpc", "te": "trailers"},
                     "notes": notes}, bytes(m.PAYLOAD.fixed))
        return ({"protocol": "http", "method": "POST", "path": m.REST_PATH, "ok_status": [200],
                 "headers": dict(m.REST_HEADERS), "notes": notes},
                bytes(m.PAYLOAD.fixed))
    if all(hasattr(m, a) for a in ("BODY", "HEADERS", "PATH", "REQUEST")):  # locustfile.py
        if getattr(m, "RATE", 0) > 0:
            notes.append("the profile is open loop; the tool runs closed loop")
        if getattr(m, "FEEDBACK_WEIGHT", 0):
            notes.append("the users also POST /feedback; the tool sends the predict request "
                         "only")
        if getattr(m, "ON_START", ""):
            notes.append(f"the users GET {m.ON_START} once each first; the tool does not")
        return ({"protocol": "http", "method": m.REQUEST.method, "path": m.PATH,
                 "headers": dict(m.HEADERS), "ok_status": list(m.REQUEST.ok_status),
                 "notes": notes}, bytes(m.BODY))
    raise SystemExit(f"request_dump: {m.__file__} has no request a tool can replay (neither "
                     "the shared locustfile's BODY/HEADERS/PATH nor the TF-Serving users' "
                     "PAYLOAD)")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: request_dump.py <locustfile> <out folder>", file=sys.stderr)
        return 2
    out = Path(argv[1])
    spec, body = describe(_import(Path(argv[0]).resolve()))
    (out / "request.body").write_bytes(body)
    spec["body_file"] = "request.body"
    spec["body_bytes"] = len(body)
    (out / "request.json").write_text(json.dumps(spec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
