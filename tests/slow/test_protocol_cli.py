"""TF-Serving REST and gRPC beside V2 REST (binary) and V2 gRPC through the CLI, seconds each on
one server build: the transport study's table ranks all four at each batch size (the server
against the official tritonclient is tests/integration/test_v2_tritonclient.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from infbench.paths import ROOT
from infbench.results import samples
from tests.fixtures.helpers import the_run

pytestmark = pytest.mark.integration

PROTOCOL_VARIANTS = ("tfs-rest-row", "tfs-grpc-tensor", "tfs-v2-rest-binary", "tfs-v2-grpc")


def test_protocol_variants_through_the_cli(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp_path / "r"),
                          "run", *PROTOCOL_VARIANTS, "--profile", "transport-v2-smoke"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run_dir = the_run(tmp_path / "r")
    for v in PROTOCOL_VARIANTS:
        for step, batch in ((1, 1), (2, 2)):
            stats = samples.locust_aggregate(run_dir / v / f"step{step}-b{batch}_stats.csv")
            assert stats is not None and stats["requests"] > 0 and stats["failures"] == 0, v
    text = (run_dir / "summary.md").read_text()
    assert "- status: **complete**" in text
    ranking = text.split("## Ranking by images/s at each batch size", 1)
    assert len(ranking) == 2
    table = ranking[1].split("\n## ", 1)[0]
    for batch in (1, 2):
        rows = [line for line in table.splitlines() if line.startswith(f"| {batch} |")]
        assert sorted(line.split("|")[3].strip() for line in rows) == sorted(PROTOCOL_VARIANTS)
