"""The package version, in a module of its own so that library modules can read it without
importing the package root (which imports nothing of theirs, but would be a cycle)."""

__version__ = "0.1.0"
