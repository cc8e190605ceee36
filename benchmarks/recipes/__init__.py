"""benchmarks/recipes (see its README or module docstrings)."""
