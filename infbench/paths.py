"""Where things are: the checkout, its build folder, and the one host our services bind."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
HOST = "127.0.0.1"
