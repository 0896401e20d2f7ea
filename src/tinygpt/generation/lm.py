"""A model with its tokenizer, ready to turn prompts into text: :class:`TinyGPT` and :func:`load`."""

from __future__ import annotations

import queue
import threading
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from ..config import replace
from ..device import autocast, fresh_seed, resolve_device, resolve_dtype
from ..errors import TinyGPTError
from ..model import GPT
from ..source import open_source
from ..tokenizer import Tokenizer
from .beam import beam_search
from .config import GenerationConfig
from .engine import decode
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
    """A model and its tokenizer for inference, and where they came from (when loaded from a run)."""
    model: GPT
    tokenizer: Tokenizer
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float32
    config: dict = field(default_factory=dict)   # the run's config.json
    checkpoint: Path | None = None
    step: int | None = None
    val_loss: float | None = None

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
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        cfg = config or GenerationConfig()
        if options:
            cfg = replace(cfg, options)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        block = self.model.config.block_size
        ids = [self.encode_prompt(p)[0][0].tolist() if isinstance(p, str)
               else list(p)[-block:] or start_ids(self.tokenizer) for p in prompts]
        n = cfg.num_samples
        stop_ids = [self.tokenizer.eot_id] if cfg.stop_at_eot and self.tokenizer.eot_id is not None else []
        chain = cfg.processors()
        if self.tokenizer.vocab_size < self.model.config.vocab_size:
            chain.insert(0, LimitVocab(self.tokenizer.vocab_size))
        # A model holding fp32 weights (e.g. the trainer's) computes in ``dtype`` under
        # autocast; one loaded for inference already holds its weights in ``dtype``.
        half_weights = next(self.model.parameters()).dtype != torch.float32
        with nullcontext() if half_weights else autocast(self.device, self.dtype):
            if cfg.beams > 1:
                return self._beams(ids, cfg, chain, stop_ids, on_text)
            rows = [p for p in ids for _ in range(n)]
            base = fresh_seed() if seed is None else seed
            generators = [torch.Generator(device=self.device).manual_seed(base + i % n) for i in range(len(rows))]
            streams = [TextStream(self.tokenizer, cfg.stop) for _ in rows]

            def on_step(active: list[int], tokens: torch.Tensor) -> set[int]:
                stopped = set()
                for i, t in zip(active, tokens.tolist()):
                    if t in stop_ids:
                        continue  # the stop token ends the row; it is not text
                    piece = streams[i].push(t)
                    if piece and on_text is not None:
                        on_text(i, piece)
                    if streams[i].stopped:
                        stopped.add(i)
                return stopped

            decode(self.model, rows, cfg.max_new_tokens, processors=chain, greedy=cfg.is_greedy,
                   generator=generators, stop_ids=stop_ids, on_step=on_step, past_context=cfg.past_context)
        for i, stream in enumerate(streams):
            if (rest := stream.flush()) and on_text is not None:
                on_text(i, rest)
        return [stream.text for stream in streams]

    def _beams(self, ids: list[list[int]], cfg: GenerationConfig, chain: list, stop_ids: list[int],
               on_text: Callable[[int, str], None] | None) -> list[str]:
        texts = []
        for prompt in ids:
            best = beam_search(self.model, prompt, min(cfg.max_new_tokens, self.model.config.block_size - len(prompt)),
                               beams=cfg.beams, length_penalty=cfg.length_penalty, early_stopping=cfg.early_stopping,
                               num_return=cfg.num_samples, processors=chain, stop_ids=stop_ids)
            for tokens, _ in best:
                stream = TextStream(self.tokenizer, cfg.stop)
                for t in tokens:
                    if t not in stop_ids:
                        stream.push(t)
                stream.flush()
                if on_text is not None:
                    on_text(len(texts), stream.text)
                texts.append(stream.text)
        return texts

    def stream(self, prompt: str = "", max_new_tokens: int | None = None, *, seed: int | None = None,
               **options: Any) -> Iterator[str]:
        """The text of one sample as it is generated, piece by piece (a Python generator,
        for servers and notebooks); the pieces joined are what ``generate`` returns."""
        pieces: queue.Queue = queue.Queue()
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self.generate(prompt, max_new_tokens, seed=seed, on_text=lambda i, piece: pieces.put(piece),
                              **{**options, "num_samples": 1})
            except BaseException as e:  # handed to the consumer, raised there
                failure.append(e)
            finally:
                pieces.put(None)

        # Decoding runs in a worker so that this generator can hand out each piece as it comes.
        worker = threading.Thread(target=work, daemon=True)
        worker.start()
        while (piece := pieces.get()) is not None:
            yield piece
        worker.join()
        if failure:
            raise failure[0]


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
