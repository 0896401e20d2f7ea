"""The run directory: creating and opening runs, config and tokenizer, typed checkpoint
metadata (and 0.1's string metadata), loading without init, and the paths other parts use."""

import json
from pathlib import Path

import pytest
import torch
from helpers import TINY_MODEL, make_run, random_ids, same_weights

from tinygpt import checkpoint as ckpt
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.run import CheckpointInfo, RunDir

FIXTURE = Path(__file__).parent / "fixtures" / "run_v0_1" / "run"


def test_create_refuses_an_existing_run_and_open_needs_one(tmp_path):
    run = RunDir.create(tmp_path / "a" / "run")
    assert run.path.is_dir() and not RunDir.is_run(run.path)
    run.write_config({"model": {}, "versions": {"tinygpt": "0.1.0"}})
    assert RunDir.is_run(run.path)
    with pytest.raises(TinyGPTError, match="holds a run that stopped before its first checkpoint; start it over "
                                           "with --resume"):
        RunDir.create(run.path)
    run.save_state({"step": 1})
    with pytest.raises(TinyGPTError, match="already holds a run; continue it with --resume .* or pass --force"):
        RunDir.create(run.path)
    with pytest.raises(TinyGPTError, match="no run directory at"):
        RunDir.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinyGPTError, match="no run config at"):
        RunDir.open(tmp_path / "empty")


def test_config_round_trip_and_damage(tmp_path):
    _, config = make_run(tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    assert run.read_config() == config
    assert run.model_config().vocab_size == config["tokenizer"]["vocab_size"] == 30
    path = run.path / "config.json"
    path.write_text("{not json")
    with pytest.raises(TinyGPTError, match="is not valid JSON"):
        RunDir.open(run.path).read_config()
    path.write_text("[1, 2]")
    with pytest.raises(TinyGPTError, match="holds list, not a mapping of settings; the run directory is damaged"):
        RunDir.open(run.path).read_config()
    path.write_text(json.dumps({"tokenizer": config["tokenizer"]}))
    with pytest.raises(TinyGPTError, match="no model section"):
        RunDir.open(run.path).model_config()


def test_tokenizer_must_match_the_model(tmp_path):
    make_run(tmp_path / "run", config_overrides={"vocab_size": 31})
    with pytest.raises(TinyGPTError, match="has 30 tokens but config.json says 31; the run directory is inconsistent"):
        RunDir.open(tmp_path / "run").load_tokenizer()


def test_checkpoint_info_is_typed_json(tmp_path):
    info = CheckpointInfo(step=12, tokens=3072, val_loss=None)
    make_run(tmp_path / "run", info=info, which=("best", "last"))
    run = RunDir.open(tmp_path / "run")
    assert run.checkpoint_info("last") == info
    raw = ckpt.read_metadata(run.weights_path("last"))
    assert json.loads(raw["tinygpt"]) == {"step": 12, "tokens": 3072, "val_loss": None}


def test_v0_1_string_metadata_still_reads():
    # tinygpt 0.1 wrote each value with str(): {"step": "6", "tokens": "384", "val_loss": "3.58..."}.
    run = RunDir.open(FIXTURE)
    raw = ckpt.read_metadata(run.weights_path("best"))
    assert "tinygpt" not in raw and raw["step"] == "6"
    info = run.checkpoint_info("best")
    assert info.step == 6 and info.tokens == 384 and info.val_loss == float(raw["val_loss"])
    assert CheckpointInfo.from_metadata({"step": "3", "val_loss": "None"}) == CheckpointInfo(3, None, None)


def test_a_run_recorded_before_the_gelu_option_keeps_tanh(tmp_path):
    assert "gelu" not in json.loads((FIXTURE / "config.json").read_text())["model"]
    assert RunDir.open(FIXTURE).model_config().gelu == "tanh"
    assert GPTConfig().gelu == "exact"  # what new runs get


def test_best_falls_back_to_last(tmp_path):
    make_run(tmp_path / "run", which=("last",))
    run = RunDir.open(tmp_path / "run")
    assert run.weights_path("best") == run.path / "last.safetensors"
    assert run.weights_path("elsewhere.safetensors") == Path("elsewhere.safetensors")


@pytest.mark.parametrize("modern", [False, True])
def test_load_model_assigns_the_file_without_init(tmp_path, monkeypatch, modern):
    kw = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False) if modern else {}
    saved, _ = make_run(tmp_path / "run", **kw)
    monkeypatch.setattr(GPT, "_init_weights", lambda self, module: pytest.fail("random init while loading"))
    model, info, path = RunDir.open(tmp_path / "run").load_model("best")
    assert same_weights(model, saved) and not model.training and info.step == 120
    assert path == tmp_path / "run" / "model.safetensors"
    assert (model.lm_head.weight is model.transformer.wte.weight) == (not modern)
    idx = random_ids((2, TINY_MODEL["block_size"]), vocab=30)
    with torch.no_grad():  # derived buffers (RoPE tables) were computed, not left on meta
        assert torch.equal(model(idx).logits, saved.eval()(idx).logits)


def test_paths_for_results_and_adapters(tmp_path):
    run = RunDir(tmp_path)
    assert run.metrics_path == tmp_path / "metrics.jsonl" and run.state_path == tmp_path / "trainer.pt"
    assert run.adapter_paths == (tmp_path / "adapter.safetensors", tmp_path / "adapter.json")
    assert run.results_path("eval") == tmp_path / "eval.json"
    assert run.pictures_dir("plots") == tmp_path / "plots"
    with pytest.raises(ValueError):
        run.pictures_dir("holiday")


# ---------------------------------------------------------------------------- safety


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_a_new_run_never_goes_over_a_users_files(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "model.safetensors").write_text("x\n")
    (d / "metrics.jsonl").write_text('{"step": 1, "note": "keep"}\n')
    before = _files(d)
    with pytest.raises(TinyGPTError, match=r"--out .*d is not empty and is not a tinygpt run \(it holds "
                                           r"metrics.jsonl, model.safetensors\); choose a new or empty directory, "
                                           r"or pass --force"):
        RunDir.create(d)
    assert _files(d) == before
    # A folder like a Hugging Face model's (its own config.json) is not a run either.
    (d / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(TinyGPTError, match="is not a tinygpt run"):
        RunDir.check_new(d)
    (tmp_path / "file").write_text("x")
    with pytest.raises(TinyGPTError, match=r"--out .*file is a file, not a directory"):
        RunDir.create(tmp_path / "file")


def test_an_empty_folder_or_one_with_only_tinygpts_leftovers_is_free(tmp_path):
    (tmp_path / "empty").mkdir()
    RunDir.create(tmp_path / "empty")
    left = tmp_path / "left"
    left.mkdir()
    for name in (".lock", ".tinygpt-config.json.k2j3h4ab.tmp", ".config.json.k2j3h4ab.tmp"):  # killed before config.json
        (left / name).write_text("")
    RunDir.create(left)
    assert sorted(p.name for p in left.iterdir()) == [".lock"]  # the lock swept the temp files


def test_force_replaces_an_old_runs_files_and_keeps_others(tmp_path):
    make_run(tmp_path / "run", which=("best", "last"))
    run = RunDir(tmp_path / "run")
    run.save_state({"step": 1})
    run.metrics_path.write_text('{"step": 1}\n')
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(TinyGPTError, match="already holds a run"):
        RunDir.create(run.path)
    RunDir.create(run.path, force=True)
    assert sorted(p.name for p in run.path.iterdir()) == [".lock", "notes.txt"]


def test_lock_sweeps_temp_files_of_killed_writes_only(tmp_path):
    make_run(tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    # Ours, and an earlier version's for a run file's name (".<name>.<8 random>.tmp").
    leftovers = [".tinygpt-model.safetensors.x8f2k1ab.tmp", ".tinygpt-eval.json.a_b_c_d_.tmp",
                 ".trainer.pt.abcdef12.tmp"]
    users = [".keep.txt", "a.tmp", ".tmpTooLongName", ".draft.tmp", ".tmpABC123", ".notes.txt.abcdefgh.tmp",
             ".tinygpt-model.safetensors.short.tmp"]
    for name in leftovers + users:
        (run.path / name).write_text("x")
    assert [p.name for p in ckpt.stale_temp_files(run.path, [ckpt.Path("x").name, "trainer.pt"])] == \
        sorted(leftovers)
    run.lock()
    assert not any((run.path / name).exists() for name in leftovers)
    assert all((run.path / name).read_text() == "x" for name in users)


def test_a_new_run_never_takes_a_users_temp_like_files(tmp_path, capsys):
    from conftest import TINY_TRAIN

    from tinygpt.cli import main

    corpus = tmp_path / "data.txt"
    corpus.write_text("hello there, general kenobi\n" * 50)
    out = tmp_path / "u"
    out.mkdir()
    (out / ".draft.tmp").write_text("x")
    (out / ".tmpABC123").write_text("y")
    flags = ["train", "--data", str(corpus), "--max-steps", "2", "--out", str(out), "--max-new-tokens", "0",
             *TINY_TRAIN]
    assert main(flags) == 1
    assert "is not empty and is not a tinygpt run (it holds .draft.tmp, .tmpABC123)" in capsys.readouterr().err
    assert main([*flags, "--force"]) == 0
    assert (out / ".draft.tmp").read_text() == "x" and (out / ".tmpABC123").read_text() == "y"


@pytest.mark.parametrize("text, problem", [
    ('{"model": null}', "the 'model' section is null, not a mapping"),
    ('{"model": {"n_layer": "many"}}', "bad value 'many' for --n-layer"),
])
def test_damaged_config_sections_are_one_line_errors(tmp_path, text, problem):
    make_run(tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text(text)
    with pytest.raises(TinyGPTError, match=problem + ".*the run directory is damaged"):
        RunDir.open(tmp_path / "run").model_config()


def test_metrics_tolerate_a_torn_last_line_and_trim_to_the_checkpoint(tmp_path):
    make_run(tmp_path / "run")
    run = RunDir.open(tmp_path / "run")
    assert run.read_metrics() == [] and run.trim_metrics(3) is None  # no file yet: nothing to do
    lines = [json.dumps({"step": s, "loss": 2.0}) + "\n" for s in (1, 2, 3, 4)]
    run.metrics_path.write_text("".join(lines) + '{"step": 5, "lo')
    notices = []
    assert [r["step"] for r in run.read_metrics(notices.append)] == [1, 2, 3, 4] and len(notices) == 1
    run.trim_metrics(3)
    assert run.metrics_path.read_text() == "".join(lines[:3])
    mtime = run.metrics_path.stat().st_mtime_ns
    run.trim_metrics(3)  # nothing to change: the file is not rewritten
    assert run.metrics_path.stat().st_mtime_ns == mtime


def test_two_processes_appending_results_keep_every_row(tmp_path):
    import subprocess
    import sys

    make_run(tmp_path / "run")
    script = ("import sys; from tinygpt.run import RunDir; run = RunDir.open(sys.argv[1])\n"
              "for i in range(60): run.append_result('eval', {'who': sys.argv[2], 'i': i})")
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "run"), who]) for who in "ab"]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    rows = RunDir.open(tmp_path / "run").read_results("eval")
    assert sorted((r["who"], r["i"]) for r in rows) == [(w, i) for w in "ab" for i in range(60)]


def test_a_run_another_process_is_writing_is_said_to_be_so_with_its_pid(tmp_path):
    import signal

    from helpers import hold_lock

    from tinygpt import lock

    make_run(tmp_path / "run")
    (tmp_path / "run" / "trainer.pt").unlink(missing_ok=True)  # as a run just started, before its first checkpoint
    lock.release(tmp_path / "run" / ".lock")  # make_run's: another process writes it now
    holder = hold_lock(tmp_path / "run" / ".lock")
    try:
        assert lock.held_by(tmp_path / "run" / ".lock") == holder.pid
        with pytest.raises(TinyGPTError, match=f"is being written by process {holder.pid} .*wait for it to finish"):
            RunDir.check_new(tmp_path / "run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert lock.held_by(tmp_path / "run" / ".lock") is None
    with pytest.raises(TinyGPTError, match="stopped before its first checkpoint; start it over with --resume"):
        RunDir.check_new(tmp_path / "run")


def test_suggested_commands_quote_the_path_for_the_shell(tmp_path):
    make_run(tmp_path / "my run")
    with pytest.raises(TinyGPTError, match=f"with --resume '{tmp_path}/my run', "):
        RunDir.check_new(tmp_path / "my run")
