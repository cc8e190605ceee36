"""``gpner serve``: load a model and run the app with uvicorn."""

from __future__ import annotations

import signal
import threading

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
    """Serve ``model_path`` until interrupted. One process: the model is loaded once.

    SIGTERM shuts down gracefully (new connections refused, accepted requests answered) and
    returns; Ctrl-C does the same and then raises KeyboardInterrupt, as uvicorn does.
    """
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
    # On SIGTERM uvicorn stops accepting connections, answers the requests in flight, stops
    # the batcher, then raises the signal again under the handler it found. That handler is
    # this no-op, so a clean shutdown ends serve() and the process exits 0.
    main = threading.current_thread() is threading.main_thread()  # signals: main thread only
    previous = signal.signal(signal.SIGTERM, _after_shutdown) if main else None
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _after_shutdown(signum, frame) -> None:
    """The SIGTERM uvicorn raises again once it has shut down gracefully: nothing left to do."""
