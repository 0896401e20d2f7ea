"""``tinygpt sample``: streaming text, seeds, the same text as the Python API, cropping, errors."""

import re

import pytest
from conftest import ROMEO

import tinygpt
from tinygpt.cli import main


def sample(run, *args):
    return main(["sample", str(run), *args])


def test_seeded_samples_are_reproducible(trained_run, capsys):
    args = ["--prompt", "ROMEO:", "--max-new-tokens", "25", "--seed", "3"]
    assert sample(trained_run, *args) == 0
    first = capsys.readouterr()
    assert sample(trained_run, *args) == 0
    assert capsys.readouterr().out == first.out
    assert first.out.startswith("ROMEO:") and len(first.out) == len("ROMEO:") + 25 + 1
    assert "model.safetensors: step 6" in first.err and "val loss" in first.err


def test_the_command_line_and_the_api_give_the_same_text(trained_run, capsys):
    assert sample(trained_run, "--prompt", "ROMEO:", "--max-new-tokens", "20", "--seed", "8",
                  "--num-samples", "3", "--temperature", "1.2", "--top-k", "10") == 0
    out = capsys.readouterr().out
    assert re.findall(r"^--- sample (\d) ---$", out, flags=re.M) == ["1", "2", "3"]
    printed = re.split(r"--- sample \d ---\n", out)[1:]
    lm = tinygpt.load(trained_run, device="cpu")
    texts = lm.generate("ROMEO:", 20, num_samples=3, seed=8, temperature=1.2, top_k=10)
    assert printed == [f"ROMEO:{t}\n" for t in texts] and len(set(texts)) == 3


def test_sample_errors(tiny_run, tmp_path, capsys):
    assert sample(tmp_path / "nope") == 1
    assert "no run directory" in capsys.readouterr().err
    assert sample(tiny_run, "--prompt", "Zé") == 1
    assert "characters the char tokenizer does not know: 'Z', 'é'" in capsys.readouterr().err
    assert sample(tiny_run, "--top-p", "2") == 1
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err
    data = (tiny_run / "model.safetensors").read_bytes()
    (tiny_run / "model.safetensors").write_bytes(data[:100])
    assert sample(tiny_run) == 1
    assert "truncated or corrupt" in capsys.readouterr().err


def test_long_prompt_is_cropped_with_notice(trained_run, tmp_path, capsys):
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(ROMEO[:200])
    assert sample(trained_run, "--prompt-file", str(prompt), "--max-new-tokens", "5", "--seed", "0") == 0
    captured = capsys.readouterr()
    assert "using its last 16 tokens" in captured.err
    assert captured.out.startswith(ROMEO[184:200])


@pytest.mark.parametrize("checkpoint", ["best", "last"])
def test_python_api(trained_run, checkpoint):
    lm = tinygpt.load(trained_run, checkpoint=checkpoint, device="cpu")
    a = lm.generate("ROMEO:", max_new_tokens=12, seed=5, num_samples=2)
    assert a == lm.generate("ROMEO:", max_new_tokens=12, seed=5, num_samples=2)
    assert len(a) == 2 and all(len(s) == 12 for s in a)
    assert lm.checkpoint.name == ("model.safetensors" if checkpoint == "best" else "last.safetensors")


def test_non_finite_weights_are_a_clear_error(tiny_run, capsys):
    # tinygpt 0.1 could checkpoint a diverged model; sampling it must not die in torch.multinomial.
    from tinygpt import checkpoint as ckpt

    path = tiny_run / "last.safetensors"
    tensors = ckpt.load_weights(path)
    tensors = {k: v.clone() for k, v in tensors.items()}
    tensors["transformer.wte.weight"][0, 0] = float("nan")
    ckpt.save_tensors(tensors, path, {"step": 6})
    assert main(["sample", str(tiny_run), "--checkpoint", "last"]) == 1
    err = capsys.readouterr().err
    assert "last.safetensors holds non-finite weights" in err and "Traceback" not in err
