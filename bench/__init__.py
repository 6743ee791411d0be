"""Benchmarks: `python -m bench` runs them all; each module runs on its own too."""
