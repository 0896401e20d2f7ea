"""Turning a model into text: logits processors and sampling rules, the decoder (a state rows
join and leave between steps), beam search, streaming with stop strings, and ``load``.

    from tinygpt.generation import load
    lm = load("runs/my-run")
    print(lm.generate("Romeo.\n", max_new_tokens=200, seed=0, min_p=0.05, stop=["\n\n"])[0])
    for piece in lm.stream("Juliet.\n", 100):
        print(piece, end="", flush=True)
"""

from .beam import beam_search
from .config import GenerationConfig
from .decoder import Decoder, Token, decode, generate
from .lm import TinyGPT, load, start_ids
from .processors import History, LogitsProcessor
from .sampling import Sampling, choose, sample_next
from .stream import StreamDecoder, TextStream

__all__ = ["Decoder", "GenerationConfig", "History", "LogitsProcessor", "Sampling", "StreamDecoder", "TextStream",
           "TinyGPT", "Token", "beam_search", "choose", "decode", "generate", "load", "sample_next", "start_ids"]
