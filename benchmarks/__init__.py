"""Benchmarks of the harness itself (not tests): run them under `flock /work/bench.lock`."""
