"""Shared pytest setup: the test pyramid's markers (from the folders), and the rule for tests
whose system package is missing (tests/fixtures/system.py)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.fixtures.system import INSTALL, SKIP_PREFIX, require, require_torch

HERE = Path(__file__).parent
# Folder -> marker: `-m "not integration"` selects the unit tests however they are collected.
FOLDER_MARKS = {"unit": "unit", "integration": "integration", "slow": "slow", "docker": "docker",
                "peers": "peers", "torch": "torch"}


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; registering here keeps `--strict-markers` happy when the
    # tests are run with another config (or none).
    for line in ("unit: no servers, no TensorFlow processes (tests/unit/)",
                 "integration: starts real servers, Locust and mprof (tests/integration/)",
                 "slow: the longest studies, minutes each (tests/slow/, make test-slow)",
                 "docker: needs a Docker engine (tests/docker/, make test-docker)",
                 "peers: the peer serving stacks in their own environments (tests/peers/, "
                 "make test-peers)",
                 "torch: needs PyTorch, the optional environment (tests/torch/, make torch, "
                 "make test-torch)",
                 "requires(*packages): Debian packages the test needs (make system)",
                 "serial: measures time or memory; run alone, after the parallel part"):
        config.addinivalue_line("markers", line)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        path = Path(str(item.path)).resolve()
        rel = path.relative_to(HERE.resolve()).parts if path.is_relative_to(HERE.resolve()) else ()
        mark = FOLDER_MARKS.get(rel[0]) if len(rel) > 1 else None
        if mark:
            item.add_marker(mark)
            if mark in {"slow", "docker", "peers", "torch"}:
                item.add_marker("integration")
    # The real-engine tests build an image and run containers (minutes, root, an engine):
    # they run only when asked for (make test-docker sets INFBENCH_DOCKER_TESTS=1).
    if os.environ.get("INFBENCH_DOCKER_TESTS") != "1":
        for item in items:
            if item.get_closest_marker("docker") is not None:
                item.add_marker(pytest.mark.skip(reason="needs a Docker engine: make test-docker "
                                                 "(make docker-engine starts one)"))


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("requires"):
        require(*mark.args)
    if item.get_closest_marker("torch") is not None:
        require_torch()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every skip said: one line for the tests skipped for a missing package (xdist sends the
    reports here), one line per other reason."""
    packages: set[str] = set()
    count = 0
    other: dict[str, int] = {}
    for rep in terminalreporter.stats.get("skipped", []):
        longrepr = getattr(rep, "longrepr", None)
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr or "")
        found = re.search(rf"{SKIP_PREFIX} ([^:]+):", reason)
        if found:
            count += 1
            packages.update(p.strip() for p in found.group(1).split(","))
        else:
            reason = reason.removeprefix("Skipped: ")
            other[reason] = other.get(reason, 0) + 1
    if count:
        terminalreporter.write_line(
            f"infbench: {count} test(s) skipped: missing system package(s) "
            f"{', '.join(sorted(packages))}; install with {INSTALL}", yellow=True, bold=True)
    for reason, n in sorted(other.items()):
        terminalreporter.write_line(f"infbench: {n} test(s) skipped: {reason}", yellow=True)
