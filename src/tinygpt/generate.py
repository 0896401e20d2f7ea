"""Text generation: prefill a KV cache, decode one token at a time, sample.

Small named pieces: :func:`sample_next` turns logits into a token (temperature,
top-k, top-p), :func:`generate` runs the loop, :class:`StreamDecoder` turns ids into
printable text as they arrive, and :func:`load` gives a trained run back as a
:class:`TinyGPT` with ``generate(prompt)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint as ckpt
from .config import from_dict
from .device import autocast, resolve_device, resolve_dtype
from .errors import TinyGPTError
from .model import GPT, GPTConfig, KVCache
from .tokenizer import Tokenizer, load_tokenizer


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick the next token for each row of ``logits`` (B, V) -> (B, 1).

    temperature 0 is greedy (argmax). top_k keeps the k likeliest tokens, top_p the
    smallest set whose probability reaches p; both apply after temperature."""
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the ones before it already reach top_p; the first always stays.
        drop_sorted = (cum - sorted_logits.softmax(dim=-1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True, stop_id: int | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens -> (B, T + new).

    With the cache, the prompt is processed once and each step feeds only the new
    token. Once the sequence outgrows the context, each step re-reads the last
    ``block_size`` tokens instead, exactly as the uncached loop does, so both give
    the same tokens. Generation stops early when every row has produced ``stop_id``.
    """
    was_training = model.training
    model.eval()
    block = model.config.block_size
    cache = None
    if use_cache:
        # Parameter dtype: under autocast the new keys/values are cast on the way in.
        cache = KVCache(model.config, idx.size(0), device=idx.device, dtype=next(model.parameters()).dtype)
    finished = torch.zeros(idx.size(0), dtype=torch.bool, device=idx.device)
    try:
        for _ in range(max_new_tokens):
            if cache is not None and idx.size(1) <= block:
                # Feed whatever the cache has not seen yet: the prompt first, then one token.
                logits = model(idx[:, cache.pos:], cache=cache).logits
            else:
                logits = model(idx[:, -block:]).logits
            nxt = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            if on_token is not None:
                on_token(nxt)
            if stop_id is not None:
                finished |= nxt.squeeze(1) == stop_id
                if finished.all():
                    break
    finally:
        model.train(was_training)
    return idx


def start_ids(tokenizer: Tokenizer) -> list[int]:
    """A neutral prompt for unconditional samples: end-of-text, else a newline, else id 0."""
    if tokenizer.eot_id is not None:
        return [tokenizer.eot_id]
    try:
        return tokenizer.encode("\n")
    except TinyGPTError:
        return [0]


class StreamDecoder:
    """Turns ids, pushed one at a time, into text pieces as soon as they are printable.

    A byte-level token can end inside a multi-byte character, which decodes to a
    trailing U+FFFD; such ids wait (at most 4, the longest UTF-8 character) until the
    character is whole. Decoding restarts after every emitted piece, so streaming a
    long text costs linear time."""

    def __init__(self, tokenizer: Tokenizer):
        self.tokenizer, self.pending = tokenizer, []

    def push(self, token_id: int) -> str:
        self.pending.append(token_id)
        text = self.tokenizer.decode(self.pending)
        if text.endswith("\ufffd") and len(self.pending) < 4:
            return ""
        self.pending = []
        return text

    def flush(self) -> str:
        text, self.pending = self.tokenizer.decode(self.pending), []
        return text


@dataclass
class TinyGPT:
    """A trained run loaded for inference: the model, its tokenizer and where they came from."""
    model: GPT
    tokenizer: Tokenizer
    config: dict
    checkpoint: Path
    step: int | None
    val_loss: float | None
    device: torch.device
    dtype: torch.dtype

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, bool]:
        """Prompt text -> (1, T) ids cropped to the context; also whether it was cropped."""
        ids = self.tokenizer.encode(prompt) if prompt else start_ids(self.tokenizer)
        block = self.model.config.block_size
        return torch.tensor([ids[-block:]], device=self.device), len(ids) > block

    def generate(self, prompt: str = "", max_new_tokens: int = 200, *, temperature: float = 0.8,
                 top_k: int | None = 200, top_p: float | None = None, num_samples: int = 1,
                 seed: int | None = None, on_text: Callable[[int, str], None] | None = None) -> list[str]:
        """Generate ``num_samples`` continuations of ``prompt`` (the prompt is not included).

        ``on_text(sample_index, piece)`` streams text as it is produced."""
        idx, _ = self.encode_prompt(prompt)
        idx = idx.expand(num_samples, -1).contiguous()
        g = torch.Generator(device=self.device)
        if seed is None:
            g.seed()  # fresh entropy for this generator only; the global RNG is left alone
        else:
            g.manual_seed(seed)
        streams = [StreamDecoder(self.tokenizer) for _ in range(num_samples)]

        def emit(nxt: torch.Tensor) -> None:
            for i, t in enumerate(nxt[:, 0].tolist()):
                if piece := streams[i].push(t):
                    on_text(i, piece)

        with autocast(self.device, self.dtype):
            out = generate(self.model, idx, max_new_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, generator=g, on_token=emit if on_text is not None else None)
        if on_text is not None:
            for i, stream in enumerate(streams):
                if rest := stream.flush():
                    on_text(i, rest)
        return [self.tokenizer.decode(row[idx.size(1):].tolist()) for row in out]


def load(run_dir: str | Path, checkpoint: str = "best", device: str = "auto", dtype: str = "fp32") -> TinyGPT:
    """Load a run directory written by ``tinygpt train`` for sampling.

    ``checkpoint`` is 'best' (lowest validation loss), 'last', or a path to a
    .safetensors file."""
    run_dir = Path(run_dir)
    config = ckpt.load_run_config(run_dir)
    try:
        model_cfg = from_dict(GPTConfig, config["model"])
    except KeyError:
        raise TinyGPTError(f"{run_dir / ckpt.CONFIG_FILE} has no model section; the run directory is damaged") from None
    tokenizer = load_tokenizer(run_dir)
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise TinyGPTError(f"the tokenizer in {run_dir} has {tokenizer.vocab_size} tokens but config.json says "
                           f"{model_cfg.vocab_size}; the run directory is inconsistent")
    path = Path(checkpoint) if checkpoint not in ckpt.CHECKPOINTS else run_dir / ckpt.CHECKPOINTS[checkpoint]
    if checkpoint == "best" and not path.exists() and (run_dir / ckpt.LAST_WEIGHTS).exists():
        path = run_dir / ckpt.LAST_WEIGHTS
    meta = ckpt.read_metadata(path)
    dev = resolve_device(device)
    model = GPT(model_cfg)
    ckpt.load_weights(model, path)
    model.to(dev).eval()
    step = int(meta["step"]) if meta.get("step", "None") != "None" else None
    val = float(meta["val_loss"]) if meta.get("val_loss", "None") != "None" else None
    return TinyGPT(model, tokenizer, config, path, step, val, dev, resolve_dtype(dtype, dev))
