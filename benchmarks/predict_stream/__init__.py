"""benchmarks/predict_stream (see its README or module docstrings)."""
