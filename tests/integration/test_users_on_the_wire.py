"""What the load's users put on the wire: the same requests the requests-based users sent.

Real Locust (the CLI, headless) against a server that records every request as it came off
the socket (tests/fixtures/wire.py). requests itself is the oracle: each recorded request must
have the headers and body that requests would have prepared for the same call (what Locust's
HttpUser sent before the users moved to geventhttpclient), the User-Agent aside. And: one
connection per user (keep-alive), the counts file agrees, failures are classified as before.
"""

from __future__ import annotations

import csv
import email.parser
import email.policy
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from infbench.measure import assets
from infbench.paths import HOST, ROOT
from tests.fixtures.helpers import child_env, free_port, spawn, stop_group, tail
from tests.fixtures.wire import Seen, WireRecorder

pytestmark = pytest.mark.integration

USERS = 2
# Each user must get past its on_start and send every kind of request: 2 s was not enough on a
# starved machine (CI: four Locusts at once, a load average of 15; the image users sent only
# their setup GETs).
RUN_TIME = "5s"
LOADTESTS = ROOT / "loadtests"


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    build = tmp_path_factory.mktemp("wire-build")
    assets.ensure_images(build, count=3)
    return assets.images_dir(build)


def locust(locustfile: str, host: str, out: Path, name: str, images: Path,
           **extra: str) -> subprocess.Popen[bytes]:
    env = child_env(INFBENCH_IMAGES=str(images), INFBENCH_WAIT_MIN="0",
                    INFBENCH_WAIT_MAX="0.05", INFBENCH_COUNTS=str(out / f"{name}-counts.json"),
                    **extra)
    argv = [sys.executable, "-m", "locust", "-f", str(LOADTESTS / locustfile), "--headless",
            "-u", str(USERS), "-r", str(USERS), "-t", RUN_TIME, "--stop-timeout", "5",
            "--host", host, "--csv", str(out / name), "--only-summary", "--loglevel", "WARNING",
            "--exit-code-on-error", "0"]
    return spawn(argv, env, out / f"{name}.log")


def finish(procs: dict[str, subprocess.Popen[bytes]], out: Path) -> None:
    try:
        for proc in procs.values():
            proc.wait(timeout=90)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                stop_group(proc, grace=5)
    for name, proc in procs.items():
        assert proc.returncode == 0, (name, tail(out / f"{name}.log"))


def stats(out: Path, name: str) -> dict[str, dict[str, str]]:
    with (out / f"{name}_stats.csv").open(newline="") as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


def failures(out: Path, name: str) -> list[dict[str, str]]:
    with (out / f"{name}_failures.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def as_requests_would(seen: Seen, url: str, **call: Any) -> None:
    """The recorded request has the line, headers and body that requests prepares for `call`
    (a session's default headers included), but for the User-Agent that names the client."""
    method = seen.line.split(" ", 1)[0]
    session = requests.Session()
    prepared = session.prepare_request(requests.Request(method, url, **call))
    path = prepared.path_url
    assert seen.line == f"{method} {path} HTTP/1.1"
    want = {k.lower(): v for k, v in prepared.headers.items() if k.lower() != "user-agent"}
    want["host"] = url.split("://", 1)[1].split("/", 1)[0]
    got = {k.lower(): v for k, v in seen.headers}
    assert len(got) == len(seen.headers), seen.headers  # no header twice
    assert got.pop("user-agent").startswith("infbench-locust")
    assert got == want, (got, want)
    body = prepared.body or b""
    assert seen.body == (body.encode() if isinstance(body, str) else body)


def parts(seen: Seen) -> Iterator[tuple[str, str, bytes]]:
    """The multipart body's parts: (field, file name, bytes)."""
    head = f"Content-Type: {seen.header('Content-Type')}\r\n\r\n".encode()
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + seen.body)
    for part in msg.iter_parts():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        yield part.get_param("name", header="content-disposition"), part.get_filename(), payload


def test_every_user_sends_what_the_requests_users_sent(images: Path, tmp_path: Path) -> None:
    binary = {"method": "PUT", "path": "/raw", "body": "binary",
              "headers": {"X-Token": "secret"}, "ok_status": [200]}
    with WireRecorder() as image_rec, WireRecorder() as raw_rec, WireRecorder() as score_rec, \
            WireRecorder() as rest_rec:
        procs = {
            "image": locust("locustfile.py", image_rec.url, tmp_path, "image", images,
                            INFBENCH_BATCH="2", INFBENCH_ON_START="/setup",
                            INFBENCH_FEEDBACK_WEIGHT="1"),
            "raw": locust("locustfile.py", raw_rec.url, tmp_path, "raw", images,
                          INFBENCH_REQUEST=json.dumps(binary)),
            "score": locust("scoring_users.py", score_rec.url, tmp_path, "score", images,
                            INFBENCH_UNKNOWN_SHARE="0"),
            "rest": locust("tfserving_users.py", rest_rec.url, tmp_path, "rest", images,
                           INFBENCH_TFS_KIND="rest-b64", INFBENCH_BATCH="2"),
        }
        finish(procs, tmp_path)
    jpegs = {p.name: p.read_bytes() for p in images.glob("*.jpg")}
    first = sorted(jpegs)[:2]

    # Keep-alive: one connection per user, every request of the step on it.
    for rec in (image_rec, raw_rec, score_rec, rest_rec):
        assert rec.connections == USERS
        assert rec.seen

    # The image users: the setup GET once per user, predict (multipart), feedback (json).
    setup = [s for s in image_rec.seen if s.line.startswith("GET ")]
    predict = [s for s in image_rec.seen if s.line.startswith("POST /predict ")]
    feedback = [s for s in image_rec.seen if s.line.startswith("POST /feedback ")]
    assert len(setup) == USERS and predict and feedback
    assert len(setup) + len(predict) + len(feedback) == len(image_rec.seen)
    for s in setup:
        as_requests_would(s, f"{image_rec.url}/setup")
    assert len({(s.headers, s.body) for s in predict}) == 1  # one body, prepared once
    assert [(f, n, b) for f, n, b in parts(predict[0])] == [("images", n, jpegs[n])
                                                            for n in first]
    as_requests_would(predict[0], f"{image_rec.url}/predict", data=predict[0].body,
                      headers={"Content-Type": predict[0].header("Content-Type") or ""})
    answered = {f"wire-{i + 1}" for i, s in enumerate(image_rec.seen) if s in predict}
    for s in feedback:
        doc = json.loads(s.body)
        assert set(doc) == {"id", "correct"} and doc["id"] in answered
        as_requests_would(s, f"{image_rec.url}/feedback", json=doc)

    # The binary body, its method and the variant's header.
    for s in raw_rec.seen:
        as_requests_would(s, f"{raw_rec.url}/raw", data=jpegs[first[0]],
                          headers={"X-Token": "secret", "Content-Type": "image/jpeg"})

    # The scoring users: json= bodies as requests encodes them.
    for s in score_rec.seen:
        doc = json.loads(s.body)
        assert 0 <= doc["entity_id"] < 1000
        as_requests_would(s, f"{score_rec.url}/score", json=doc)

    # The TF-Serving REST user: the prepared JSON body, the same every request (REPEAT=1).
    assert len({s.body for s in rest_rec.seen}) == 1
    for s in rest_rec.seen:
        as_requests_would(s, f"{rest_rec.url}/v1/models/default:predict", data=s.body,
                          headers={"Content-Type": "application/json"})
    assert json.loads(rest_rec.seen[0].body)["instances"][0]["b64"]

    # Locust's stats and the counts file: every request, under the same names as before.
    for name, rec, names in (
            ("image", image_rec, {"/predict [batch 2]", "/feedback", "GET /setup"}),
            ("raw", raw_rec, {"/raw [batch 1]"}),
            ("score", score_rec, {"/score"}),
            ("rest", rest_rec, {"/v1/models/default:predict [rest-b64 batch 2]"})):
        rows = stats(tmp_path, name)
        assert set(rows) == {*names, "Aggregated"}, rows.keys()
        assert int(rows["Aggregated"]["Request Count"]) == len(rec.seen), name
        assert int(rows["Aggregated"]["Failure Count"]) == 0, failures(tmp_path, name)
        counts = json.loads((tmp_path / f"{name}-counts.json").read_text())
        step = len(rec.seen) - (USERS if name == "image" else 0)  # the setup GET is not counted
        assert counts["started"] == counts["finished"] == step and counts["failed"] == 0
        with (tmp_path / f"{name}_requests.csv").open(newline="") as f:
            assert sum(1 for _ in csv.DictReader(f)) == len(rec.seen)


def test_failures_are_classified_as_before(images: Path, tmp_path: Path) -> None:
    """A status outside the expected ones: 'HTTP <status>: <the answer>'. No answer at all
    (nothing listens): 'HTTP 0: <the error>', a failed request, not a crashed user."""
    refused = f"http://{HOST}:{free_port()}"
    with WireRecorder(status=503) as rec:
        procs = {
            "unavailable": locust("locustfile.py", rec.url, tmp_path, "unavailable", images),
            "refused": locust("scoring_users.py", refused, tmp_path, "refused", images),
        }
        finish(procs, tmp_path)
    for name, error in (("unavailable", "HTTP 503: {"), ("refused", "HTTP 0: Connection")):
        total = stats(tmp_path, name)["Aggregated"]
        assert int(total["Request Count"]) > 0
        assert total["Failure Count"] == total["Request Count"]
        rows = failures(tmp_path, name)  # one row per message: the answers differ by id
        assert rows and all(error in r["Error"] for r in rows), rows
        assert sum(int(r["Occurrences"]) for r in rows) == int(total["Request Count"])
        counts = json.loads((tmp_path / f"{name}-counts.json").read_text())
        assert counts["started"] == counts["finished"] == counts["failed"] \
            == int(total["Request Count"])
        log = (tmp_path / f"{name}.log").read_text()
        assert "Traceback" not in log, log[-2000:]
    assert rec.connections == USERS  # a 503 keeps the connection
