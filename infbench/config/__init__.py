"""Experiments as data: experiments.toml loaded into frozen dataclasses.

    model.py    the dataclasses and the names they may take
    loader.py   the loader: every table checked, `extends` resolved
    graph.py    a variant's services as a graph (placeholders, dependencies, start order)
    servers.py  the server kinds and our apps, one registration each
    schedule.py open-loop arrival schedules

This module is the package's interface: `from infbench import config; config.load(...)`.
"""

from __future__ import annotations

from infbench.config.graph import (
    start_order,
)
from infbench.config.loader import (
    _check,
    external_url,
    load,
)
from infbench.config.model import (
    ALLOCATORS,
    B64_MARK,
    BATCH_MARK,
    DEFAULT_IMAGE_SIZE,
    DEFAULT_WINDOW_S,
    IMAGES_MARK,
    MAX_IMAGES_ENV,
    NAME_MARK,
    PIXELS_MARK,
    TORCH_NOT_INSTALLED,
    ConfigError,
    Experiments,
    Model,
    Profile,
    Request,
    Service,
    Step,
    Variant,
    as_dict,
    auto_window,
    fingerprint,
    one_service,
    torch_installed,
    with_server,
)

__all__ = [
    "ALLOCATORS",
    "B64_MARK",
    "BATCH_MARK",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_WINDOW_S",
    "IMAGES_MARK",
    "MAX_IMAGES_ENV",
    "NAME_MARK",
    "PIXELS_MARK",
    "TORCH_NOT_INSTALLED",
    "ConfigError",
    "Experiments",
    "Model",
    "Profile",
    "Request",
    "Service",
    "Step",
    "Variant",
    "_check",
    "as_dict",
    "auto_window",
    "external_url",
    "fingerprint",
    "load",
    "one_service",
    "start_order",
    "torch_installed",
    "with_server",
]
