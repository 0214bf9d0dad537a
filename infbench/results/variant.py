"""A variant folder, loaded once: each artifact is read on first use and kept.

Building one report asks the same files many questions (the summary, the breakdown, the
verdict, the plots): through one `VariantFiles` each file is read and parsed at most once, by
its one reader (infbench/results/readers.py and samples.py). The figures themselves are
computed in analysis/ from what this holds; nothing here interprets them.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from infbench.results import readers, samples


class VariantFiles:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self._mprofs: dict[Path, samples.Mprof] = {}
        self._json: dict[str, dict[str, Any] | None] = {}

    @property
    def name(self) -> str:
        return self.dir.name

    @cached_property
    def phases(self) -> dict[str, Any]:
        """phases.json, version-checked and migrated (a ReadError if it cannot be read)."""
        return readers.phases_json(self.dir)

    @cached_property
    def processes(self) -> list[dict[str, Any]]:
        """processes.csv rows ([] without a sampler)."""
        return samples.process_rows(self.dir / "processes.csv")

    @cached_property
    def process_totals(self) -> list[dict[str, Any]]:
        """processes.csv summed over processes, per sample time."""
        return samples.totals(self.processes)

    @cached_property
    def probes(self) -> tuple[dict[int, list[dict[str, Any]]], list[dict[str, Any]]]:
        """probes-<pid>.jsonl of every process: samples by pid, and the events."""
        return samples.read_probes(self.dir)

    @cached_property
    def outside(self) -> list[dict[str, Any]]:
        """outside.jsonl rows of every replica, in time order."""
        return samples.outside_rows(self.dir)

    def mprof(self, relative: str = "mprofile.dat") -> samples.Mprof:
        """An mprofile.dat of this variant (its own, or a replica's: "model-0/mprofile.dat");
        an empty Mprof when the file is missing. The same object on every call: read it,
        never change it."""
        path = self.dir / relative
        if path not in self._mprofs:
            self._mprofs[path] = samples.parse_mprof(path)
        return self._mprofs[path]

    def json(self, name: str) -> dict[str, Any] | None:
        """A JSON object of the folder (manifest.json, model_alone.json); None when it is
        missing, unreadable or not an object, which each caller treats as "not recorded"."""
        if name not in self._json:
            try:
                data = json.loads((self.dir / name).read_text())
            except (OSError, ValueError):
                data = None
            self._json[name] = data if isinstance(data, dict) else None
        return self._json[name]


def files_of(folder: Path | VariantFiles) -> VariantFiles:
    """A folder as VariantFiles (the same object when it is one already)."""
    return folder if isinstance(folder, VariantFiles) else VariantFiles(folder)
