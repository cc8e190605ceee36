"""benchmarks/accuracy (see its README or module docstrings)."""
