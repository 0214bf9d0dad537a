"""Shared pytest setup."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; registering here keeps `--strict-markers` happy when the
    # tests are run with another config (or none).
    config.addinivalue_line("markers", "integration: starts real servers")
