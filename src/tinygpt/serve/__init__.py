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
    from collections import Counter
    from pathlib import Path

    from ..errors import TinyGPTError
    from ..generation.lm import load

    names = [Path(str(s).rstrip("/")).name or str(s) for s in sources]
    twice = [n for n, k in Counter(names).items() if k > 1]
    if twice:   # before any model is loaded
        raise TinyGPTError(f"two models would both be served as {twice[0]!r} (each is named after its folder or hub "
                           "id); serve each once, or copy one into a folder named differently")
    return [served(name, load(s, checkpoint, device, dtype)) for name, s in zip(names, sources)]
