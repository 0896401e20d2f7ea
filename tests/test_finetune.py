"""Fine-tuning end to end: every method on a tiny char run and the instruction fixture,
exact resume, the base's record, merge, export, sample --instruct, and bad input."""

import sys
from pathlib import Path

import pytest
import torch
from helpers import counted, make_run
from safetensors import safe_open

import tinygpt
from tinygpt import adapters
from tinygpt.checkpoint import load_weights
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.finetune import FinetuneSession
from tinygpt.run import RunDir
from tinygpt.tokenizer import CharTokenizer
from tinygpt.train import LambdaCallback

FIXTURES = Path(__file__).parent / "fixtures"
INSTRUCT = str(FIXTURES / "instruct.jsonl")
CHARS = "abcdefghijklmnopqrstuvwxyz \n.,:ABCDEFGHIJKLMNOPQRSTUVWXYZ?"
QUIET = {"log": lambda message: None}
METHODS = ("full", "lora", "adapter", "prompt")


def settings(out, method: str, **extra) -> dict:
    return {"data": INSTRUCT, "template": "simple", "method": method, "out": str(out), "max_steps": 6,
            "eval_interval": 3, "batch_size": 2, "progress": False, "sample_tokens": 0, "device": "cpu",
            "dtype": "fp32", "soft_prompt_tokens": 4, "lora_targets": "all", "bottleneck": 8, **extra}


@pytest.fixture
def base(tmp_path):
    """A tiny char run whose vocabulary covers the fixture and the simple template, context 128."""
    path = tmp_path / "base"
    make_run(path, tokenizer=CharTokenizer(CHARS), randomize=True, block_size=128)
    return path


def finetune(base, out, method, stop_at: int | None = None, **extra) -> FinetuneSession:
    session = FinetuneSession.start(str(base), settings(out, method, **extra), **QUIET)
    extra_callbacks = []
    if stop_at is not None:
        def stop(trainer, record):
            if trainer.state.step == stop_at:
                trainer.request_stop("test")
        extra_callbacks.append(LambdaCallback(stop))
    session.fit(*extra_callbacks)
    return session


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_its_own_tensors_and_resumes_exactly(base, tmp_path, method):
    base_bytes = (base / "model.safetensors").read_bytes()
    straight = finetune(base, tmp_path / "straight", method)
    stopped = finetune(base, tmp_path / "stopped", method, stop_at=3)
    assert stopped.trainer.state.step == 3
    resumed = FinetuneSession.resume(tmp_path / "stopped", **QUIET)
    resumed.fit()
    assert resumed.trainer.state.step == straight.trainer.state.step == 6
    which = "model.safetensors" if method == "full" else "adapter.safetensors"
    last = "last.safetensors" if method == "full" else "adapter-last.safetensors"
    a, b = load_weights(tmp_path / "straight" / last), load_weights(tmp_path / "stopped" / last)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # resumed exactly
    assert (base / "model.safetensors").read_bytes() == base_bytes  # the base is never written
    run = tmp_path / "straight"
    assert (run / which).is_file() and RunDir(run).has_adapter() == (method != "full")
    if method != "full":
        assert not (run / "model.safetensors").exists()
        saved = load_weights(run / which)
        expected = {"lora": ("lora_A.weight", "lora_B.weight"), "adapter": ("_adapter.",), "prompt": ("prompt.",)}
        assert saved and all(any(m in k for m in expected[method]) for k in saved)  # the adapter's tensors only
        state = torch.load(run / "trainer.pt", weights_only=True)
        assert state["model"].keys() == saved.keys()  # trainer.pt holds no copy of the base either
    lm, plain = tinygpt.load(run), tinygpt.load(base)
    x = torch.tensor([CharTokenizer(CHARS).encode("User:\nhello\n\nAssistant:\n")])
    assert not torch.allclose(lm.model(x).logits, plain.model(x).logits)  # it learned something
    config = RunDir(run).read_config()
    assert config["base"]["source"] == str(base.resolve()) and len(config["base"]["sha256"]) == 64


def test_a_fine_tune_is_resolved_once_and_one_recorded_before_the_run_section_resumes(base, tmp_path, monkeypatch):
    import json

    from tinygpt import device as device_module
    from tinygpt.train import resolve as resolve_module

    monkeypatch.setattr(resolve_module, "cpu_has_bf16", lambda: True)  # so auto is measured on any CPU
    devices = counted(monkeypatch, device_module.resolve_device)
    measured = counted(monkeypatch, resolve_module.measure_training_dtype, torch.bfloat16)
    seeds = counted(monkeypatch, device_module.fresh_seed)
    out = tmp_path / "ft"
    session = finetune(base, out, "lora", stop_at=2, dtype="auto", seed="none")
    assert (len(devices), len(measured), len(seeds)) == (1, 1, 1) and session.cfg.dtype == torch.bfloat16
    config = json.loads((out / "config.json").read_text())
    assert {k: config[k] for k in session.cfg.RECORDED} == session.cfg.record()
    assert config["runtime"] == {"device": "cpu", "dtype": "bf16", "seed": session.cfg.seed, "threads": 1}
    assert config["train"]["lr"] == 1e-3 and config["base"]["source"] == str(base.resolve())
    # As an earlier tinygpt wrote it: out and name (and an unused preset) under train.
    config["train"].update(config.pop("run"), preset="auto")
    (out / "config.json").write_text(json.dumps(config))
    devices.clear(), measured.clear(), seeds.clear()
    resumed = FinetuneSession.resume(out, **QUIET)
    assert (len(devices), len(measured), len(seeds)) == (1, 0, 0)
    assert resumed.cfg.dtype == torch.bfloat16 and resumed.cfg.seed == session.cfg.seed
    resumed.fit()
    again = json.loads((out / "config.json").read_text())
    assert again["model"] == config["model"] and again["run"] == {"preset": "auto", "out": str(out), "name": "ft"}


def test_lora_run_loads_unmerged_and_merges_to_the_same_logits(base, tmp_path, capsys):
    finetune(base, tmp_path / "ft", "lora")
    lm = tinygpt.load(tmp_path / "ft")
    assert adapters.attached(lm.model).method == "lora"
    assert main(["merge", str(tmp_path / "ft"), "--out", str(tmp_path / "merged")]) == 0
    merged = tinygpt.load(tmp_path / "merged")
    assert adapters.attached(merged.model) is None
    x = torch.tensor([CharTokenizer(CHARS).encode("User:\nName a color.\n\nAssistant:\n")])
    torch.testing.assert_close(merged.model(x).logits, lm.model(x).logits, atol=1e-5, rtol=0)
    # The merged run keeps the fine-tune's template (simple: this vocabulary has no '#' for alpaca).
    capsys.readouterr()
    instruct = ["--instruct", "--prompt", "Name a color.", "--max-new-tokens", "8", "--seed", "3"]
    assert main(["sample", str(tmp_path / "merged"), *instruct]) == 0
    out, err = capsys.readouterr()
    assert "| simple template" in err
    assert main(["sample", str(tmp_path / "ft"), *instruct]) == 0
    assert capsys.readouterr().out == out
    # Export: the base as a transformers model, the adapter in PEFT's format beside it.
    assert main(["export", str(tmp_path / "ft"), "--to", "hf", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "config.json").is_file()
    with safe_open(str(tmp_path / "hf" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert all(k.startswith("base_model.model.") and ".lora_" in k for k in f.keys())


def test_sample_instruct_renders_the_template_and_stops(base, tmp_path, capsys):
    finetune(base, tmp_path / "ft", "lora")
    capsys.readouterr()
    args = ["sample", str(tmp_path / "ft"), "--instruct", "--prompt", "Name a color of the sky.",
            "--max-new-tokens", "30", "--seed", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    lm = tinygpt.load(tmp_path / "ft")
    from tinygpt.data import instruct as ins

    prompt = ins.prompt_text("simple", "Name a color of the sky.")
    expected = lm.generate(prompt, 30, seed=3, stop=ins.stop_strings("simple", lm.tokenizer))[0]
    assert printed == expected + "\n"  # the response alone, as the library draws it
    assert ins.END_WITHOUT_EOT not in printed


def test_a_changed_base_is_refused(base, tmp_path):
    finetune(base, tmp_path / "ft", "lora")
    make_run(tmp_path / "other", tokenizer=CharTokenizer(CHARS), randomize=True, block_size=128, seed=5)
    (base / "model.safetensors").write_bytes((tmp_path / "other" / "model.safetensors").read_bytes())
    with pytest.raises(TinyGPTError, match="other weights than when the fine-tune began"):
        tinygpt.load(tmp_path / "ft")


def test_text_fine_tune_refuses_unseen_characters_naming_them(base, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("a caf\u00e9 na\u00efve text " * 50, encoding="utf-8")
    with pytest.raises(TinyGPTError, match=r"2 characters \('é', 'ï'\) that the base model's char tokenizer never saw"):
        FinetuneSession.start(str(base), {**settings(tmp_path / "ft", "lora"), "data": str(text)}, **QUIET)
    assert not (tmp_path / "ft").exists()  # nothing written


def test_text_fine_tune_trains_on_plain_text(base, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    session = finetune(base, tmp_path / "ft", "full", data=str(text), freeze_blocks=1, freeze_embeddings=True)
    model = session.trainer.model
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any(n.startswith("transformer.h.0.") for n in frozen) and "transformer.wte.weight" in frozen
    assert not any(n.startswith("transformer.h.1.") for n in frozen)
    plain = tinygpt.load(base).model
    tuned = load_weights(tmp_path / "ft" / "last.safetensors")
    assert torch.equal(tuned["transformer.h.0.attn.c_attn.weight"], plain.transformer.h[0].attn.c_attn.weight)
    assert not torch.equal(tuned["transformer.h.1.attn.c_attn.weight"], plain.transformer.h[1].attn.c_attn.weight)


def test_cli_finetune_and_bad_input(base, tmp_path, capsys):
    out = tmp_path / "ft"
    args = ["finetune", str(base), "--data", INSTRUCT, "--template", "simple", "--out", str(out), "--max-steps", "2",
            "--progress", "false", "--max-new-tokens", "8", "--device", "cpu", "--dtype", "fp32"]
    assert main(args) == 0
    assert "Assistant:" in capsys.readouterr().out  # the end-of-run sample answers a held-out instruction
    assert main(["finetune", "--resume", str(out), "--max-steps", "3", "--progress", "false",
                 "--max-new-tokens", "0"]) == 0
    assert main(["finetune", "--resume", str(out), "--template", "alpaca"]) == 1
    assert "--template cannot change when resuming" in capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 1
    assert "tinygpt finetune --resume" in capsys.readouterr().err
    # The alpaca template's own '#' is not in this char vocabulary: named, with the fix.
    assert main(["finetune", str(base), "--data", INSTRUCT, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "'#'" in err and "--template simple" in err and len(err.strip().splitlines()) == 1
    assert main(["finetune", str(base), "--data", INSTRUCT, "--method", "prompt", "--soft-prompt-tokens", "128"]) == 1
    assert "leaves no context" in capsys.readouterr().err


def test_a_hugging_face_directory_is_a_base(base, tmp_path):
    """An HF GPT-2 directory (here: the base exported) fine-tunes like a run, and the fine-tune
    loads on it: the same logits as the fine-tune of the run it came from."""
    assert main(["export", str(base), "--to", "hf", str(tmp_path / "hf")]) == 0
    finetune(tmp_path / "hf", tmp_path / "from_hf", "lora")
    finetune(base, tmp_path / "from_run", "lora")
    record = RunDir(tmp_path / "from_hf").read_config()["base"]
    assert record["source"] == str((tmp_path / "hf").resolve()) and "checkpoint" not in record
    x = torch.tensor([CharTokenizer(CHARS).encode("User:\nName a color.\n\nAssistant:\n")])
    a, b = tinygpt.load(tmp_path / "from_hf"), tinygpt.load(tmp_path / "from_run")
    torch.testing.assert_close(a.model(x).logits, b.model(x).logits, atol=1e-5, rtol=0)


def test_chat_on_a_plain_text_fine_tune_takes_a_template_its_vocabulary_writes(base, tmp_path, capsys, monkeypatch):
    import io

    text = tmp_path / "notes.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    finetune(base, tmp_path / "ft", "lora", data=str(text))  # records the default template, alpaca, unused
    capsys.readouterr()
    # An unwritable message is dropped with a notice; an empty reply is said to be one.
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a color #.\nName a color.\n\n"))
    monkeypatch.setattr(tinygpt.generation.TinyGPT, "generate", lambda self, prompt, **kw: [""])
    assert main(["chat", str(tmp_path / "ft"), "--max-new-tokens", "8"]) == 0
    err = capsys.readouterr().err
    assert "| simple template |" in err and "does not know: '#'" in err and "the message is dropped" in err
    assert "the reply is empty" in err


def test_instructions_to_a_model_that_can_write_no_template_are_refused_at_start(tiny_run, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n\n"))
    for command in (["chat", str(tiny_run)], ["sample", str(tiny_run), "--instruct", "--prompt", "hello"]):
        assert main(command) == 1
        out, err = capsys.readouterr()
        assert out == "" and "alpaca's own text has" in err and "--template simple needs" in err
    assert main(["chat", str(tiny_run), "--template", "alpaca"]) == 1
    assert "--template alpaca's own text has" in capsys.readouterr().err
    assert sys.stdin.read() == "hello\n\n"  # nothing was read: refused before the first turn


def test_chat_answers_turn_by_turn_from_the_whole_conversation(base, tmp_path, capsys, monkeypatch):
    import io

    finetune(base, tmp_path / "ft", "lora")
    capsys.readouterr()
    monkeypatch.setattr("sys.stdin", io.StringIO("Name a color of the sky.\nAnd the grass?\n\n"))
    assert main(["chat", str(tmp_path / "ft"), "--seed", "1", "--max-new-tokens", "12"]) == 0
    replies = capsys.readouterr().out.split("\n")[:2]
    lm = tinygpt.load(tmp_path / "ft")
    from tinygpt.data import instruct as ins

    stops = ins.stop_strings("simple", lm.tokenizer)
    messages = [{"role": "user", "content": "Name a color of the sky."}]
    first = lm.generate(ins.chat_prompt("simple", messages, lm.tokenizer), 12, seed=1, stop=stops)[0]
    messages += [{"role": "assistant", "content": first}, {"role": "user", "content": "And the grass?"}]
    second = lm.generate(ins.chat_prompt("simple", messages, lm.tokenizer), 12, seed=2, stop=stops)[0]
    assert replies == [first, second]
