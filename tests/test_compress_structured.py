"""Structured pruning: removing a head or neuron computes what zeroing its output did, the
shrunken shapes save, load and decode, and the formats that cannot hold them say so."""

import pytest
import torch
from helpers import make_run, randomize_

from tinygpt.cli import main
from tinygpt.compress import PruneOptions, prune_run
from tinygpt.compress import structured as S
from tinygpt.errors import TinyGPTError
from tinygpt.interop import hf
from tinygpt.kvcache import KVCache
from tinygpt.model import GPT, GPTConfig
from tinygpt.run import RunDir

SMALL = dict(n_layer=2, n_embd=64, block_size=32, vocab_size=40)
SHAPES = {
    "gpt2": dict(n_head=4),
    "llama-gqa": dict(n_head=4, n_kv_head=2, mlp="swiglu", norm="rmsnorm", pos_emb="rope", bias=False,
                      tie_embeddings=False, qk_norm=True),
    "value-embeds": dict(n_head=4, n_kv_head=2, value_embeds=True, mlp="relu2"),
}


def model_of(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**{**SMALL, **kw})).eval()
    randomize_(model, seed, scale=0.3, embedding_scale=0.1)
    return model


def silenced(model: GPT, units: str, keep: list[torch.Tensor]) -> GPT:
    """A copy of ``model`` whose units outside ``keep`` have zero output columns: what their removal computes."""
    copy = GPT(model.config).eval()
    copy.load_state_dict(model.state_dict())
    for i, idx in enumerate(keep):
        proj = S._modules(copy, i, units)[1]
        for u, cols in enumerate(S.unit_columns(copy, i, units)):
            if u not in idx.tolist():
                proj.weight.data[:, cols] = 0
    return copy


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("units", ["heads", "neurons"])
def test_removing_units_computes_what_zeroing_their_outputs_did(shape, units):
    model = model_of(**SHAPES[shape])
    n = len(S.unit_columns(model, 0, units))
    keep = [torch.tensor([0, n - 1]), torch.tensor([1])]   # block 1 keeps a single unit
    pruned = S.shrink(model, units, keep)
    x = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, silenced(model, units, keep)(x).logits, rtol=1e-5, atol=1e-5)
    group = 2 if SHAPES[shape].get("n_kv_head") else 1
    if units == "heads":
        assert pruned.config.layer_heads == [2 * group, group] and pruned.config.layer_hidden is None
        assert pruned.transformer.h[1].attn.c_proj.weight.shape == (64, group * 16)
    else:
        assert pruned.config.layer_hidden == [2, 1]
        assert pruned.transformer.h[1].mlp.c_proj.weight.shape == (64, 1)
    # What a file of the pruned shape holds (stored_params, the vocabulary's padding left out) shrinks as much.
    gone = model.num_params() - pruned.num_params()
    assert gone > 0 and model.config.stored_params() - pruned.config.stored_params() == gone


@pytest.mark.parametrize("units", ["heads", "neurons"])
def test_a_unit_whose_output_weights_are_zero_goes_first_and_changes_nothing(units):
    model = model_of(n_head=4, mlp_hidden=4)   # four units of each kind per block: a quarter is one
    for i in range(2):
        proj = S._modules(model, i, units)[1]
        proj.weight.data[:, S.unit_columns(model, i, units)[2]] = 0  # unit 2 of each block adds nothing
    pruned, removed = S.prune_structure(model, units, 0.25)
    assert removed == {units: [[2], [2]]}
    x = torch.randint(0, 40, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(pruned(x).logits, model(x).logits, rtol=1e-6, atol=1e-6)


def test_wanda_scores_units_by_their_inputs_norm_times_output_columns():
    model = model_of(n_head=4)
    proj = model.transformer.h[0].mlp.c_proj
    norms = {i: torch.rand(256) for i in range(2)}
    got = S.scores(model, "neurons", norms)[0]
    want = torch.stack([proj.weight[:, j].norm() * norms[0][j] for j in range(256)])
    torch.testing.assert_close(got, want)
    # Heads: the sum over the head's 16 columns.
    norms = {i: torch.rand(64) for i in range(2)}
    w = model.transformer.h[1].attn.c_proj.weight
    got = S.scores(model, "heads", norms)[1]
    torch.testing.assert_close(got, torch.stack([(w[:, h * 16:(h + 1) * 16].norm(dim=0) * norms[1][h * 16:(h + 1) * 16])
                                                 .sum() for h in range(4)]))


def test_kept_widths_round_to_kernel_shapes_and_never_empty_a_block():
    assert S.kept(4, 0.2, "heads") == 3 and S.kept(2, 0.9, "heads") == 1
    assert S.kept(1024, 0.2, "neurons") == 832          # 819.2 -> a multiple of 32
    assert S.kept(100, 0.2, "neurons") == 80
    with pytest.raises(TinyGPTError, match="removes no heads"):
        S.prune_structure(model_of(n_head=2), "heads", 0.2)


def test_a_pruned_model_decodes_with_its_narrower_cache():
    model = model_of(**SHAPES["llama-gqa"])
    pruned = S.shrink(model, "heads", [torch.tensor([1]), torch.tensor([0, 1])])
    assert [layer.k.shape[1] for layer in KVCache(pruned.config, 1, 16).layers] == [1, 2]
    x = torch.randint(0, 40, (1, 12))
    cache = KVCache(pruned.config, 1, 16)
    with torch.no_grad():
        full = pruned(x).logits
        steps = torch.cat([pruned(x[:, :8], cache=cache).logits] +
                          [pruned(x[:, t:t + 1], cache=cache).logits for t in range(8, 12)], dim=1)
    torch.testing.assert_close(steps, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_a_structurally_pruned_run_saves_loads_and_records_what_went(tmp_path, criterion):
    path = tmp_path / "run"
    make_run(path, randomize=True, n_layer=2, n_head=4, n_embd=64, block_size=32)
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = prune_run(path, tmp_path / "p", PruneOptions(amount=0.25, criterion=criterion, structured="both",
                                                       data=str(text), calibration_tokens=128))
    run = RunDir.open(out)
    record = run.read_config()["pruned"]
    assert record["structured"] == "both" and [len(r) for r in record["removed"]["heads"]] == [1, 1]
    assert record["params"][1] < record["params"][0]
    loaded = run.load_model()[0]
    assert loaded.config.layer_heads == [3, 3] and loaded.config.layer_hidden == [192, 192]
    assert loaded.num_params() == record["params"][1]
    assert run.read_config()["model"]["layer_heads"] == [3, 3]
    # The saved file is smaller than the source's and reloads to the same logits, twice.
    assert (out / "model.safetensors").stat().st_size < (path / "model.safetensors").stat().st_size
    x = torch.randint(0, 30, (1, 16))
    with torch.no_grad():
        assert torch.equal(loaded(x).logits, RunDir.open(out).load_model()[0](x).logits)


def test_formats_that_cannot_hold_pruned_shapes_refuse_with_a_message():
    model = model_of(n_head=4)
    heads = S.shrink(model, "heads", [torch.tensor([0, 1, 2])] * 2)
    with pytest.raises(TinyGPTError, match="export the unpruned run"):
        hf.gpt2_config_to_hf(heads.config)
    uneven = S.shrink(model, "neurons", [torch.arange(100), torch.arange(50)])
    with pytest.raises(TinyGPTError, match="export the unpruned run"):
        hf.gpt2_config_to_hf(uneven.config)
    even = S.shrink(model, "neurons", [torch.arange(96)] * 2)
    assert hf.gpt2_config_to_hf(even.config)["n_inner"] == 96     # one width: an ordinary GPT-2


def test_uniformly_pruned_neurons_export_to_transformers_with_the_same_logits(tmp_path):
    from transformers import GPT2LMHeadModel

    model = S.shrink(model_of(n_head=4), "neurons", [torch.arange(0, 192, 2)] * 2)
    theirs = GPT2LMHeadModel(__import__("transformers").GPT2Config(**hf.gpt2_config_to_hf(model.config))).eval()
    theirs.load_state_dict(hf.gpt2_weights_to_hf(model.state_dict(), model.config), strict=False)
    x = torch.randint(0, 40, (1, 10))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)


def test_prune_recovers_by_fine_tuning_and_keeps_the_unrecovered_run(tmp_path, capsys):
    path = tmp_path / "run"
    make_run(path, randomize=True, n_layer=2, n_head=4, n_embd=64, block_size=32)
    text = tmp_path / "text.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    out = tmp_path / "small"
    assert main(["prune", str(path), "--structured", "heads", "--amount", "0.25", "--recover-steps", "3",
                 "--distill-weight", "0.5", "--data", str(text), "--out", str(out), "--progress", "false",
                 "--max-new-tokens", "0"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "recovered ->" in err and "distilling from" in err
    raw, tuned = RunDir.open(f"{out}-unrecovered"), RunDir.open(out)
    assert raw.read_config()["pruned"]["structured"] == "heads"
    saved = tuned.read_config()
    assert saved["finetune"]["teacher"] == str(path.resolve()) and saved["train"]["max_steps"] == 3
    a, b = raw.load_model()[0], tuned.load_model()[0]
    assert a.config.layer_heads == b.config.layer_heads == [3, 3]
    assert not torch.equal(a.transformer.h[0].attn.c_attn.weight, b.transformer.h[0].attn.c_attn.weight)
    assert main(["prune", str(path), "--distill-weight", "0.5", "--out", str(tmp_path / "x")]) == 1
    assert "add --recover-steps" in capsys.readouterr().err
