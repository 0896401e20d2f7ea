"""Prefix caching: a row whose prompt begins like one read before reuses its keys and values,
and gives what it gives without them."""

import torch
from helpers import TINY_MODEL, randomize_

from tinygpt.generation.decoder import Decoder
from tinygpt.generation.prefix import PrefixStore
from tinygpt.generation.sampling import Sampling
from tinygpt.model import GPT, GPTConfig

SHARED = list(range(3, 23))           # a 20-token beginning two prompts share


def model(**kw):
    torch.manual_seed(0)
    return randomize_(GPT(GPTConfig(**{**TINY_MODEL, "block_size": 64, **kw})).eval(), 0, 0.3, 0.1)


def run(m, prompts, store=None, steps=8):
    """Greedy tokens and first-step logits of each prompt, read one after the other (each after
    the one before has finished, so the second can find the first in the store)."""
    out = []
    for prompt in prompts:
        with Decoder(m, device="cpu", dtype=torch.float32, prefixes=store) as d:
            d.add(prompt, Sampling(greedy=True, max_new_tokens=steps))
            logits = d.logits()
            first = d.advance(d.choose(d.process(logits)))
            tokens = [first[0].id] + [t.id for _ in range(steps - 1) for t in d.step()]
        out.append((tokens, logits))
    return out


def test_a_shared_beginning_is_reused_and_changes_nothing():
    for kw in ({}, {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu"}):
        m = model(**kw)
        prompts = [SHARED + [30, 31, 32], SHARED + [40, 41], SHARED[:10] + [7]]
        store = PrefixStore(budget_bytes=1 << 24, min_tokens=8)
        with_store = run(m, prompts, store)
        plain = run(m, prompts)
        for (a, la), (b, lb) in zip(with_store, plain):
            assert a == b
            torch.testing.assert_close(la, lb, rtol=0, atol=1e-5)
        # The second prompt took the shared 20 tokens; the third its first 10 (at least 8 needed).
        assert (store.hits, store.misses, store.reused_tokens) == (2, 1, 30)


def test_the_store_keeps_to_its_budget_and_leaves_a_token_to_read():
    m = model()
    store = PrefixStore(budget_bytes=1 << 24, min_tokens=4)
    run(m, [SHARED], store, steps=1)
    per_prompt = store.bytes
    assert per_prompt == 2 * TINY_MODEL["n_layer"] * TINY_MODEL["n_embd"] * len(SHARED) * 4   # k and v, fp32
    hit = store.lookup(SHARED)            # the same prompt again: all but its last token
    assert hit is not None and hit[0] == len(SHARED) - 1
    small = PrefixStore(budget_bytes=per_prompt, min_tokens=4)
    run(m, [SHARED, list(range(30, 50))], small, steps=1)
    assert len(small) == 1 and small.bytes == per_prompt            # the older one made room
    assert small.lookup(SHARED + [1]) is None and small.lookup(list(range(30, 50)) + [1])[0] == 20


def test_a_long_prompt_read_in_chunks_starts_from_its_stored_beginning():
    m = model()
    store = PrefixStore(budget_bytes=1 << 24, min_tokens=8)
    run(m, [SHARED + [30]], store, steps=1)
    long = SHARED + list(range(31, 46))                 # 35 tokens: 20 stored, 14 to read, 1 in the step
    alone = solo_tokens(m, long)
    with Decoder(m, device="cpu", dtype=torch.float32, prefixes=store, chunk=5) as d:
        d.add([1, 2], Sampling(greedy=True, max_new_tokens=20))   # a row decoding meanwhile
        b = d.add(long, Sampling(greedy=True, max_new_tokens=8))
        assert [r.done for r in d.reading] == [20]
        steps, tokens = 0, []
        while d.busy:
            tokens += [t.id for t in d.step() if t.row == b]
            steps += 1
            if steps == 2:                              # 5 and 5 read; the last 4 in step 3
                assert tokens == [] and d.reading[0].done == 30
    assert tokens == alone
    assert steps == 20                                  # the short row's budget (the long one's ends first)
    assert (store.hits, store.reused_tokens) == (1, 20)
    assert store.lookup(long + [1])[0] == len(long)     # the whole prompt is stored once read


def test_with_no_row_decoding_a_long_prompt_is_read_whole():
    m = model()
    with Decoder(m, device="cpu", dtype=torch.float32, chunk=5) as d:
        d.add(SHARED, Sampling(greedy=True, max_new_tokens=3))
        assert not d.active and len(d.reading) == 1
        assert len(d.step()) == 1 and not d.reading     # read and answered in the first step
        assert [t.id for _ in range(2) for t in d.step()] == solo_tokens(m, SHARED, 3)[1:]


def solo_tokens(m, prompt, steps=8):
    with Decoder(m, device="cpu", dtype=torch.float32) as d:
        d.add(prompt, Sampling(greedy=True, max_new_tokens=steps))
        return [t.id for _ in range(steps) for t in d.step()]
