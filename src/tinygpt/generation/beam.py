"""Beam search: keep the ``beams`` likeliest continuations, return the best finished ones.

The rules are Hugging Face's (``generate(num_beams=...)``, transformers 5), so the same
model gives the same beams: each step takes the (1 + stop tokens) x beams best
extensions of all beams by summed log-probability; those among the top ``beams`` that end
in a stop token (or reach the length limit) become finished hypotheses, scored
sum / generated_length ** length_penalty; the best non-finished ones run on. It stops at
the length limit, when ``early_stopping`` and ``beams`` hypotheses have finished, or when
no running beam can still beat the worst finished one (judged at its current length).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..model import GPT
from . import processors as P
from .decoder import Decoder, worth_packing
from .sampling import Sampling


@torch.no_grad()
def beam_search(model: GPT, prompt: Sequence[int], max_new_tokens: int, *, beams: int,
                length_penalty: float = 1.0, early_stopping: bool = False, num_return: int = 1,
                processors: Sequence[P.LogitsProcessor] = (), stop_ids: Sequence[int] = (),
                dtype: torch.dtype = torch.float32, autocast: bool = False,
                device: torch.device | str | None = None) -> list[tuple[list[int], float]]:
    """The ``num_return`` best continuations of ``prompt`` as (new tokens, score), best first.
    The beams are rows of a :class:`~tinygpt.generation.decoder.Decoder` (computing in
    ``dtype``), kept and forked by :meth:`~tinygpt.generation.decoder.Decoder.reorder`."""
    if not prompt:
        raise ValueError("the prompt needs at least one token")
    if len(prompt) + max_new_tokens > model.config.block_size:
        raise ValueError(f"beam search needs prompt + new tokens ({len(prompt) + max_new_tokens}) within the "
                         f"context ({model.config.block_size})")
    if max_new_tokens < 1:
        return [([], 0.0)]
    device = torch.device(device) if device is not None else model.transformer.wte.weight.device
    V = model.config.vocab_size
    stops = set(stop_ids)
    keep = max(2, 1 + len(stops)) * beams
    seqs: list[list[int]] = [[]]                      # each running beam's new tokens
    scores = torch.zeros(1, device=device)            # (b,) summed log-probabilities
    finished: list[tuple[float, list[int]]] = []      # (normalised score, new tokens), best first
    improvable = True
    with Decoder(model, device=device, dtype=dtype, autocast=autocast, processors=processors, rows=beams,
                 pack=worth_packing(model, beams, max_new_tokens, device)) as decoder:
        # The beams stop themselves; each row's own rule adds nothing to the processors.
        decoder.add(prompt, Sampling(greedy=True, max_new_tokens=max_new_tokens))
        logits = decoder.logits()
        for step in range(max_new_tokens):
            logp = decoder.process(logits.log_softmax(dim=-1))  # (b, V)
            cand = (scores[:, None] + logp).view(-1)
            top_scores, top_idx = cand.topk(min(keep, cand.numel()))
            last = step == max_new_tokens - 1
            gen_len = step + 1
            entries = [(s, i // V, i % V) for s, i in zip(top_scores.tolist(), top_idx.tolist())]
            hits = [last or t in stops for _, _, t in entries]
            if improvable and not (early_stopping and len(finished) == beams):
                for rank, ((s, b, t), hit) in enumerate(zip(entries, hits)):
                    if hit and rank < beams:
                        finished.append((s / gen_len ** length_penalty, seqs[b] + [t]))
                finished = sorted(finished, key=lambda f: -f[0])[:beams]
            running = [e for e, hit in zip(entries, hits) if not hit][:beams]
            if not running:
                break
            best = running[0][0] / gen_len ** length_penalty
            improvable = improvable and (len(finished) < beams or best > finished[-1][0])
            if not improvable or (early_stopping and len(finished) == beams):
                break
            seqs = [seqs[b] + [t] for _, b, t in running]
            scores = torch.tensor([s for s, _, _ in running], device=device)
            decoder.reorder([b for _, b, _ in running])
            decoder.advance(torch.tensor([t for _, _, t in running], device=device))
            logits = decoder.logits()
    return [(tokens, score) for score, tokens in finished[:num_return]]
