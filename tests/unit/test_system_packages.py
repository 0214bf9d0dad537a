"""The set-up's package list and the tests' own checks are one list, and a test whose package is
missing is skipped with one summary line, or, under CI, fails naming the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from infbench.paths import ROOT
from tests.fixtures.system import PACKAGES

SCRIPT = ROOT / "scripts" / "system-packages.sh"


def listed(which: str) -> list[str]:
    res = subprocess.run([str(SCRIPT), "list", which], capture_output=True, text=True,
                         timeout=30, check=True)
    return res.stdout.split()


def test_the_tests_know_exactly_the_packages_the_set_up_installs() -> None:
    assert sorted(listed("test")) == sorted(PACKAGES)
    assert set(listed("run")) < set(listed("test"))


def test_an_unknown_set_is_one_line_and_exit_2() -> None:
    res = subprocess.run([str(SCRIPT), "check", "everything"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 2
    assert res.stderr.strip() == "system-packages: error: unknown set 'everything' (run|test)"


NEEDS = """
import pytest

from tests.fixtures.system import require


@pytest.mark.requires("redis-server")
def test_marked() -> None:
    pass


def test_called() -> None:
    require("gdb", "redis-server")


def test_needs_nothing() -> None:
    pass
"""


def run_pytest(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_needs.py").write_text(NEEDS)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(CI=ci, INFBENCH_TEST_PRETEND_MISSING="redis-server",
               PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.conftest", "-q",
                           "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_needs.py")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_outside_ci_a_missing_package_is_a_skip_and_one_line(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, ci="")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 passed, 2 skipped" in res.stdout
    line = [x for x in res.stdout.splitlines() if x.startswith("infbench: ")]
    assert line == ["infbench: 2 test(s) skipped: missing system package(s) redis-server; "
                    "install with make system (root; make test runs it)"], res.stdout


def test_under_ci_a_missing_package_fails_and_names_it(tmp_path: Path) -> None:
    res = run_pytest(tmp_path, ci="true")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "1 failed, 1 passed, 1 error" in res.stdout  # the marker fails in set-up
    assert res.stdout.count("CI=true and needs the system package redis-server") >= 2
