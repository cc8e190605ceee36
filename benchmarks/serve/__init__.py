"""benchmarks/serve (see its README or module docstrings)."""
