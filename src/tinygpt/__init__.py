"""tinygpt: train, run and study small GPT language models on the hardware you have.

    import tinygpt
    lm = tinygpt.load("runs/my-run")          # model + tokenizer from a run directory
    print(lm.generate("Romeo.\\n", max_new_tokens=200)[0])
"""

__version__ = "0.1.0"


def versions(*libraries: str) -> dict[str, str]:
    """The versions a run records beside what it writes (config.json, eval.json): tinygpt,
    torch, Python, and those of the named installed ``libraries``."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    found = {"tinygpt": __version__, "torch": torch.__version__, "python": platform.python_version()}
    for lib in libraries:
        try:
            found[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return found


def load(source, checkpoint: str = "best", device: str = "auto", dtype: str = "fp32"):
    """Load a trained model for generation; see :func:`tinygpt.generation.load`."""
    from .generation import load as _load

    return _load(source, checkpoint=checkpoint, device=device, dtype=dtype)
