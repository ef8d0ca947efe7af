"""Benchmarks of fabmurder's parts (run as ``python -m benchmarks.<name>``)."""
