"""infbench: a benchmark lab for Python ML inference servers."""

__version__ = "0.1.0"
