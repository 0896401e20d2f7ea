"""tinygpt: train, run and study small GPT language models on the hardware you have.

    import tinygpt
    lm = tinygpt.load("runs/my-run")          # model + tokenizer from a run directory
    print(lm.generate("ROMEO:", max_new_tokens=200)[0])
"""

__version__ = "0.1.0"


def load(run_dir, checkpoint: str = "best", device: str = "auto", dtype: str = "fp32"):
    """Load a trained run for generation; see :func:`tinygpt.generate.load`."""
    from .generate import load as _load

    return _load(run_dir, checkpoint=checkpoint, device=device, dtype=dtype)
