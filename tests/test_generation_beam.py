"""Decoding against transformers' generate on the same weights: greedy, penalties and beam search."""

import pytest
import torch
from helpers import random_ids
from test_interop_hf import FAMILIES, hf_model, load_ours

from tinygpt.generation.beam import beam_search
from tinygpt.generation.config import GenerationConfig
from tinygpt.generation.decoder import decode

pytest.importorskip("transformers")


def pair(family):
    # "llama" with grouped-query attention: 4 query heads share 2 key/value heads.
    hf = hf_model(family, seed=4, **({"num_key_value_heads": 2} if family == "llama" else {}))
    _, _, config_from_hf, weights_from_hf, _, _ = FAMILIES[family]
    cfg = config_from_hf(hf.config.to_dict())
    return load_ours(weights_from_hf(hf.state_dict(), cfg), cfg), hf


def hf_generate(hf, prompt, **kw):
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, pad_token_id=0, **kw)
    return out[:, len(prompt):].tolist()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("options", [{}, {"repetition_penalty": 1.5}, {"no_repeat_ngram_size": 2}])
def test_greedy_with_processors_equals_transformers(family, options):
    ours, hf = pair(family)
    prompt = random_ids((1, 5), seed=1)[0].tolist()
    cfg = GenerationConfig(greedy=True, **options)
    got = decode(ours, [prompt], 10, processors=cfg.processors(), greedy=True)
    assert got == hf_generate(hf, prompt, max_new_tokens=10, eos_token_id=None, **options)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("beams, n, length_penalty, early_stopping, stop", [
    (4, 2, 1.0, False, None),
    (3, 3, 0.5, False, "common"),
    (4, 1, 2.0, True, "common"),
])
def test_beam_search_equals_transformers(family, beams, n, length_penalty, early_stopping, stop):
    ours, hf = pair(family)
    prompt = random_ids((1, 4), seed=2)[0].tolist()
    stop_id = None
    if stop:  # a token the beams actually produce, so that hypotheses finish early
        plain = beam_search(ours, prompt, 8, beams=beams, num_return=beams)
        stop_id = plain[0][0][2]
    got = beam_search(ours, prompt, 8, beams=beams, num_return=n, length_penalty=length_penalty,
                      early_stopping=early_stopping, stop_ids=() if stop_id is None else (stop_id,))
    want = hf_generate(hf, prompt, max_new_tokens=8, num_beams=beams, num_return_sequences=n,
                       length_penalty=length_penalty, early_stopping=early_stopping, eos_token_id=stop_id)
    # transformers pads shorter finished beams (with the stop token) to the longest one.
    assert [toks for toks, _ in got] == [w[:len(toks)] for w, (toks, _) in zip(want, got)]
    assert all(set(w[len(toks):]) <= {stop_id} for w, (toks, _) in zip(want, got))
    scores = [s for _, s in got]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_long_beam_search_on_packed_weights_equals_transformers(family):
    # 36 new tokens with 4 beams: long enough that the beams decode on packed weights on CPU.
    context = {"n_positions": 48} if family == "gpt2" else {"max_position_embeddings": 48}
    hf = hf_model(family, seed=5, **context)
    _, _, config_from_hf, weights_from_hf, _, _ = FAMILIES[family]
    cfg = config_from_hf(hf.config.to_dict())
    ours = load_ours(weights_from_hf(hf.state_dict(), cfg), cfg)
    prompt = random_ids((1, 4), seed=3)[0].tolist()
    got = beam_search(ours, prompt, 36, beams=4, num_return=2)
    want = hf_generate(hf, prompt, max_new_tokens=36, num_beams=4, num_return_sequences=2, eos_token_id=None)
    assert [toks for toks, _ in got] == want
