"""gpner's benchmarks, one package. Run each from the repository root as a module, e.g.
``PYTHONPATH=src python3 -m benchmarks.speed.bench_head`` (``PYTHONPATH=src``: this checkout's
gpner, whichever one is installed)."""
