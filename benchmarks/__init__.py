"""Benchmarks (never part of the test run): ``python -m benchmarks.pair --shape NAME``."""
