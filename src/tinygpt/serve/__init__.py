"""``tinygpt serve``: an OpenAI-compatible HTTP server over continuous batching.

    from tinygpt.serve import ServeConfig, create_app, load_models
    app = create_app(load_models(["runs/shakespeare"]), ServeConfig())

Needs ``pip install 'tinygpt[serve]'`` (FastAPI, uvicorn, prometheus_client).
"""

from .app import ServeConfig, ServedModel, create_app, served
from .engine import Engine, QueueFull, Row
from .protocol import ApiError, Limits, parse_request

__all__ = ["ApiError", "Engine", "Limits", "QueueFull", "Row", "ServeConfig", "ServedModel", "create_app",
           "load_models", "parse_request", "served"]


def load_models(sources: list[str], *, checkpoint: str = "best", device: str = "auto",
                dtype: str = "auto") -> list[ServedModel]:
    """Each model source (run, HF directory, hub name, adapter run) loaded for serving, under
    its name: the folder's or hub id's last part (a clash is refused)."""
    from pathlib import Path

    from ..generation.lm import load

    return [served(Path(str(s).rstrip("/")).name or str(s), load(s, checkpoint, device, dtype)) for s in sources]
