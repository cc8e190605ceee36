"""benchmarks/speed (see its README or module docstrings)."""
