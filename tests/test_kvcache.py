"""The KV cache and attention planning: chunked prefill equals the full forward, the cache's
layout and row operations, explicit positions (batched prompts of different lengths, padding),
packed sequences, and the bounds of context and cache. The model is the tiny test GPT."""

import pytest
import torch
from helpers import TINY_MODEL, random_ids, randomize_

from tinygpt.errors import TinyGPTError
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT, GPTConfig


def test_context_overflow(tiny_model):
    with pytest.raises(TinyGPTError) as err:
        tiny_model(random_ids((1, 17)))
    assert "16" in str(err.value) and "\n" not in str(err.value)
    tiny_model(random_ids((1, 16)))  # exactly the context is fine
    cache = KVCache(tiny_model.config, 1)
    tiny_model(random_ids((1, 10)), cache=cache)
    with pytest.raises(TinyGPTError):
        tiny_model(random_ids((1, 7)), cache=cache)
    tiny_model(random_ids((1, 6)), cache=cache)
    assert cache.length == 16


def test_cache_shorter_than_context_overflows_with_a_clear_error():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL)).eval()
    cache = KVCache(model.config, 1, max_len=4)
    with pytest.raises(TinyGPTError):
        model(random_ids((1, 6)), cache=cache)


# ---------------------------------------------------------------------------- KV cache


@pytest.mark.parametrize("chunks", [[16], [1] * 16, [3, 1, 5, 1, 1, 4, 1], [2, 7, 1, 6]])
def test_kv_cache_reproduces_the_full_forward(tiny_model, chunks):
    idx = random_ids((2, 16))
    cache = KVCache(tiny_model.config, 2)
    pieces, pos = [], 0
    with torch.no_grad():
        full = tiny_model(idx).logits
        for n in chunks:
            pieces.append(tiny_model(idx[:, pos:pos + n], cache=cache).logits)
            pos += n
            assert cache.length == pos
    got = torch.cat(pieces, dim=1)
    assert got.shape == full.shape
    assert (got - full).abs().max() < 1e-5


def test_kv_cache_layout(tiny_model):
    cache = KVCache(tiny_model.config, 3, max_len=10)
    assert len(cache.layers) == 2  # one (keys, values) pair per layer
    # (B, nh, max_len + 1, hs): slot s holds position s, and a spare last slot takes pads' writes.
    assert cache.layers[0].k.shape == cache.layers[0].v.shape == (3, 4, 11, 8)
    assert cache.max_len == 10 and cache.length == 0 and cache.batch_size == 3
    assert KVCache(tiny_model.config, 1).max_len == 16


def test_kv_cache_reorder_keeps_the_chosen_rows(tiny_model):
    idx = random_ids((3, 9))
    cache = KVCache(tiny_model.config, 3)
    with torch.no_grad():
        tiny_model(idx[:, :8], cache=cache)
        before = [(layer.k.clone(), layer.v.clone()) for layer in cache.layers]
        order = torch.tensor([2, 0])
        cache.reorder(order)
        assert cache.length == 8
        for layer, (k, v) in zip(cache.layers, before):
            assert torch.equal(layer.k, k[order]) and torch.equal(layer.v, v[order])
        step = tiny_model(idx[order, 8:], cache=cache).logits
        full = tiny_model(idx[order]).logits
    assert (step[:, 0] - full[:, 8]).abs().max() < 1e-5


def test_a_batch_larger_than_the_cache_is_refused(tiny_model):
    with pytest.raises(TinyGPTError, match="holds 1 rows but the batch has 2"):
        tiny_model(random_ids((2, 3)), cache=KVCache(tiny_model.config, 1))


# ---------------------------------------------------------------------------- explicit positions


PROMPTS = [[5, 17, 3], [9, 2, 44, 21, 8, 30, 1], [12]]  # three lengths in one batch
PAD = 0


def padded(prompts, side):
    """(B, T) ids and (B, T) positions, pads at ``side`` marked by position -1."""
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), PAD)
    pos = torch.full((len(prompts), T), -1)
    for b, p in enumerate(prompts):
        cols = slice(T - len(p), T) if side == "left" else slice(0, len(p))
        ids[b, cols] = torch.tensor(p)
        pos[b, cols] = torch.arange(len(p))
    return ids, pos


def greedy_alone(model, prompt, steps):
    """Reference: one prompt by itself, prefill then one token at a time (positions implicit)."""
    cache = KVCache(model.config, 1)
    logits = model(torch.tensor([prompt]), cache=cache).logits[:, -1]
    tokens, all_logits = [], []
    for _ in range(steps):
        all_logits.append(logits[0])
        nxt = logits.argmax(-1, keepdim=True)
        tokens.append(nxt.item())
        logits = model(nxt, cache=cache).logits[:, -1]
    return tokens, torch.stack(all_logits)


def greedy_batched(model, prompts, steps, side):
    ids, pos = padded(prompts, side)
    cache = KVCache(model.config, len(prompts))
    out = model(ids, input_pos=pos, cache=cache).logits
    last = torch.tensor([len(p) - 1 for p in prompts])  # each row's last real position
    col = last if side == "right" else torch.full_like(last, ids.shape[1] - 1)
    logits = out[torch.arange(len(prompts)), col]
    tokens, all_logits = [], []
    for step in range(steps):
        all_logits.append(logits)
        nxt = logits.argmax(-1, keepdim=True)  # (B, 1)
        tokens.append(nxt[:, 0])
        logits = model(nxt, input_pos=(last + 1 + step)[:, None], cache=cache).logits[:, -1]
    return torch.stack(tokens, 1).tolist(), torch.stack(all_logits, 1)


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_prompts_of_different_lengths_match_each_alone(tiny_model, side):
    model = randomize_(tiny_model, seed=2, scale=0.3, embedding_scale=0.1)
    with torch.no_grad():
        tokens, logits = greedy_batched(model, PROMPTS, 8, side)
        for b, prompt in enumerate(PROMPTS):
            alone_tokens, alone_logits = greedy_alone(model, prompt, 8)
            assert tokens[b] == alone_tokens
            assert (logits[b] - alone_logits).abs().max() < 1e-5
    assert len({tuple(t) for t in tokens}) == 3  # the rows really do differ


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_rows_without_a_cache_match_each_alone(tiny_model, side):
    model = randomize_(tiny_model, seed=3)
    ids, pos = padded(PROMPTS, side)
    with torch.no_grad():
        out = model(ids, input_pos=pos).logits
        for b, prompt in enumerate(PROMPTS):
            real = pos[b] >= 0
            alone = model(torch.tensor([prompt])).logits[0]
            assert (out[b, real] - alone).abs().max() < 1e-5
        assert torch.isfinite(out).all()  # pad rows compute garbage, never NaN


def test_pads_get_no_attention(tiny_model):
    ids, pos = padded(PROMPTS, "left")
    maps = tiny_model.attention_maps(ids, input_pos=pos)
    for att in maps:  # (B, nh, T, T)
        for b in range(len(PROMPTS)):
            real = pos[b] >= 0
            assert torch.count_nonzero(att[b][:, real][..., ~real]) == 0
            assert (att[b][:, real].sum(-1) - 1).abs().max() < 1e-6


def test_shared_positions_equal_the_default(tiny_model):
    idx = random_ids((2, 10))
    with torch.no_grad():
        default = tiny_model(idx).logits
        explicit = tiny_model(idx, input_pos=torch.arange(10)).logits
        rows = tiny_model(idx, input_pos=torch.arange(10).expand(2, 10)).logits
        later = tiny_model(idx[:, 4:], input_pos=torch.arange(4, 10)).logits  # positions move the output
    assert (explicit - default).abs().max() < 1e-5 and (rows - default).abs().max() < 1e-5
    assert (later - default[:, 4:]).abs().max() > 1e-4


def test_bad_positions_are_clear_errors(tiny_model):
    idx = random_ids((2, 4))
    with pytest.raises(TinyGPTError, match=r"input_pos has shape \(3,\); it must be \(4,\) or \(2, 4\)"):
        tiny_model(idx, input_pos=torch.arange(3))
    with pytest.raises(TinyGPTError, match="exceeds the context of 16"):
        tiny_model(idx, input_pos=torch.arange(14, 18))
    with pytest.raises(TinyGPTError, match="the KV cache holds 8 positions"):
        tiny_model(idx, input_pos=torch.arange(6, 10), cache=KVCache(tiny_model.config, 2, max_len=8))


# ---------------------------------------------------------------------------- packed sequences


PACKED = [[7, 3, 41, 19, 2], [30, 11, 8], [4, 25, 49, 13, 6, 37, 22]]  # 15 tokens in one row


def packed_row(seqs):
    """(1, T) ids of ``seqs`` one after another, and their positions, each sequence from 0."""
    ids = torch.tensor([[t for s in seqs for t in s]])
    pos = torch.cat([torch.arange(len(s)) for s in seqs])[None]
    return ids, pos


def spans(seqs, start=0):
    for s in seqs:
        yield slice(start, start + len(s)), s
        start += len(s)


@pytest.mark.parametrize("seqs", [PACKED, PACKED[:2], [PACKED[2], PACKED[0]]])
def test_packed_sequences_each_give_their_logits_alone(tiny_model, seqs):
    model = randomize_(tiny_model, seed=4, embedding_scale=0.1)
    ids, pos = packed_row(seqs)
    with torch.no_grad():
        out = model(ids, input_pos=pos).logits[0]
        shared = model(ids.expand(2, -1), input_pos=pos[0]).logits  # positions (T,), shared by the rows
        unpacked = model(ids).logits[0]  # the same tokens read as one sequence
        for cols, seq in spans(seqs):
            alone = model(torch.tensor([seq])).logits[0]
            assert (out[cols] - alone).abs().max() < 1e-5
            assert (shared[:, cols] - alone).abs().max() < 1e-5
    later = slice(len(seqs[0]), None)
    assert (out[later] - unpacked[later]).abs().max() > 1e-3  # packing changes what the later sequences see


def test_a_packed_row_and_a_left_padded_row_in_one_batch(tiny_model):
    model = randomize_(tiny_model, seed=5, embedding_scale=0.1)
    ids, pos = packed_row(PACKED)  # (1, 15)
    single = [9, 2, 44, 21, 8, 30, 1, 17, 5]
    ids = torch.cat([ids, torch.tensor([[PAD] * 6 + single])])
    pos = torch.cat([pos, torch.cat([torch.full((6,), -1), torch.arange(9)])[None]])
    with torch.no_grad():
        out = model(ids, input_pos=pos).logits
        for cols, seq in spans(PACKED):
            assert (out[0, cols] - model(torch.tensor([seq])).logits[0]).abs().max() < 1e-5
        assert (out[1, 6:] - model(torch.tensor([single])).logits[0]).abs().max() < 1e-5
    assert torch.isfinite(out).all()


def test_the_loss_of_a_packed_row_is_the_sum_of_the_separate_losses(tiny_model):
    model = randomize_(tiny_model, seed=6, embedding_scale=0.1)
    ids, pos = packed_row(PACKED)
    targets = random_ids(ids.shape, seed=7)
    mask = torch.rand(ids.shape, generator=torch.Generator().manual_seed(1)) > 0.25
    for cols, _ in spans(PACKED):
        mask[0, cols.stop - 1] = False  # a sequence's last target would be the next sequence's first token
    with torch.no_grad():
        packed = model(ids, targets, input_pos=pos, loss_mask=mask)
        separate = [model(ids[:, cols], targets[:, cols], loss_mask=mask[:, cols]) for cols, _ in spans(PACKED)]
        unpacked = model(ids, targets, loss_mask=mask)  # the same targets, read as one sequence
    assert packed.n_targets.item() == sum(o.n_targets.item() for o in separate) == mask.sum().item() == 12
    expected = sum(o.loss_sum for o in separate)  # about 50: within 1e-6 relative
    assert abs(packed.loss_sum.item() - expected.item()) < 5e-5
    assert abs(packed.loss.item() - (expected / packed.n_targets).item()) < 1e-6
    assert abs(packed.loss_sum.item() - unpacked.loss_sum.item()) > 1e-2


def test_a_sequence_restarting_at_any_position_does_not_see_the_one_before(tiny_model):
    model = randomize_(tiny_model, seed=2, embedding_scale=0.1).eval()
    ids = random_ids((1, 5))
    got = model(ids, input_pos=torch.tensor([0, 1, 0, 3, 4])).logits
    alone = model(ids[:, 3:], input_pos=torch.tensor([3, 4])).logits
    torch.testing.assert_close(got[:, 3:], alone, atol=1e-5, rtol=0)
