"""Turning a model into text: sampling rules, the prefill/decode loop, streaming, and ``load``.

    from tinygpt.generation import load
    lm = load("runs/my-run")
    print(lm.generate("ROMEO:", max_new_tokens=200, seed=0)[0])
"""

from .config import GenerationConfig
from .engine import generate
from .lm import TinyGPT, load, start_ids
from .sampling import sample_next
from .stream import StreamDecoder

__all__ = ["GenerationConfig", "StreamDecoder", "TinyGPT", "generate", "load", "sample_next", "start_ids"]
