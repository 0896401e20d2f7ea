"""The model-parallel layouts' single-process parts: layouts, the tensor-parallel row order,
and the pipeline's stages. (Runs on two processes: test_train_distributed.py.)"""

import pytest
import torch

from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.train.parallel import parse_layout, row_order, split_rows, whole_rows
from tinygpt.train.pipeline import Stage, bubble, check_pipeline, stage_blocks


def test_a_layout_names_each_kind_once_and_the_rest_are_one():
    assert parse_layout("") == {"dp": 1, "tp": 1, "pp": 1}
    assert parse_layout("dp=2, tp=2") == {"dp": 2, "tp": 2, "pp": 1}
    assert parse_layout("pp=4") == {"dp": 1, "tp": 1, "pp": 4}
    for bad in ("tp", "tp=0", "ep=2", "tp=two"):
        with pytest.raises(ValueError, match="is not one of dp=N, tp=N, pp=N"):
            parse_layout(bad)


def test_the_blocks_are_shared_out_evenly_the_first_stages_taking_the_rest():
    assert stage_blocks(4, 2) == [range(0, 2), range(2, 4)]
    assert stage_blocks(5, 3) == [range(0, 2), range(2, 4), range(4, 5)]
    assert bubble(2, 2) == pytest.approx(1 / 3) and bubble(4, 16) == pytest.approx(3 / 19)


def test_the_stages_in_a_row_compute_the_models_logits(tiny_model):
    x = torch.randint(0, tiny_model.config.vocab_size, (2, 8))
    first, last = Stage(tiny_model, range(0, 1), True, False), Stage(tiny_model, range(1, 2), False, True)
    with torch.no_grad():
        torch.testing.assert_close(last(first(x)), tiny_model(x).logits, rtol=0, atol=0)


def test_a_pipeline_refuses_what_it_cannot_split(tiny_model):
    with pytest.raises(TinyGPTError, match="pp=3 needs at least 3 blocks"):
        check_pipeline(tiny_model, 3)
    skips = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=50, unet_skips=True))
    with pytest.raises(TinyGPTError, match="U-Net skips"):
        check_pipeline(skips, 2)


@pytest.mark.parametrize("mlp", ["gelu", "swiglu"])
def test_the_tensor_parallelrow_order_gives_each_rank_its_own_heads_and_columns(mlp):
    cfg = GPTConfig(n_layer=1, n_head=4, n_kv_head=2, n_embd=16, block_size=8, vocab_size=50, mlp=mlp)
    model = GPT(cfg)
    orders = row_order(model, 2)
    params = {n: p.detach() for n, p in model.named_parameters()}
    split = split_rows(params, orders)
    for name, t in whole_rows(split, orders).items():
        assert torch.equal(t, params[name]), name
    # Rank 1's half of the packed q/k/v rows: its two query heads, then its key and value group.
    hs, qkv = cfg.head_size, params["transformer.h.0.attn.c_attn.weight"]
    q, k, v = qkv[:16], qkv[16:24], qkv[24:32]
    rank1 = split["transformer.h.0.attn.c_attn.weight"][16:]
    assert torch.equal(rank1, torch.cat([q[2 * hs:], k[hs:], v[hs:]]))
    with pytest.raises(TinyGPTError, match="cannot share evenly"):
        row_order(model, 4)  # two key/value heads, four ranks



def test_one_process_given_a_model_parallel_layout_says_it_trains_whole(tmp_path, tiny_corpus, capsys):
    from tinygpt.cli import main

    assert main(["train", "--data", str(tiny_corpus), "--parallel", "tp=2", "--n-layer", "1", "--n-head", "2",
                 "--n-embd", "16", "--block-size", "16", "--batch-size", "2", "--max-steps", "1",
                 "--device", "cpu", "--dtype", "fp32", "--progress", "false", "--max-new-tokens", "0",
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert ("notice: --parallel tp=2 shares the work among 2 processes, and this is one: it trains the whole "
            "model") in err
