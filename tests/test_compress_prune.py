"""Pruning: magnitude pruning is PyTorch's l1_unstructured mask, Wanda's scores are |w| times
input norms within each row, and a pruned run holds exactly the zeros asked for."""

import pytest
import torch
import torch.nn.utils.prune as torch_prune
from helpers import make_run

from tinygpt import quant
from tinygpt.compress import PruneOptions, prune_run
from tinygpt.compress import prune as P
from tinygpt.errors import TinyGPTError
from tinygpt.run import RunDir


def test_magnitude_is_l1_unstructured():
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(0))
    lin = torch.nn.Linear(64, 48)
    lin.weight.data.copy_(w)
    torch_prune.l1_unstructured(lin, "weight", amount=0.3)
    assert torch.equal(P.magnitude_mask(w, 0.3), lin.weight_mask.bool())


def test_wanda_ranks_within_each_row_by_weight_times_input_norm():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 0.1, -0.2, 1.5]])
    norms = torch.tensor([10.0, 1.0, 0.1, 1.0])   # a loud first input
    keep = P.wanda_mask(w, norms, 0.5)
    # Scores: row 0 = 10, 2, 0.3, 0.5 -> the two smallest go; row 1 = 40, 0.1, 0.02, 1.5.
    assert keep.tolist() == [[True, True, False, False], [True, False, False, True]]
    # By magnitude the loud input's 1.0 goes, and row 1's 1.5 stays: the whole tensor is ranked.
    assert P.magnitude_mask(w, 0.5).tolist() == [[False, True, True, False], [True, False, False, True]]


@pytest.mark.parametrize("criterion", ["magnitude", "wanda"])
def test_a_pruned_run_has_the_zeros_asked_for_and_the_rest_unchanged(tmp_path, criterion):
    path = tmp_path / "run"
    model, _ = make_run(path, randomize=True, n_layer=2, n_head=2, n_embd=64, block_size=32)
    text = tmp_path / "calib.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    out = prune_run(path, None, PruneOptions(amount=0.25, criterion=criterion, data=str(text),
                                             calibration_tokens=128))
    assert out == tmp_path / "run-pruned"
    run = RunDir.open(out)
    assert run.read_config()["pruned"]["criterion"] == criterion
    pruned = run.load_model()[0]
    for (name, m), (_, p) in zip(quant.linears(model, head=False), quant.linears(pruned, head=False)):
        zero = p.weight == 0
        assert zero.sum().item() == round(0.25 * m.weight.numel()), name
        assert torch.equal(p.weight[~zero], m.weight[~zero])
        if criterion == "wanda":
            assert (zero.sum(dim=1) == m.in_features // 4).all()    # a quarter of each row
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)   # the head is left whole


def test_bad_amounts_and_quantized_models_are_refused(tmp_path):
    for bad in (0, 1, 1.5):
        with pytest.raises(TinyGPTError, match="--amount is a fraction"):
            PruneOptions(amount=bad)
    path = tmp_path / "run"
    make_run(path, n_layer=1, n_head=2, n_embd=64, block_size=16)
    from tinygpt.compress import QuantizeOptions, quantize_run

    q = quantize_run(path, None, QuantizeOptions(scheme="int8"))
    with pytest.raises(TinyGPTError, match="prune its float run"):
        prune_run(q, tmp_path / "x", PruneOptions())
    assert not (tmp_path / "x").exists()
