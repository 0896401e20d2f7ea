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


def test_sample_errors(tiny_run, tmp_path, capsys, monkeypatch):
    assert sample(tmp_path / "nope") == 1
    assert "no run directory" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    assert sample("runs/nope") == 1  # a typo beside runs/, not the hub's owner/name
    assert "no run directory at runs/nope" in capsys.readouterr().err
    assert sample(tiny_run, "--checkpoint", "best2") == 1
    assert "no checkpoint 'best2': give best, last or the path of a .safetensors file" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("ROMEO:")
    assert sample(tiny_run, "--prompt", "hi", "--prompt-file", "p.txt") == 1
    assert "--prompt and --prompt-file each give the prompt; keep one of them" in capsys.readouterr().err
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


# ---------------------------------------------------------------------------- decoding options


def test_a_batch_of_prompts_gives_what_each_gives_alone(trained_run, tmp_path, capsys):
    prompts = ["ROMEO:", "what light", "R"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts) + "\n\n")
    args = ["--max-new-tokens", "15", "--seed", "4", "--num-samples", "2", "--min-p", "0.05",
            "--repetition-penalty", "1.2"]
    assert sample(trained_run, "--prompts-file", str(tmp_path / "prompts.txt"), *args) == 0
    out = capsys.readouterr().out
    assert re.findall(r"^--- prompt (\d), sample (\d) ---$", out, flags=re.M) == \
        [(str(p), str(s)) for p in (1, 2, 3) for s in (1, 2)]
    lm = tinygpt.load(trained_run)
    opts = dict(max_new_tokens=15, seed=4, num_samples=2, min_p=0.05, repetition_penalty=1.2)
    alone = [text for p in prompts for text in lm.generate(p, **opts)]
    assert lm.generate(prompts, **opts) == alone
    for (p, text) in zip([p for p in prompts for _ in range(2)], alone):
        assert f"{p}{text}\n" in out


def test_stop_strings_cut_the_text_and_greedy_ignores_the_seed(trained_run, capsys):
    lm = tinygpt.load(trained_run)
    free = lm.generate("ROMEO:", 30, greedy=True)[0]
    stop = free[5:7]
    cut = lm.generate("ROMEO:", 30, greedy=True, stop=[stop])[0]
    assert cut == free[:free.index(stop)]
    assert "".join(lm.stream("ROMEO:", 30, greedy=True, stop=[stop])) == cut
    assert sample(trained_run, "--prompt", "ROMEO:", "--max-new-tokens", "30", "--greedy", "--stop", stop,
                  "--seed", "1") == 0
    assert capsys.readouterr().out == f"ROMEO:{cut}\n"
    escaped = "".join(f"\\u{ord(c):04x}" for c in stop)  # as a shell passes --stop "\u0020..."
    assert sample(trained_run, "--prompt", "ROMEO:", "--max-new-tokens", "30", "--greedy", "--stop", escaped) == 0
    assert capsys.readouterr().out == f"ROMEO:{cut}\n"
    assert lm.generate("ROMEO:", 30, greedy=True, seed=5) == lm.generate("ROMEO:", 30, temperature=0, seed=6)


def test_beam_search_from_the_command_line(trained_run, capsys):
    lm = tinygpt.load(trained_run)
    best = lm.generate("ROMEO:", 8, beams=4, num_samples=2)
    assert len(best) == 2 and best[0] != best[1]
    assert sample(trained_run, "--prompt", "ROMEO:", "--max-new-tokens", "8", "--beams", "4",
                  "--num-samples", "2") == 0
    out = capsys.readouterr().out
    assert out == f"--- sample 1 ---\nROMEO:{best[0]}\n--- sample 2 ---\nROMEO:{best[1]}\n"
    assert sample(trained_run, "--beams", "2", "--num-samples", "3") == 1
    assert "beam search returns at most --beams (2) results" in capsys.readouterr().err


def test_the_stream_is_a_generator_of_pieces(trained_run):
    lm = tinygpt.load(trained_run)
    pieces = list(lm.stream("ROMEO:", 12, seed=3, temperature=1.0))
    assert len(pieces) == 12 and "".join(pieces) == lm.generate("ROMEO:", 12, seed=3, temperature=1.0)[0]


def test_generation_ends_at_the_end_of_text_token(trained_run):
    lm = tinygpt.load(trained_run)
    free = lm.generate("ROMEO:", 20, greedy=True)[0]
    lm.tokenizer.eot_id = lm.tokenizer.encode(free[4])[0]  # as if that character were <|endoftext|>
    assert lm.generate("ROMEO:", 20, greedy=True)[0] == free[:free.index(free[4])]
    assert lm.generate("ROMEO:", 20, greedy=True, stop_at_eot=False)[0] == free


def test_fast_mode_past_the_context_from_the_command_line(trained_run, capsys):
    assert sample(trained_run, "--prompt", "ROMEO:", "--max-new-tokens", "40", "--greedy",
                  "--past-context", "fast") == 0
    out = capsys.readouterr().out
    lm = tinygpt.load(trained_run, device="cpu")
    assert out == "ROMEO:" + lm.generate("ROMEO:", 40, greedy=True, past_context="fast")[0] + "\n"
    assert sample(trained_run, "--past-context", "quick") == 1
    assert "--past-context" in capsys.readouterr().err
