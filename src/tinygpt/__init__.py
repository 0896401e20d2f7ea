"""tinygpt: train, run and study small GPT language models on the hardware you have.

    import tinygpt
    lm = tinygpt.load("runs/my-run")          # model + tokenizer from a run directory
    print(lm.generate("ROMEO:", max_new_tokens=200)[0])
"""

__version__ = "0.1.0"


def load(source, checkpoint: str = "best", device: str = "auto", dtype: str = "fp32"):
    """Load a trained model for generation; see :func:`tinygpt.generation.load`."""
    from .generation import load as _load

    return _load(source, checkpoint=checkpoint, device=device, dtype=dtype)
