"""Shared pytest setup."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; registering here keeps `--strict-markers` happy when the
    # tests are run with another config (or none).
    config.addinivalue_line("markers", "integration: starts real servers")
    config.addinivalue_line("markers", "docker: needs a Docker engine (INFBENCH_DOCKER_TESTS=1)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The real-engine tests build an image and run containers (minutes, root, an engine):
    # opt-in, so `make test` stays fast and needs no Docker.
    if os.environ.get("INFBENCH_DOCKER_TESTS") == "1":
        return
    skip = pytest.mark.skip(reason="needs a Docker engine: set INFBENCH_DOCKER_TESTS=1 "
                            "(make test-docker; make docker-engine starts one)")
    for item in items:
        if item.get_closest_marker("docker") is not None:
            item.add_marker(skip)
