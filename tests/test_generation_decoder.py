"""The decoder: rows that join and leave, per-row settings, cached and uncached generation agree,
stopping, streaming hooks, model mode, and the two ways past the context."""

import dataclasses

import pytest
import torch
from helpers import TINY_MODEL, random_ids, randomize_, seeded

from tinygpt.generation import Decoder, Sampling, generate
from tinygpt.generation.decoder import decode
from tinygpt.generation.processors import RepetitionPenalty
from tinygpt.model import GPT, GPTConfig


def reference_greedy(model, idx, n):
    """The textbook loop: re-read the last block_size tokens, take the argmax."""
    block = model.config.block_size
    with torch.no_grad():
        for _ in range(n):
            nxt = model(idx[:, -block:]).logits[:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], dim=1)
    return idx


@pytest.mark.parametrize("batch", [1, 2])
def test_greedy_cached_equals_uncached_past_the_context(tiny_model, batch):
    model = randomize_(tiny_model, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((batch, 5))
    cached = generate(model, prompt, 30, temperature=0, use_cache=True)
    uncached = generate(model, prompt, 30, temperature=0, use_cache=False)
    assert cached.shape == (batch, 35)
    assert torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, reference_greedy(model, prompt, 30))
    for row in cached:
        assert len(set(row[5:].tolist())) >= 5  # a real walk, not one repeated token


@pytest.mark.parametrize("prompt_len", [1, 15, 16, 20])
def test_greedy_cache_at_and_beyond_the_context_edge(tiny_model, prompt_len):
    model = randomize_(tiny_model, seed=1, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((2, prompt_len), seed=prompt_len)
    cached = generate(model, prompt, 6, temperature=0, use_cache=True)
    assert cached.shape == (2, prompt_len + 6)
    assert torch.equal(cached, generate(model, prompt, 6, temperature=0, use_cache=False))
    assert torch.equal(cached, reference_greedy(model, prompt, 6))


@pytest.mark.parametrize("kw", [dict(), dict(temperature=0.7, top_k=10), dict(temperature=1.5, top_p=0.9)])
def test_seeded_sampling_same_with_and_without_cache(tiny_model, kw):
    model = randomize_(tiny_model, seed=2, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((2, 5))
    cached = generate(model, prompt, 25, generator=seeded(5), use_cache=True, **kw)
    uncached = generate(model, prompt, 25, generator=seeded(5), use_cache=False, **kw)
    assert cached.shape == (2, 30)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, generate(model, prompt, 25, generator=seeded(5), **kw))
    others = [generate(model, prompt, 25, generator=seeded(s), **kw) for s in (6, 7)]
    assert any(not torch.equal(cached, o) for o in others)


def test_generate_applies_top_k_and_top_p(tiny_model):
    model = randomize_(tiny_model, seed=5, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((2, 5))
    greedy = generate(model, prompt, 12, temperature=0)
    assert not torch.equal(generate(model, prompt, 12, temperature=1.0, generator=seeded(0)), greedy)
    assert torch.equal(generate(model, prompt, 12, temperature=1.0, top_k=1, generator=seeded(0)), greedy)
    assert torch.equal(generate(model, prompt, 12, temperature=1.0, top_p=1e-6, generator=seeded(0)), greedy)


def test_stop_id_stops_early(tiny_model):
    model = randomize_(tiny_model, seed=3, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((1, 4))
    full = generate(model, prompt, 20, temperature=0)
    new = full[0, 4:].tolist()
    stop = new[3]
    first = new.index(stop)
    out = generate(model, prompt, 20, temperature=0, stop_id=stop)
    assert out.shape == (1, 4 + first + 1)
    assert torch.equal(out, full[:, :4 + first + 1])
    absent = next(t for t in range(50) if t not in new)
    assert torch.equal(generate(model, prompt, 20, temperature=0, stop_id=absent), full)


def test_stop_id_waits_for_every_row(tiny_model):
    model = randomize_(tiny_model, seed=4, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((2, 4), seed=9)
    full = generate(model, prompt, 20, temperature=0)
    rows = [r[4:].tolist() for r in full]
    both = [t for t in set(rows[0]) & set(rows[1]) if rows[0].index(t) != rows[1].index(t)]
    assert both, "test setup: need a token both rows produce at different steps"
    stop = both[0]
    last = max(rows[0].index(stop), rows[1].index(stop))
    out = generate(model, prompt, 20, temperature=0, stop_id=stop)
    # The row that stopped first is padded with the stop token (as transformers does).
    expected = full[:, :4 + last + 1].clone()
    for r, row in enumerate(rows):
        expected[r, 4 + row.index(stop):] = stop
    assert torch.equal(out, expected)


def test_on_token_sees_each_new_column(tiny_model):
    seen = []
    prompt = random_ids((2, 3))
    out = generate(tiny_model, prompt, 7, temperature=0, on_token=seen.append)
    assert len(seen) == 7 and all(t.shape == (2, 1) for t in seen)
    assert torch.equal(torch.cat(seen, dim=1), out[:, 3:])


def test_zero_new_tokens_returns_the_prompt(tiny_model):
    prompt = random_ids((2, 3))
    assert torch.equal(generate(tiny_model, prompt, 0), prompt)


def test_training_flag_is_restored():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, dropout=0.5))
    prompt = random_ids((1, 4))
    model.train()
    a = generate(model, prompt, 10, temperature=0)
    assert model.training and all(m.training for m in model.modules())
    b = generate(model, prompt, 10, temperature=0)
    model.eval()
    c = generate(model, prompt, 10, temperature=0)
    assert not model.training
    # Decoding always runs without dropout, whatever mode the model was in.
    assert torch.equal(a, b) and torch.equal(a, c)

    model.train()

    def boom(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(model, prompt, 10, on_token=boom)
    assert model.training


# ---------------------------------------------------------------------------- rows that join and leave

CPU = torch.device("cpu")


def solo(model, prompt, settings, **kw):
    """A row decoded alone, start to finish: its tokens."""
    with Decoder(model, device=CPU, dtype=torch.float32, **kw) as decoder:
        decoder.add(prompt, settings)
        tokens = []
        while decoder.busy:
            tokens += [t.id for t in decoder.step()]
    return tokens


def run(model, joins, steps=None, removals=(), **kw):
    """Rows joining a running decoder: ``joins`` maps a step number to the (prompt, settings)
    added before it; ``removals`` (step, index of the join) drops a row before that step.
    Returns each joined row's tokens, in join order, and the pool's row count at each step."""
    with Decoder(model, device=CPU, dtype=torch.float32, **kw) as decoder:
        names, tokens, sizes, step = [], {}, [], 0
        while step <= max(joins) or decoder.busy:
            for prompt, settings in joins.get(step, []):
                names.append(decoder.add(prompt, settings))
                tokens[names[-1]] = []
            for at, which in removals:
                if at == step and names[which] in decoder.active:
                    decoder.remove(names[which])
            sizes.append(len(decoder.active))
            for t in decoder.step():
                tokens[t.row].append(t.id)
            step += 1
    return [tokens[n] for n in names], sizes


@pytest.mark.parametrize("past_context", ["exact", "fast"])
def test_a_row_that_joins_at_step_k_gives_what_it_gives_alone(tiny_model, past_context):
    model = randomize_(tiny_model, seed=11, scale=0.3, embedding_scale=0.1)
    greedy, sampled = Sampling(greedy=True, max_new_tokens=30), Sampling(temperature=1.3, seed=7, max_new_tokens=30)
    first = random_ids((1, 3), seed=1)[0].tolist()
    later = {0: [(first, greedy)], 4: [(random_ids((1, 9), seed=2)[0].tolist(), greedy)],
             7: [(random_ids((1, 2), seed=3)[0].tolist(), sampled), (random_ids((1, 14), seed=4)[0].tolist(), sampled)]}
    got, sizes = run(model, later, past_context=past_context)
    prompts = [p for step in sorted(later) for p in later[step]]
    assert got == [solo(model, p, s, past_context=past_context) for p, s in prompts]
    assert all(len(t) == 30 for t in got)  # 30 tokens: well past the 16-token context
    assert sizes[:8] == [1, 1, 1, 1, 2, 2, 2, 4]


def test_long_prompts_read_in_chunks_give_what_they_give_read_at_once(tiny_model):
    model = randomize_(tiny_model, seed=11, scale=0.3, embedding_scale=0.1)
    greedy, sampled = Sampling(greedy=True, max_new_tokens=20), Sampling(temperature=1.3, seed=7, max_new_tokens=20)
    ids = [random_ids((1, n), seed=n)[0].tolist() for n in (3, 13, 16, 11, 2)]
    joins = {0: [(ids[0], greedy)], 2: [(ids[1], greedy), (ids[2], sampled)], 3: [(ids[3], sampled)],
             5: [(ids[4], greedy)]}
    got, sizes = run(model, joins, chunk=3)
    prompts = [p for step in sorted(joins) for p in joins[step]]
    assert got == [solo(model, p, s) for p, s in prompts]
    # 3 prompt tokens a step, oldest first: the 13-token prompt is read in the 4 steps from
    # step 2 (12 tokens; its last goes in with the batch's step 5), the 16-token one in the
    # next 5, the 11-token one in 4 more; the short ones join at once, and no row waits.
    assert sizes[:16] == [1, 1, 1, 1, 1, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5]


def test_a_row_removed_while_its_prompt_is_read_is_gone(tiny_model):
    model = randomize_(tiny_model, seed=12, scale=0.3, embedding_scale=0.1)
    rule = Sampling(greedy=True, max_new_tokens=6)
    short, long = random_ids((1, 2), seed=1)[0].tolist(), random_ids((1, 14), seed=2)[0].tolist()
    with Decoder(model, device=CPU, dtype=torch.float32, chunk=4) as decoder:
        a, b = decoder.add(short, rule), decoder.add(long, rule)
        assert decoder.active == [a] and [r.done for r in decoder.reading] == [0]
        decoder.step()
        assert [r.done for r in decoder.reading] == [4]
        decoder.remove(b)
        assert not decoder.reading
        rest = []
        while decoder.busy:
            rest += [t.row for t in decoder.step()]
    assert set(rest) == {a} and len(rest) == 5
    with pytest.raises(ValueError, match="chunk must be"):
        Decoder(model, device=CPU, dtype=torch.float32, chunk=-1)


def test_rows_with_different_settings_in_one_batch_each_give_their_solo_tokens(tiny_model):
    model = randomize_(tiny_model, seed=12, scale=0.3, embedding_scale=0.1)
    rules = [Sampling(greedy=True), Sampling(temperature=0.7, top_k=5, seed=1), Sampling(temperature=1.5, top_p=0.8, seed=2),
             Sampling(temperature=1.0, min_p=0.1, repetition_penalty=1.8, seed=3),
             Sampling(greedy=True, frequency_penalty=2.0, presence_penalty=1.0, no_repeat_ngram_size=2),
             Sampling(temperature=0.9, typical_p=0.7, seed=4), Sampling(temperature=0.7, top_k=5, seed=1)]
    rules = [dataclasses.replace(r, max_new_tokens=12) for r in rules]
    prompts = [random_ids((1, n), seed=n)[0].tolist() for n in (2, 5, 3, 7, 4, 6, 5)]
    got, _ = run(model, {0: list(zip(prompts, rules))})
    alone = [solo(model, p, r) for p, r in zip(prompts, rules)]
    assert got == alone
    assert got[1] == got[6]  # the same prompt, rule and seed: the same row
    assert len({tuple(t) for t in got}) == 6
    # Each rule really shapes its row: the same prompt under another row's rule differs.
    assert solo(model, prompts[1], dataclasses.replace(rules[2], max_new_tokens=12)) != got[1]


def test_removing_a_row_frees_its_place_and_leaves_the_others_unchanged(tiny_model):
    model = randomize_(tiny_model, seed=13, scale=0.3, embedding_scale=0.1)
    rule = Sampling(temperature=1.2, seed=5, max_new_tokens=10)
    prompts = [random_ids((1, n), seed=20 + n)[0].tolist() for n in (3, 6, 4)]
    got, sizes = run(model, {0: [(p, rule) for p in prompts]}, removals=[(4, 1)])
    assert sizes[:6] == [3, 3, 3, 3, 2, 2]
    assert len(got[1]) == 4 and got[1] == solo(model, prompts[1], rule)[:4]
    assert got[0] == solo(model, prompts[0], rule) and got[2] == solo(model, prompts[2], rule)
    # The freed place is taken by the next row to join, which gives what it gives alone.
    with Decoder(model, device=CPU, dtype=torch.float32, rows=2) as decoder:
        a, b = decoder.add(prompts[0], rule), decoder.add(prompts[1], rule)
        decoder.step()
        decoder.remove(a)
        c = decoder.add(prompts[2], rule)
        out = {b: [], c: []}
        while decoder.active:
            for t in decoder.step():
                out[t.row].append(t.id)
        assert decoder.cache.batch_size == 2  # no new rows were needed
    assert out[c] == solo(model, prompts[2], rule)
    assert out[b] == solo(model, prompts[1], rule)[1:]


def test_a_row_ends_at_its_stop_ids_or_its_budget_and_says_which(tiny_model):
    model = randomize_(tiny_model, seed=14, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((1, 4), seed=6)[0].tolist()
    free = solo(model, prompt, Sampling(greedy=True, max_new_tokens=12))
    stop = next(t for t in free if free.index(t) >= 4)  # a token it first makes at step 5 or later
    with Decoder(model, device=CPU, dtype=torch.float32) as decoder:
        decoder.add(prompt, Sampling(greedy=True, max_new_tokens=12, stop_ids=(stop,)))
        decoder.add(prompt, Sampling(greedy=True, max_new_tokens=3))
        steps = [decoder.step() for _ in range(free.index(stop) + 1)]
        assert not decoder.active and decoder.step() == []
    assert [t.done for t in steps[2]] == [None, "length"]
    assert steps[-1][0].done == "stop" and steps[-1][0].id == stop
    assert [s[0].id for s in steps] == free[:free.index(stop) + 1]


def test_the_compute_dtype_is_the_one_given(tiny_model):
    """fp32 weights computing in bf16 through autocast (the trainer's model): the cache holds bf16
    keys and values, and the logits are exactly those of the model's own forward under autocast."""
    model = randomize_(tiny_model, seed=15, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((1, 5), seed=7)[0].tolist()
    with Decoder(model, device=CPU, dtype=torch.bfloat16, autocast=True, pack=True) as decoder:
        # Under autocast Linear takes no packed route, so the decoder makes no packed copies.
        assert all(m._packed is None for m in model.modules() if hasattr(m, "_packed"))
        decoder.add(prompt, Sampling(greedy=True))
        logits = decoder.logits()
        assert decoder.cache.layers[0].k.dtype == torch.bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = model(torch.tensor([prompt])).logits[0, -1].float()
    assert torch.equal(logits[0], want)
    with pytest.raises(RuntimeError, match="inside `with`"):
        Decoder(model, device=CPU, dtype=torch.float32).logits()


# ---------------------------------------------------------------------------- batches of prompts


def _alone(model, prompt, n, **kw):
    return decode(model, [prompt], n, **kw)[0]


@pytest.mark.parametrize("n_new", [6, 40])  # within the context; well past it (block 16), weights packed
def test_prompts_of_different_lengths_give_what_each_gives_alone(tiny_model, n_new):
    model = randomize_(tiny_model, seed=6, scale=0.3, embedding_scale=0.1)
    prompts = [random_ids((1, n), seed=n)[0].tolist() for n in (1, 7, 3, 16)]
    batched = decode(model, prompts, n_new, greedy=True)
    assert batched == [_alone(model, p, n_new, greedy=True) for p in prompts]
    assert all(len(r) == n_new for r in batched)
    # Seeded sampling: row i draws from its own generator, so it is the same batched or alone.
    sampled = decode(model, prompts, n_new, generator=[seeded(10 + i) for i in range(4)])
    assert sampled == [_alone(model, p, n_new, generator=[seeded(10 + i)]) for i, p in enumerate(prompts)]


def test_rows_that_stop_leave_the_batch(tiny_model):
    model = randomize_(tiny_model, seed=7, scale=0.3, embedding_scale=0.1)
    prompts = [random_ids((1, 4), seed=s)[0].tolist() for s in range(3)]
    free = decode(model, prompts, 12, greedy=True)
    stop = free[1][2]  # row 1 stops after its 3rd token
    sizes = []
    handle = model.transformer.wte.register_forward_hook(lambda m, a, o: sizes.append(a[0].shape[0]))
    try:
        out = decode(model, prompts, 12, greedy=True, stop_ids=[stop])
    finally:
        handle.remove()
    for row, full in zip(out, free):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert row == full[:cut]
    assert sizes[0] == 3 and sizes[-1] < 3  # the forwards shrink as rows finish


def test_on_step_can_stop_a_row(tiny_model):
    prompts = [[1, 2], [3, 4, 5]]
    out = decode(tiny_model, prompts, 8, greedy=True, on_step=lambda rows, t: {0} if 0 in rows else None)
    assert len(out[0]) == 1 and len(out[1]) == 8


def test_processors_shape_the_walk(tiny_model):
    model = randomize_(tiny_model, seed=8, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((1, 4))[0].tolist()
    plain = _alone(model, prompt, 30, greedy=True)
    penalised = _alone(model, prompt, 30, greedy=True, processors=[RepetitionPenalty(1e9)])
    assert penalised != plain
    # A huge penalty forbids repeats while unseen tokens remain (the vocabulary is 50).
    assert len(set(penalised)) == len(penalised) and not set(penalised) & set(prompt)


# ---------------------------------------------------------------------------- fast mode past the context


class Recorder:
    """A logits processor that keeps each step's logits (B, V) and changes nothing."""

    def __init__(self):
        self.steps: list[torch.Tensor] = []

    def __call__(self, logits, history):
        self.steps.append(logits.clone())
        return logits


def windowed_logits(model, ids, window):
    """Uncached logits (T, V) of ``ids`` (1, T) when each position attends only the last
    ``window`` positions, itself included: a copy of the model with a long enough context,
    its attention masked to that band through a pre-hook on SDPA."""
    T = ids.shape[1]
    wide = GPT(dataclasses.replace(model.config, block_size=T)).eval()
    wide.load_state_dict(model.state_dict())
    i = torch.arange(T)
    band = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)  # (T, S)
    handles = [b.attn.attend.register_forward_pre_hook(lambda m, args: (*args[:3], band, False))
               for b in wide.transformer.h]
    try:
        with torch.no_grad():
            return wide(ids).logits[0]
    finally:
        for h in handles:
            h.remove()


def fast_greedy(tiny_model, seed):
    """A randomized model's 40 greedy tokens after a 5-token prompt in fast mode, and the
    logits (1, V) of every step: (model, prompt, new tokens, step logits)."""
    model = randomize_(tiny_model, seed=seed, scale=0.3, embedding_scale=0.1)
    prompt = random_ids((1, 5), seed=seed)[0].tolist()
    seen = Recorder()
    new = decode(model, [prompt], 40, greedy=True, processors=[seen], past_context="fast")[0]
    return model, prompt, new, seen.steps


@pytest.mark.parametrize("tiny_model", ["modern"], indirect=True)
def test_fast_mode_with_rope_attends_a_rolling_window_of_cached_keys(tiny_model):
    model, prompt, new, seen = fast_greedy(tiny_model, seed=8)
    block = model.config.block_size
    steps = torch.cat(seen)  # (40, V): the logits that chose each new token
    seq = torch.tensor([prompt + new])
    # Each step equals a sliding-window (banded) forward of the whole sequence: the keys
    # kept were computed with their own windows, which reached further back.
    assert (steps - windowed_logits(model, seq[:, :-1], block)[len(prompt) - 1:]).abs().max() < 1e-5
    # Not what the exact mode computes once past the context, where every step re-reads
    # the last block from scratch; the same until then.
    exact = torch.stack([model(seq[:, :len(prompt) + k][:, -block:]).logits[0, -1] for k in range(40)]).detach()
    fits = block - len(prompt) + 1  # new tokens predicted from at most a block of tokens
    assert (steps[:fits] - exact[:fits]).abs().max() < 1e-5
    assert (steps[fits:] - exact[fits:]).abs().max() > 1e-2
    assert new[:fits] == decode(model, [prompt], fits, greedy=True)[0]


@pytest.mark.parametrize("tiny_model", ["gpt2"], indirect=True)
def test_fast_mode_with_learned_positions_rereads_the_last_half_block(tiny_model):
    model, prompt, new, seen = fast_greedy(tiny_model, seed=9)
    block = model.config.block_size
    seq, start, rereads = prompt + new, 0, 0
    for k, got in enumerate(seen):
        end = len(prompt) + k  # the tokens before new[k]
        if end - start > block:  # the row outgrew the context: it starts again from its last half block
            start, rereads = end - block // 2, rereads + 1
        with torch.no_grad():
            want = model(torch.tensor([seq[start:end]])).logits[0, -1]
        assert (got[0] - want).abs().max() < 1e-5, k
    assert rereads == 4  # at 17 tokens, then every 8


def test_fast_mode_batched_rows_give_what_they_give_alone(tiny_model):
    model = randomize_(tiny_model, seed=10, scale=0.3, embedding_scale=0.1)
    prompts = [random_ids((1, n), seed=n)[0].tolist() for n in (1, 7, 20)]  # 20: longer than the context
    batched = decode(model, prompts, 40, greedy=True, past_context="fast")
    assert batched == [_alone(model, p, 40, greedy=True, past_context="fast") for p in prompts]
    with pytest.raises(ValueError, match="past_context"):
        decode(model, prompts, 4, past_context="quick")


def test_the_pool_is_sized_once_for_the_rows_and_their_budgets(tiny_model):
    prompts = [random_ids((1, n), seed=n)[0].tolist() for n in (3, 5)]
    with Decoder(tiny_model, device=CPU, dtype=torch.float32, rows=2) as decoder:
        for p in prompts:
            decoder.add(p, Sampling(greedy=True, max_new_tokens=6))
        decoder.step()
        pool = decoder.cache
        assert (pool.batch_size, pool.max_len) == (2, 11)  # the longest prompt and its budget, not the context
        while decoder.active:
            decoder.step()
            assert decoder.cache is pool  # never reallocated as the rows grow
        decoder.add(prompts[0], Sampling(greedy=True, max_new_tokens=12))  # a row that needs more room
        decoder.step()
        assert decoder.cache.max_len == 15
