"""Distillation: in training, the loss is (1 - w) cross-entropy + w KL(teacher || student)
over exactly the counted targets; in evaluation it stays cross-entropy."""

import pytest
import torch
from helpers import randomize_

from tinygpt.errors import TinyGPTError
from tinygpt.finetune.distill import attach_teacher
from tinygpt.model import GPT, IGNORE_INDEX, GPTConfig

CFG = dict(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=20)


def model(seed: int) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(**CFG))
    randomize_(m, seed, scale=0.3, embedding_scale=0.3)
    return m


def test_the_training_loss_mixes_cross_entropy_with_the_teachers_kl_over_the_counted_targets():
    student, teacher = model(0), model(1)
    x, y = torch.randint(0, 20, (2, 12)), torch.randint(0, 20, (2, 12))
    y[0, 3] = IGNORE_INDEX
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False
    with torch.no_grad():
        plain = student(x, y, loss_mask=mask)
        s, t = student(x).logits.log_softmax(-1), teacher(x).logits.log_softmax(-1)
    counted = (y != IGNORE_INDEX) & mask
    kl = (t.exp() * (t - s)).sum(-1)[counted].sum()   # KL(teacher || student) per position, summed
    handle = attach_teacher(student.train(), teacher, 0.3)
    out = student(x, y, loss_mask=mask)
    torch.testing.assert_close(out.loss_sum, 0.7 * plain.loss_sum + 0.3 * kl, rtol=1e-5, atol=1e-5)
    assert out.n_targets == counted.sum() == plain.n_targets
    torch.testing.assert_close(out.loss, out.loss_sum / counted.sum())
    out.loss.backward()                                   # the gradient reaches the student only
    assert student.lm_head.weight.grad is not None and teacher.lm_head.weight.grad is None
    with torch.no_grad():                                 # validation: cross-entropy alone
        torch.testing.assert_close(student.eval()(x, y, loss_mask=mask).loss_sum, plain.loss_sum)
    handle.remove()


def test_a_teacher_equal_to_the_student_adds_nothing_and_other_vocabularies_are_refused():
    student = model(0).train()
    twin = model(0)
    x = torch.randint(0, 20, (1, 10))
    plain = student(x, x).loss_sum.detach()
    attach_teacher(student, twin, 0.5)
    torch.testing.assert_close(student(x, x).loss_sum, 0.5 * plain, rtol=1e-6, atol=1e-6)
    torch.manual_seed(0)
    other = GPT(GPTConfig(**{**CFG, "vocab_size": 30}))
    with pytest.raises(TinyGPTError, match="same tokenizer"):
        attach_teacher(model(0), other, 0.5)


def test_finetune_refuses_a_teacher_that_reads_other_tokens(tmp_path, capsys):
    from helpers import make_run

    from tinygpt.cli import main
    from tinygpt.tokenizer import CharTokenizer

    make_run(tmp_path / "base", n_layer=1, n_head=2, n_embd=32, block_size=16)
    make_run(tmp_path / "teacher", tokenizer=CharTokenizer("abcdefghijklmnopqrstuvwxyz .\n"), n_layer=1, n_head=2,
             n_embd=32, block_size=16)
    text = tmp_path / "t.txt"
    text.write_text("the quick brown fox. " * 50)
    assert main(["finetune", str(tmp_path / "base"), "--data", str(text), "--method", "full", "--teacher",
                 str(tmp_path / "teacher"), "--max-steps", "1", "--out", str(tmp_path / "ft"),
                 "--progress", "false"]) == 1
    assert "another tokenizer" in capsys.readouterr().err
    assert not (tmp_path / "ft").exists()   # refused before anything was written
