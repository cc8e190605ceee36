"""HTTP serving (``gpner serve``): FastAPI + uvicorn, the optional extra ``gpner[serve]``.

Nothing here is imported by the rest of gpner; importing it needs fastapi.
"""

from __future__ import annotations

__all__ = ["Limits", "MicroBatcher", "create_app", "serve"]


def __getattr__(name):
    # Lazy: `import gpner.serve` alone should not pull in fastapi.
    if name == "create_app":
        from gpner.serve.app import create_app

        return create_app
    if name == "Limits":
        from gpner.serve.limits import Limits

        return Limits
    if name == "MicroBatcher":
        from gpner.serve.batcher import MicroBatcher

        return MicroBatcher
    if name == "serve":
        from gpner.serve.run import serve

        return serve
    raise AttributeError(name)
