"""Numpy-only calibration maths shared by server and client: alignment, clock sync, latency."""
