"""The training curve: loss and dev F1 per epoch as a PNG (skipped without matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_history"]


def plot_history(history: list[dict[str, Any]], path: Path) -> None:
    """Training loss and dev micro F1 per epoch of ``history`` (metrics.jsonl records)."""
    try:
        # A figure on its own Agg canvas: no pyplot, so the backend and the figures of a
        # process that imported gpner are left alone.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is optional
        return
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(6, 3.5))
    FigureCanvasAgg(fig)
    ax1 = fig.add_subplot()
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:blue")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["dev"]["micro"]["f1"] for h in history], "s-", color="tab:red")
    ax2.set_ylabel("dev micro F1", color="tab:red")
    ax1.set_title("gpner training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
