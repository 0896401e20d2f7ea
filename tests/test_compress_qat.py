"""Quantization-aware training: a full fine-tune whose forwards see int4 weights ends with a
quantized run that computes exactly what the training's last forward did."""

from pathlib import Path

import pytest
import torch
from helpers import make_run

from tinygpt import kernels, quant
from tinygpt.cli import main
from tinygpt.run import RunDir
from tinygpt.tokenizer import CharTokenizer

INSTRUCT = str(Path(__file__).parent / "fixtures" / "instruct.jsonl")
CHARS = "abcdefghijklmnopqrstuvwxyz \n.,:ABCDEFGHIJKLMNOPQRSTUVWXYZ?"


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base"
    make_run(path, tokenizer=CharTokenizer(CHARS), randomize=True, n_embd=64, n_head=2, block_size=128)
    return path


def test_qat_trains_through_the_rounding_and_writes_the_quantized_run(base, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(kernels, "quantized_route", lambda _: "int-fp32")
    out = tmp_path / "ft"
    assert main(["finetune", str(base), "--data", INSTRUCT, "--template", "simple", "--method", "full", "--qat",
                 "int4", "--out", str(out), "--max-steps", "4", "--progress", "false", "--max-new-tokens", "0",
                 "--device", "cpu", "--dtype", "fp32"]) == 0
    assert f"quantized as trained (int4) -> {out}-int4" in capsys.readouterr().err
    q = RunDir.open(f"{out}-int4")
    assert q.quantization().method == "qat" and q.quantization().bits == 4
    assert RunDir.open(out).read_config()["finetune"]["qat"] == "int4"
    # The float fine-tune with its forwards rounded (as in training) equals the quantized run.
    tuned, quantized = RunDir.open(out).load_model()[0], q.load_model()[0]
    quant.set_fake_quant(tuned, q.quantization())
    x = torch.randint(0, len(CHARS), (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(quantized(x).logits, tuned(x).logits, rtol=1e-4, atol=1e-4)
    # The training saw the rounding: the gradient reached the float weights through it.
    plain = RunDir.open(base).load_model()[0]
    assert not torch.equal(tuned.transformer.h[0].mlp.c_fc.weight, plain.transformer.h[0].mlp.c_fc.weight)


def test_qat_is_for_full_fine_tunes_of_float_models(base, tmp_path, capsys):
    assert main(["finetune", str(base), "--data", INSTRUCT, "--template", "simple", "--max-steps", "1",
                 "--progress", "false", "--method", "lora", "--qat", "int8", "--out", str(tmp_path / "a")]) == 1
    assert "use it with --method full" in capsys.readouterr().err
    assert main(["quantize", str(base), "--scheme", "int8", "--out", str(tmp_path / "q8")]) == 0
    assert main(["finetune", str(tmp_path / "q8"), "--data", INSTRUCT, "--template", "simple", "--method", "full",
                 "--max-steps", "1", "--progress", "false", "--out", str(tmp_path / "b")]) == 1
    assert "the base is quantized" in capsys.readouterr().err
