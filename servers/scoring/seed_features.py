"""Fill the feature store: N entities' vectors, deterministic from a seed, into Redis.

    python -m servers.scoring.seed_features --redis-url redis://127.0.0.1:6379/0 \
        --entities 1000 --dim 16 --seed 0

Entity i (0..N-1) gets row i of servers.scoring.common.feature_matrix(N, dim, seed) under
`features:<i>` as packed little-endian float32, and `infbench:features:meta` records what was
written (the layout and why: servers.scoring.common's docstring). Existing keys are
overwritten; keys of a previous, larger seeding are left alone (the harness starts an empty Redis).

Prints one line (what, where, how long) and exits 0; any error is one line on stderr and exit 1.
"""

from __future__ import annotations

import sys
import time

import redis

from servers.scoring.common import (
    FEATURE_DTYPE,
    FEATURES_PREFIX,
    META_KEY,
    encode_features,
    feature_key,
    feature_matrix,
    safe_url,
)
from servers.shared.cli import Parser, positive_int
from servers.shared.errors import reason

PROG = "seed_features"
CONNECT_TIMEOUT_S = 5.0
BATCH = 1000  # SETs per pipeline round trip


def _parser() -> Parser:
    p = Parser(prog=f"python -m servers.scoring.{PROG}", program=PROG,
               description="Write deterministic feature vectors into Redis.")
    p.add_argument("--redis-url", required=True, help="redis://host:port/db")
    p.add_argument("--entities", type=positive_int, default=1000)
    p.add_argument("--dim", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=0)
    return p


def seed(client: redis.Redis, entities: int, dim: int, seed_value: int) -> None:
    vectors = feature_matrix(entities, dim, seed_value)
    for start in range(0, entities, BATCH):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(start + BATCH, entities)):
            pipe.set(feature_key(i), encode_features(vectors[i]))
        pipe.execute()
    client.hset(META_KEY, mapping={
        "entities": entities, "dim": dim, "seed": seed_value, "dtype": FEATURE_DTYPE,
        "prefix": FEATURES_PREFIX, "written_at": round(time.time(), 3),
    })


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    started = time.perf_counter()
    url = safe_url(args.redis_url)
    try:
        client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                                      socket_timeout=CONNECT_TIMEOUT_S)
    except ValueError as exc:
        print(f"{PROG}: error: bad --redis-url {url!r}: {exc}", file=sys.stderr)
        return 1
    try:
        client.ping()
    except redis.RedisError as exc:
        print(f"{PROG}: error: cannot reach Redis at {url}: {reason(exc)}", file=sys.stderr)
        return 1
    try:
        seed(client, args.entities, args.dim, args.seed)
    except redis.RedisError as exc:
        print(f"{PROG}: error: writing to Redis at {url} failed: {reason(exc)}",
              file=sys.stderr)
        return 1
    finally:
        client.close()
    last = feature_key(args.entities - 1)
    print(f"seeded {args.entities} entities x {args.dim} float32 ({4 * args.dim} B each, "
          f"seed {args.seed}) as {feature_key(0)}..{last} + {META_KEY} in {url} "
          f"in {time.perf_counter() - started:.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
