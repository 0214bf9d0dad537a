"""The scoring study's load: each user POSTs /score for a random entity of the feature store.

Selected by a variant's `[variants.X.load] locustfile = "loadtests/scoring_users.py"`. The
shared locustfile is imported for what every infbench load does - the counts file the harness
reads (started / finished / cut off), the final CSVs, the stable-window ending - so only the
task differs. INFBENCH_ENTITIES: how many entities were seeded (ids 0..N-1); ids at or above it
are sent on purpose by INFBENCH_UNKNOWN_SHARE (a fraction, default 0) to measure 404s.
"""

from __future__ import annotations

import json
import os
import random

import locustfile as shared  # loadtests/ is on sys.path: Locust adds the locustfile's folder
from locust import between, task
from locust.exception import StopUser

ENTITIES = int(os.environ.get("INFBENCH_ENTITIES", "1000") or 1000)
UNKNOWN_SHARE = float(os.environ.get("INFBENCH_UNKNOWN_SHARE", "0") or 0)
JSON = {"Content-Type": "application/json"}


class ScoringClient(shared.LoadUser):
    """POST /score on the user's own keep-alive connection (the shared locustfile's client)."""

    wait_time = between(shared.WAIT_MIN, shared.WAIT_MAX)

    @task
    def score(self) -> None:
        if shared._counts["test_stopping"] is not None:
            raise StopUser()
        unknown = random.random() < UNKNOWN_SHARE
        entity = ENTITIES + random.randrange(1000) if unknown else random.randrange(ENTITIES)
        # As requests encodes json=: json.dumps with its default separators, no NaN.
        body = json.dumps({"entity_id": entity}, allow_nan=False).encode()
        self.request("POST", shared.prepare("POST", "/score", self.conn.host, body, JSON),
                     "/score", (404,) if unknown else (200,))
