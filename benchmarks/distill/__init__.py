"""benchmarks/distill (see its README or module docstrings)."""
