"""Harness for the end-to-end test against a real OpenXR runtime (Monado in a Debian trixie root)."""
