"""``gpner serve``: load a model and run the app with uvicorn."""

from __future__ import annotations

__all__ = ["serve"]


def serve(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits=None,
    max_batch: int = 32,
    max_wait_ms: float = 2.0,
    max_queue: int = 4096,
    threads: int | None = None,
    log_level: str = "info",
) -> None:
    """Serve ``model_path`` until interrupted. One process: the model is loaded once."""
    try:
        import uvicorn

        from gpner.serve.app import create_app
    except ImportError as error:
        raise ImportError(
            f"gpner serve needs the serve extra: pip install 'gpner[serve]' ({error})"
        ) from None
    import torch

    if threads:
        torch.set_num_threads(threads)
    app = create_app(model_path, limits, max_batch, max_wait_ms, max_queue)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
