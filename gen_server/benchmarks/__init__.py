"""Benchmark scripts: each prints its numbers together with the machine it ran on (``machine.py``)."""
