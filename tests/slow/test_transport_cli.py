"""The transport study through the CLI, on tiny settings: the TF-Serving-compatible server under
REST and gRPC users whose Locust counts agree with the server's own timing lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infbench.analysis import summary
from infbench.paths import ROOT
from infbench.results import samples
from tests.fixtures.helpers import the_run

pytestmark = pytest.mark.integration

REST = ("tfs-rest-row", "tfs-rest-b64")
GRPC = ("tfs-grpc-tensor", "tfs-grpc-string")


def run_transport(tmp: Path, variants: tuple[str, ...]) -> tuple[Path, Any]:
    res = subprocess.run([sys.executable, "-m", "infbench", "--results", str(tmp / "r"), "run",
                          *variants, "--profile", "transport-smoke"],
                         cwd=ROOT, capture_output=True, text=True, timeout=400)
    return the_run(tmp / "r"), res


def check_users_agree_with_the_server(run_dir: Path, res: Any, variants: tuple[str, ...]) -> None:
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for v in variants:
        d = run_dir / v
        timings = summary.read_timings(d)
        protocol = "grpc" if "grpc" in v else "rest"
        assert timings and {t["protocol"] for t in timings} == {protocol}
        for step in (1, 2):
            batch = 1 if step == 1 else 4
            stats = samples.locust_aggregate(d / f"step{step}-b{batch}_stats.csv")
            assert stats is not None and stats["requests"] > 0 and stats["failures"] == 0
            served = [t for t in timings if t.get("batch") == batch and t.get("ok")]
            assert len(served) == stats["requests"], (v, step)
        for suffix in ("_stats.csv", "_stats_history.csv", "_failures.csv", "_exceptions.csv"):
            assert (d / f"step1-b1{suffix}").exists()
        assert (d / "time_split.png").stat().st_size > 0
        cpu = json.loads((d / "summary.json").read_text())["services"]["tfs"]["steps"]
        assert all(st["cpu_pct"] is not None and st["cpu_pct"] > 0 for st in cpu)
    text = (run_dir / "summary.md").read_text()
    assert "## Ranking by images/s at each batch size" in text
    assert "decode" in text and "serialize" in text  # the server's split per step


# A class each, so that pytest-xdist (--dist loadscope) runs the two runs on two workers; the
# fixtures are class-scoped, so each run happens once.
@pytest.fixture(scope="class")
def rest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return run_transport(tmp_path_factory.mktemp("rest"), REST)


@pytest.fixture(scope="class")
def grpc(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return run_transport(tmp_path_factory.mktemp("grpc"), GRPC)


class TestRest:
    def test_rest_users_agree_with_the_server(self, rest: tuple[Path, Any]) -> None:
        check_users_agree_with_the_server(*rest, REST)


class TestGrpc:
    def test_grpc_users_agree_with_the_server(self, grpc: tuple[Path, Any]) -> None:
        check_users_agree_with_the_server(*grpc, GRPC)
