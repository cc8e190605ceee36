"""gpner: span-based named-entity recognition with GlobalPointer, R-Drop and VAT."""

__version__ = "0.1.0"
