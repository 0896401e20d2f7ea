"""Parameter-efficient fine-tuning (tinygpt.adapters) on the GPT-2-like and the modern tiny model:
LoRA (through peft), bottleneck adapters and soft prompts. Each starts out computing exactly
what the base computes, trains only its own tensors, and saves and loads just those; LoRA
merges into a plain model. The soft prompt's KV-cache, padding and packing paths are here too."""

import copy
import importlib.util

import pytest
import torch
from helpers import CHARS, MODERN, TINY_MODEL, random_ids, randomize_

from tinygpt import adapters
from tinygpt.adapters import AdapterConfig
from tinygpt.checkpoint import model_from_tensors, weight_tensors
from tinygpt.errors import TinyGPTError
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT, GPTConfig
from tinygpt.tokenizer import CharTokenizer

needs_peft = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="LoRA is built with peft")

VARIANTS = {"gpt2": {}, "modern": MODERN}
R = 4
BOTTLENECK = 8
BLOCK = TINY_MODEL["block_size"]


@pytest.fixture(params=list(VARIANTS))
def base(request):
    """A randomized tiny GPT in eval mode: large enough weights that any slip shows in the logits."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_MODEL, **VARIANTS[request.param]))
    return randomize_(model, seed=1, embedding_scale=0.1).eval()


def adapted(base, *, seed=5, prompt_ids=None, **cfg):
    """A copy of ``base`` with the adapter ``cfg`` attached (its init drawn after seeding ``seed``)."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    return adapters.attach(model, AdapterConfig(**cfg), prompt_ids=prompt_ids).eval()


def logits(model, x, **kwargs):
    with torch.no_grad():
        return model(x, **kwargs).logits


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def train(model, steps=3):
    """A few AdamW steps on the trainable parameters, on a real next-token loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    idx, targets = random_ids((4, 10), seed=11), random_ids((4, 10), seed=12)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        model(idx, targets).loss.backward()
        opt.step()
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)  # frozen: not even a gradient
    return model.eval()


def assert_only_the_adapter_trained(model, base, before):
    after = trainable(model)
    assert after.keys() == before.keys()
    for name in before:
        assert not torch.equal(after[name], before[name]), name
    frozen, original = adapters.base_tensors(model), weight_tensors(base)
    assert frozen.keys() == original.keys()
    for name in original:
        assert torch.equal(frozen[name], original[name]), name


# ---------------------------------------------------------------------------- LoRA


# (in, out) of each role's linear map in TINY_MODEL (C 32, 4 heads of 8, MLP hidden 128, vocabulary
# 50 padded to 64), worked out by hand: SwiGLU's c_fc computes gate and up, 2 x 128.
def hand_shapes(swiglu):
    return {"qkv": (32, 96), "out": (32, 32), "mlp_in": (32, 256 if swiglu else 128), "mlp_out": (128, 32),
            "head": (32, 64)}


MODULES = {"qkv": "attn.c_attn", "out": "attn.c_proj", "mlp_in": "mlp.c_fc", "mlp_out": "mlp.c_proj"}
TARGET_SETS = {"all": ("qkv", "out", "mlp_in", "mlp_out", "head"), "qkv,mlp_out": ("qkv", "mlp_out"),
               "out,head": ("out", "head")}


def lora_names(roles):
    """The saved (peft file) names of a LoRA on ``roles`` of TINY_MODEL's two blocks."""
    paths = [f"transformer.h.{i}.{MODULES[r]}" for i in range(2) for r in roles if r != "head"]
    paths += ["lm_head"] if "head" in roles else []
    return {f"{p}.lora_{m}.weight" for p in paths for m in "AB"}


@needs_peft
@pytest.mark.parametrize("targets", list(TARGET_SETS))
def test_lora_trains_r_times_in_plus_out_per_adapted_map(base, targets):
    shapes = hand_shapes(base.config.mlp == "swiglu")
    for role, path in MODULES.items():  # the hand numbers are the model's
        linear = base.transformer.h[0].get_submodule(path)
        assert (linear.in_features, linear.out_features) == shapes[role], role
    assert tuple(base.lm_head.weight.shape[::-1]) == shapes["head"]  # padded_vocab_size rows

    model = adapted(base, method="lora", lora_rank=R, lora_targets=targets)
    roles = TARGET_SETS[targets]
    by_hand = sum(R * sum(shapes[r]) * (1 if r == "head" else 2) for r in roles)
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert count == by_hand == adapters.lora_parameter_count(base.config, model.adapter_config)
    if targets == "all":
        assert by_hand == {"gelu": 4480, "swiglu": 5504}[base.config.mlp]

    saved = adapters.adapter_tensors(model)
    assert set(saved) == lora_names(roles)
    for name, t in saved.items():
        role = "head" if name.startswith("lm_head") else next(r for r, p in MODULES.items() if f".{p}." in name)
        n_in, n_out = shapes[role]
        assert t.shape == ((R, n_in) if ".lora_A." in name else (n_out, R)), name
        assert ".default." not in name and "base_layer" not in name
        if ".lora_B." in name:
            assert torch.count_nonzero(t) == 0  # B starts at zero: the base's function


@needs_peft
@pytest.mark.parametrize("targets", ["all", "qkv,mlp_out"])
def test_lora_starts_as_the_base_and_training_moves_only_lora(base, targets):
    model = adapted(base, method="lora", lora_rank=R, lora_targets=targets)
    x = random_ids((2, 12), seed=3)
    assert torch.equal(logits(model, x), logits(base, x))
    before = trainable(model)
    assert before and all(".lora_A." in n or ".lora_B." in n for n in before)
    train(model)
    assert_only_the_adapter_trained(model, base, before)
    assert set(adapters.adapter_tensors(model)) == lora_names(TARGET_SETS[targets])
    assert (logits(model, x) - logits(base, x)).abs().max() > 1e-3


@needs_peft
@pytest.mark.parametrize("targets", ["all", "qkv,mlp_out", "out,head"])
def test_merge_folds_lora_into_a_plain_model(base, targets):
    model = train(adapted(base, method="lora", lora_rank=R, lora_targets=targets))
    x = random_ids((2, 12), seed=3)
    want = logits(model, x)
    config, tensors = adapters.merge(model)
    assert not any("lora" in n or "base_layer" in n for n in tensors)
    merged = model_from_tensors(lambda: GPT(config), tensors, "x").eval()
    assert (logits(merged, x) - want).abs().max() < 1e-5
    assert (want - logits(base, x)).abs().max() > 1e-3  # the adapter does something: the check is not vacuous
    assert torch.equal(logits(model, x), want)  # merging leaves the adapted model as it was
    head_adapted = "head" in TARGET_SETS[targets]
    if base.config.tie_embeddings and head_adapted:
        # The LoRA changed the head but not the embedding: the merged model has its own head.
        assert not config.tie_embeddings
        assert not torch.equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"])
        assert torch.equal(tensors["transformer.wte.weight"], base.transformer.wte.weight)
    else:
        assert config == base.config
        assert ("lm_head.weight" in tensors) == (not base.config.tie_embeddings)
    if not head_adapted:
        assert torch.equal(merged.lm_head.weight, base.lm_head.weight)


@needs_peft
def test_lora_tensors_load_into_a_fresh_attachment_and_must_match_it(base):
    model = train(adapted(base, method="lora", lora_rank=R, lora_targets="all"))
    saved = adapters.adapter_tensors(model)
    fresh = adapted(base, seed=9, method="lora", lora_rank=R, lora_targets="all")
    x = random_ids((2, 12), seed=3)
    assert not torch.equal(logits(fresh, x), logits(model, x))
    adapters.load_adapter_tensors(fresh, saved, "adapter.safetensors")
    assert torch.equal(logits(fresh, x), logits(model, x))

    name = "transformer.h.1.mlp.c_fc.lora_A.weight"
    with pytest.raises(TinyGPTError, match=f"lacks {name}"):
        adapters.load_adapter_tensors(fresh, {k: v for k, v in saved.items() if k != name}, "adapter.safetensors")
    extra = {**saved, "transformer.h.0.ln_1.lora_A.weight": torch.zeros(R, 32)}
    with pytest.raises(TinyGPTError, match="has transformer.h.0.ln_1.lora_A.weight"):
        adapters.load_adapter_tensors(fresh, extra, "adapter.safetensors")
    with pytest.raises(TinyGPTError, match=r"is \(8, 32\)"):
        adapters.load_adapter_tensors(fresh, {**saved, name: torch.zeros(2 * R, 32)}, "adapter.safetensors")
    smaller = adapted(base, method="lora", lora_rank=R, lora_targets="qkv")
    with pytest.raises(TinyGPTError, match="has "):
        adapters.load_adapter_tensors(smaller, saved, "adapter.safetensors")


@pytest.mark.parametrize("second", ["lora", "adapter", "prompt"])
def test_a_model_takes_one_adapter(base, second):
    model = adapted(base, method="adapter", bottleneck=BOTTLENECK)
    with pytest.raises(TinyGPTError, match="already carries an adapter"):
        adapters.attach(model, AdapterConfig(method=second, soft_prompt_tokens=2))
    assert adapters.attached(model).method == "adapter"


def test_only_lora_merges(base):
    with pytest.raises(TinyGPTError, match="carries no adapter"):
        adapters.merge(copy.deepcopy(base))
    with pytest.raises(TinyGPTError, match="is an adapter fine-tune"):
        adapters.merge(adapted(base, method="adapter", bottleneck=BOTTLENECK))


# ---------------------------------------------------------------------------- bottleneck adapters


def test_bottleneck_adapters_start_as_the_base_and_train_alone(base):
    model = adapted(base, method="adapter", bottleneck=BOTTLENECK)
    x = random_ids((2, 12), seed=3)
    assert torch.equal(logits(model, x), logits(base, x))
    before = trainable(model)
    assert set(before) == {f"transformer.h.{i}.{where}_adapter.{lin}.{p}" for i in range(2)
                           for where in ("attn", "mlp") for lin in ("down", "up") for p in ("weight", "bias")}
    C, m = 32, BOTTLENECK
    assert sum(t.numel() for t in before.values()) == 2 * 2 * (C * m + m + m * C + C) == 2208
    train(model)
    assert_only_the_adapter_trained(model, base, before)
    assert (logits(model, x) - logits(base, x)).abs().max() > 1e-3
    assert set(adapters.adapter_tensors(model)) == set(before)


# ---------------------------------------------------------------------------- soft prompt


TEXT_IDS = CharTokenizer(CHARS).encode("to be")  # 5 tokens


@pytest.mark.parametrize("n", [5, 3, 8])  # the text exactly, cut, repeated
def test_prompt_reads_like_its_text_before_the_input(base, n):
    model = adapted(base, method="prompt", soft_prompt_tokens=n, prompt_ids=TEXT_IDS)
    read = torch.tensor((TEXT_IDS * 2)[:n])
    assert model.config.block_size == BLOCK - n and base.config.block_size == BLOCK
    x = random_ids((2, BLOCK - n), seed=3)  # all the context the prompt leaves
    want = logits(base, torch.cat([read.expand(2, n), x], dim=1))[:, n:]
    assert (logits(model, x) - want).abs().max() < 1e-5
    with pytest.raises(TinyGPTError, match=f"exceeds the context of {BLOCK - n}"):
        model(random_ids((1, BLOCK - n + 1)))


@pytest.mark.parametrize("chunks", [[11], [1] * 11, [4, 1, 3, 1, 2], [2, 9]])
def test_prompt_through_the_kv_cache_matches_the_full_forward(base, chunks):
    model = adapted(base, method="prompt", soft_prompt_tokens=5, prompt_ids=TEXT_IDS)
    x = random_ids((2, 11), seed=3)
    cache = KVCache(model.config, 2)
    assert cache.max_len == 11
    pieces, at = [], 0
    for n in chunks:
        pieces.append(logits(model, x[:, at:at + n], cache=cache))
        at += n
        assert cache.length == at
    assert (torch.cat(pieces, dim=1) - logits(model, x)).abs().max() < 1e-5


def test_prompt_with_padded_and_packed_rows(base):
    """Every sequence of a row, packed or after left padding, reads the prompt before it."""
    model = adapted(base, method="prompt", soft_prompt_tokens=5, prompt_ids=TEXT_IDS)
    a, b, c = random_ids((1, 4), seed=4)[0], random_ids((1, 7), seed=5)[0], random_ids((1, 9), seed=6)[0]
    ids = torch.stack([torch.cat([a, b]), torch.cat([torch.zeros(2, dtype=torch.long), c])])
    pos = torch.stack([torch.cat([torch.arange(4), torch.arange(7)]),
                       torch.cat([torch.full((2,), -1), torch.arange(9)])])
    out = logits(model, ids, input_pos=pos)
    assert torch.isfinite(out).all()
    for row, cols, seq in [(0, slice(0, 4), a), (0, slice(4, 11), b), (1, slice(2, 11), c)]:
        assert (out[row, cols] - logits(model, seq[None])[0]).abs().max() < 1e-5


def test_prompt_keys_and_values_are_computed_once_per_weight_version(base):
    model = adapted(base, method="prompt", soft_prompt_tokens=5, prompt_ids=TEXT_IDS)
    x = random_ids((2, 8), seed=3)
    with torch.no_grad():
        first = model(x).logits
        memo = model.prompt._memo[1]
        assert torch.equal(model(x).logits, first)
        assert model.prompt._memo[1] is memo  # reused, not recomputed
        for layer in memo.layers:  # what the forward reads is the memo: spoiling it shows
            layer.v.mul_(3.0)
        assert (model(x).logits - first).abs().max() > 1e-3
    with torch.enable_grad():  # training recomputes every time (for the gradients) and keeps no memo
        assert torch.equal(model(x).logits.detach(), first)
        assert model.prompt._memo is None
    with torch.no_grad():
        assert torch.equal(model(x).logits, first)
        memo = model.prompt._memo[1]
        model.prompt.weight.mul_(1.5)  # in place: a new version of the weight
        changed = model(x).logits
        assert model.prompt._memo[1] is not memo
    assert (changed - first).abs().max() > 1e-3
    with torch.enable_grad():
        assert torch.equal(model(x).logits.detach(), changed)


def test_only_the_prompt_trains(base):
    model = adapted(base, method="prompt", soft_prompt_tokens=5, prompt_ids=TEXT_IDS)
    before = trainable(model)
    assert set(before) == {"prompt.weight"} and before["prompt.weight"].shape == (5, 32)
    assert set(adapters.adapter_tensors(model)) == {"prompt.weight"}
    train(model)
    assert_only_the_adapter_trained(model, base, before)


def test_prompt_without_text_starts_from_random_vocabulary_rows(base):
    model = adapted(base, seed=1, method="prompt", soft_prompt_tokens=8)
    again = adapted(base, seed=2, method="prompt", soft_prompt_tokens=8)
    table = base.transformer.wte.weight[:base.config.vocab_size]  # real tokens, never padding rows
    for prompt in (model.prompt.weight, again.prompt.weight):
        rows = (prompt[:, None, :] == table[None]).all(-1)  # (n, vocab): which token each row is
        assert rows.any(1).all()
        assert rows.any(0).sum() > 1  # not one token repeated
    assert not torch.equal(model.prompt.weight, again.prompt.weight)  # drawn from the global generator
    for ids in ([], [1, base.config.vocab_size]):  # none, or one past the vocabulary (a padding row)
        with pytest.raises(TinyGPTError, match="prompt-init gives no token ids of the vocabulary"):
            adapted(base, method="prompt", soft_prompt_tokens=8, prompt_ids=ids)


@pytest.mark.parametrize("n", [BLOCK, BLOCK + 4])
def test_prompt_must_leave_context(base, n):
    with pytest.raises(TinyGPTError, match=f"--soft-prompt-tokens {n} leaves no context"):
        adapted(base, method="prompt", soft_prompt_tokens=n)
    one_left = adapted(base, method="prompt", soft_prompt_tokens=BLOCK - 1)
    assert one_left.config.block_size == 1
    assert logits(one_left, random_ids((1, 1))).shape == (1, 1, 50)


# ---------------------------------------------------------------------------- checkpoint state


@pytest.mark.parametrize("method", [None, "lora", "adapter", "prompt"])
def test_state_tensors_round_trip(base, method):
    def build(seed):
        if method is None:
            torch.manual_seed(seed)
            return GPT(base.config).eval()
        return adapted(base, seed=seed, method=method, lora_rank=R, lora_targets="all", bottleneck=BOTTLENECK,
                       soft_prompt_tokens=4)

    if method == "lora" and importlib.util.find_spec("peft") is None:
        pytest.skip("LoRA is built with peft")
    model = train(build(0))
    state = adapters.state_tensors(model)
    if method is None:
        assert state.keys() == weight_tensors(model).keys()
    else:
        assert state.keys() == adapters.adapter_tensors(model).keys()
        assert state.keys() == {n.replace(".default.", ".") for n in trainable(model)}
    other = build(7)
    x = random_ids((2, 10), seed=3)
    assert not torch.equal(logits(other, x), logits(model, x))
    adapters.load_state_tensors(other, state, "state")
    assert torch.equal(logits(other, x), logits(model, x))
    with pytest.raises(TinyGPTError):
        adapters.load_state_tensors(other, {k: v for k, v in list(state.items())[1:]}, "state")



def test_a_refused_attach_changes_nothing(base):
    model = copy.deepcopy(base)
    with pytest.raises(TinyGPTError, match="leaves no context"):
        adapters.attach(model, AdapterConfig(method="prompt", soft_prompt_tokens=base.config.block_size))
    assert all(p.requires_grad for p in model.parameters()) and adapters.attached(model) is None


def test_adapters_take_the_models_dtype(base):
    for method in ("adapter", "prompt"):
        model = adapted(copy.deepcopy(base).to(torch.bfloat16), method=method, bottleneck=4, soft_prompt_tokens=3)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert model(random_ids((1, 8))).logits.dtype == torch.bfloat16


def test_the_prompt_memo_is_never_kept_in_train_mode():
    """Dropout makes a train-mode forward's prompt keys one draw among many: never reused."""
    torch.manual_seed(0)
    model = randomize_(GPT(GPTConfig(**{**TINY_MODEL, "dropout": 0.3})), seed=1, embedding_scale=0.1)
    adapters.attach(model, AdapterConfig(method="prompt", soft_prompt_tokens=3), prompt_ids=[1, 2, 3])
    x = random_ids((1, 6))
    with torch.no_grad():
        reference = model.eval()(x).logits
        model.prompt._memo = None
        model.train()(x)
        assert model.prompt._memo is None
        assert torch.equal(model.eval()(x).logits, reference)
