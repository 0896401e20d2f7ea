"""A model with its tokenizer, ready to turn prompts into text: :class:`TinyGPT` and :func:`load`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..config import replace
from ..device import fresh_seed, resolve_device, resolve_dtype
from ..errors import TinyGPTError
from ..model import GPT
from ..source import open_source
from ..tokenizer import Tokenizer
from .beam import beam_search
from .config import GenerationConfig
from .decoder import Decoder, worth_packing
from .processors import LimitVocab
from .stream import TextStream


def start_ids(tokenizer: Tokenizer) -> list[int]:
    """A neutral prompt for unconditional samples: end-of-text, else a newline, else id 0."""
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n")
    except TinyGPTError:
        return [0]


@dataclass
class TinyGPT:
    """A model and its tokenizer for inference, and where they came from (when loaded from a run).

    ``dtype`` is the compute dtype. A model loaded for inference holds its weights in it; a
    model whose fp32 weights reach it through autocast (the trainer's) says ``autocast``."""
    model: GPT
    tokenizer: Tokenizer
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    config: dict = field(default_factory=dict)   # the run's config.json
    checkpoint: Path | None = None
    step: int | None = None
    val_loss: float | None = None
    autocast: bool = False

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, bool]:
        """Prompt text -> (1, T) ids cropped to the context; also whether it was cropped."""
        ids = self.tokenizer.encode(prompt) if prompt else start_ids(self.tokenizer)
        block = self.model.config.block_size
        return torch.tensor([ids[-block:]], device=self.device), len(ids) > block

    def generate(self, prompt: str | Sequence[str] | Sequence[Sequence[int]] = "",
                 max_new_tokens: int | None = None, *,
                 config: GenerationConfig | None = None, seed: int | None = None,
                 on_text: Callable[[int, str], None] | None = None, **options: Any) -> list[str]:
        """Continuations of ``prompt`` (the prompt is not included): ``num_samples`` per
        prompt, prompt by prompt when ``prompt`` is a list (they are generated as one batch).

        Options are GenerationConfig's (temperature, top_k, top_p, min_p, penalties,
        beams, stop strings ...), given as ``config`` and/or keywords. Sample i of a
        prompt draws from its own generator seeded ``seed + i`` (a fresh seed when
        None), so the same options give the same text here, on the command line, in the
        trainer's samples, and whatever else is in the batch. ``on_text(index, piece)``
        streams text as it is produced (beam search: once, when done). A prompt may also be
        given as token ids, for callers that cut prompts on token boundaries themselves."""
        cfg = self._config(config, max_new_tokens, options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        # Every sample has a text, maybe empty; beam search may return fewer than asked.
        texts = dict.fromkeys(range(len(prompts) * cfg.num_samples), "") if cfg.beams == 1 else {}
        for i, piece in self._pieces(prompts, cfg, seed):
            texts[i] = texts.get(i, "") + piece
            if on_text is not None:
                on_text(i, piece)
        return list(texts.values())

    def stream(self, prompt: str = "", max_new_tokens: int | None = None, *, seed: int | None = None,
               **options: Any) -> Iterator[str]:
        """The text of one sample as it is generated, piece by piece (a Python generator,
        for servers and notebooks); the pieces joined are what ``generate`` returns."""
        cfg = self._config(None, max_new_tokens, {**options, "num_samples": 1})
        for _, piece in self._pieces([prompt], cfg, seed):
            yield piece

    @staticmethod
    def _config(config: GenerationConfig | None, max_new_tokens: int | None, options: dict) -> GenerationConfig:
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        cfg = config or GenerationConfig()
        return replace(cfg, options) if options else cfg

    def _pieces(self, prompts: list, cfg: GenerationConfig, seed: int | None) -> Iterator[tuple[int, str]]:
        """(sample index, text piece) as the rows of one batch produce them."""
        block = self.model.config.block_size
        ids = [self.encode_prompt(p)[0][0].tolist() if isinstance(p, str)
               else list(p)[-block:] or start_ids(self.tokenizer) for p in prompts]
        stop_ids = (self.tokenizer.eot_id,) if cfg.stop_at_eot and self.tokenizer.eot_id is not None else ()
        limit = [LimitVocab(self.tokenizer.vocab_size)] if self.tokenizer.vocab_size < self.model.config.vocab_size \
            else []
        if cfg.beams > 1:
            yield from self._beams(ids, cfg, limit, stop_ids)
            return
        n = cfg.num_samples
        rows = [p for p in ids for _ in range(n)]
        streams = [TextStream(self.tokenizer, cfg.stop) for _ in rows]
        if cfg.max_new_tokens > 0:
            base = fresh_seed() if seed is None else seed
            with Decoder(self.model, device=self.device, dtype=self.dtype, autocast=self.autocast,
                         past_context=cfg.past_context, processors=limit, rows=len(rows),
                         pack=worth_packing(self.model, len(rows), cfg.max_new_tokens, self.device)) as decoder:
                index = {decoder.add(row, cfg.sampling(base + i % n, stop_ids)): i for i, row in enumerate(rows)}
                while decoder.active:
                    for t in decoder.step():
                        i = index[t.row]
                        if t.id in stop_ids:
                            continue  # the stop token ends the row; it is not text
                        if piece := streams[i].push(t.id):
                            yield i, piece
                        if streams[i].stopped and t.done is None:
                            decoder.remove(t.row)  # a stop string: the row is done
        for i, stream in enumerate(streams):
            if rest := stream.flush():
                yield i, rest

    def _beams(self, ids: list[list[int]], cfg: GenerationConfig, limit: list,
               stop_ids: tuple[int, ...]) -> Iterator[tuple[int, str]]:
        done = 0
        for prompt in ids:
            best = beam_search(self.model, prompt, min(cfg.max_new_tokens, self.model.config.block_size - len(prompt)),
                               beams=cfg.beams, length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
                               num_return=cfg.num_samples, processors=limit + cfg.processors(), stop_ids=stop_ids,
                               dtype=self.dtype, autocast=self.autocast, device=self.device)
            for tokens, _ in best:
                stream = TextStream(self.tokenizer, cfg.stop)
                for t in tokens:
                    if t not in stop_ids:
                        stream.push(t)
                stream.flush()
                yield done, stream.text
                done += 1


def load(source: str | Path, checkpoint: str = "best", device: str = "auto", dtype: str = "fp32") -> TinyGPT:
    """A model for generation from a run directory written by ``tinygpt train`` or
    ``tinygpt finetune`` (an adapter fine-tune is loaded on its base, unmerged), a Hugging
    Face model directory (GPT-2 or Llama architecture), or a hub name such as ``gpt2``.

    ``checkpoint`` (runs only) is 'best' (lowest validation loss), 'last', or a path to a
    .safetensors file. Weights are memory-mapped into a model built without init."""
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev, inference=True)
    opened = open_source(source, checkpoint)
    # Weights held in the inference dtype (half the bytes to read per token in bf16/fp16),
    # not fp32 weights cast under autocast at every step.
    return TinyGPT(opened.model.to(dev, dt).eval(), opened.tokenizer, dev, dt, opened.config, opened.path,
                   opened.info.step, opened.info.val_loss)
