"""The training curve is drawn on its own Agg canvas, leaving the process's matplotlib alone."""

import pytest

matplotlib = pytest.importorskip("matplotlib", reason="needs pip install matplotlib")


def test_plot_history_keeps_the_users_backend(tmp_path):
    from gpner.plotting import plot_history

    history = [
        {"epoch": k, "train_loss": 1.0 / k, "dev": {"micro": {"f1": 0.1 * k}}} for k in (1, 2, 3)
    ]
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # a user's choice, made before training
    try:
        plot_history(history, tmp_path / "training.png")
        assert matplotlib.get_backend() == "svg"  # the old matplotlib.use("Agg") switched it
    finally:
        matplotlib.use(before)
    assert (tmp_path / "training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
