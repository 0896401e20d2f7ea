"""Training-health statistics (train/health.py), `--diagnostics N` and `tinygpt diagnose`."""

import json
import math

import pytest
import torch
from conftest import ROMEO, TINY_TRAIN
from safetensors.torch import load_file

from tinygpt.analysis import health, health_pictures
from tinygpt.cli import main
from tinygpt.data import Batch
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig
from tinygpt.run import RunDir
from tinygpt.train import LambdaCallback, Session
from tinygpt.train.health import probe

SETTINGS = {"n_layer": 2, "n_head": 2, "n_embd": 16, "block_size": 16, "batch_size": 4, "eval_batches": 2,
            "progress": False, "device": "cpu", "dtype": "fp32", "max_new_tokens": 0, "lr": 1e-2}


def ratio(after, before):
    return math.log10(float((after - before).std() / before.std()))


def train(tmp_path, name, **extra):
    corpus = tmp_path / "romeo.txt"
    corpus.write_text(ROMEO)
    weights = {}
    session = Session.start({"data": str(corpus), "out": str(tmp_path / name), "max_steps": 6, "eval_interval": 3,
                             **SETTINGS, **extra}, log=lambda _: None)
    losses = []

    def keep(trainer, record):
        losses.append(record["loss"])
        weights[trainer.state.step] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    session.fit(LambdaCallback(keep))
    return session, losses, weights


def test_probing_during_training_changes_nothing_and_records_one_step_update_ratios(tmp_path):
    _, plain, _ = train(tmp_path, "plain")
    session, probed, weights = train(tmp_path, "probed", diagnostics=2)
    assert probed == plain  # eval-mode probes draw no random numbers and leave no gradients
    records = session.run.read_diagnostics()
    assert [r["step"] for r in records] == [2, 4, 6]
    lrs = {r["step"]: r["lr"] for r in session.run.read_metrics()}
    assert [(r["lr"], r["peak_lr"]) for r in records] == [(lrs[s], SETTINGS["lr"]) for s in (2, 4, 6)]
    assert [r["warmup"] for r in records] == [True, True, True]  # warmup is 100 steps, or a tenth of the budget
    for r in records:
        step = r["step"]
        for w in r["weights"]:
            want = ratio(weights[step][w["name"]], weights[step - 1][w["name"]])
            assert w["update_to_weight"] == pytest.approx(want, abs=1e-9)
        assert len(r["layers"]) == 2 and all(0 <= layer["flat"] <= 1 for layer in r["layers"])


def test_probe_statistics_equal_a_direct_computation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=20))
    x = torch.randint(20, (3, 8))
    batch = Batch(x, torch.roll(x, -1, 1))
    got = probe(model, batch, torch.device("cpu"), torch.float32)
    pre = []
    h = model.transformer.h[1].mlp.c_fc.register_forward_hook(lambda m, a, o: pre.append(o.detach()))
    model.eval()
    loss = model(batch.x, batch.y).loss
    h.remove()
    loss.backward()
    assert got["loss"] == pytest.approx(loss.item(), abs=1e-6)
    layer = got["layers"][1]
    assert layer["pre_mean"] == pytest.approx(pre[0].mean().item(), abs=1e-6)
    assert layer["pre_std"] == pytest.approx(pre[0].std().item(), abs=1e-6)
    assert layer["flat"] == pytest.approx((pre[0] < -3).float().mean().item())
    w = {r["name"]: r for r in got["weights"]}["transformer.h.0.mlp.c_fc.weight"]
    g = model.transformer.h[0].mlp.c_fc.weight.grad
    assert w["grad_std"] == pytest.approx(g.std().item(), rel=1e-5)
    weight = model.transformer.h[0].mlp.c_fc.weight.detach()
    assert w["grad_to_weight"] == pytest.approx(math.log10(g.std() / weight.std()), abs=1e-6)


def test_relu2_is_flat_below_zero_in_the_probe_the_judge_and_the_picture():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=20, mlp="relu2"))
    x = torch.randint(20, (3, 8))
    pre = []
    h = model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda m, a, o: pre.append(o.detach()))
    got = probe(model, Batch(x, torch.roll(x, -1, 1)), torch.device("cpu"), torch.float32, histograms=True)
    h.remove()
    assert (got["activation"], got["flat_below"]) == ("ReLU²", 0.0)
    assert got["layers"][0]["flat"] == pytest.approx((pre[0] < 0).float().mean().item())
    dead = {**got, "layers": [{**got["layers"][0], "dead": 0.5}]}
    assert "in ReLU²'s flat region" in health.judge(dead)[0]
    ax = health_pictures.figures("m", got)["activations"].axes[0]
    (band,) = [p for p in ax.patches if "flat region" in p.get_label()]
    assert band.get_label() == "ReLU²'s flat region (x < 0)"
    (_, _), (x1, _) = band.get_path().get_extents(band.get_patch_transform()).get_points()
    assert x1 == pytest.approx(0)


def test_the_judge_names_problems_and_their_fixes():
    healthy = {"layer": 0, "pre_mean": 0.0, "pre_std": 1.0, "flat": 0.3, "dead": 0.0, "out_mean": 0.0,
               "out_std": 1.0, "attn_entropy": 0.5}
    result = {"layers": [healthy, {**healthy, "layer": 1, "dead": 0.4, "out_std": 80.0}],
              "weights": [{"name": "w", "grad_std": 0.1, "grad_to_weight": 0.5}]}
    hi = health.UPDATE_RANGES["adamw"][1]
    recorded = [{"step": 10, "weights": [{"name": "w", "update_to_weight": hi + 0.2},
                                          {"name": "v", "update_to_weight": -5.0}]}]
    problems = health.judge(result, recorded)
    assert any("layer 1: 40% of the MLP's hidden units are dead" in p and "lower the learning rate" in p
               for p in problems)
    assert any("layer 1" in p and "exploding" in p for p in problems)
    assert any(p.startswith("w: gradients larger than the weights") for p in problems)
    assert any(p.startswith(f"w: updates are 10^{hi + 0.2:.1f}") and "lower the learning rate" in p
               for p in problems)
    assert any(p.startswith("v: updates are 10^-5.0") and "raise the learning rate" in p for p in problems)
    assert not any("layer 0" in p for p in problems)
    assert health.judge({"layers": [healthy], "weights": []}) == []


def test_diagnose_a_run_with_recorded_diagnostics_and_two_checkpoints(tmp_path, capsys):
    session, _, _ = train(tmp_path, "run", diagnostics=2, eval_interval=2)
    run = RunDir(tmp_path / "run")
    out = tmp_path / "pics"
    assert main(["diagnose", str(run.path), "--checkpoint", "last", "--previous", "best", "--batches", "2",
                 "--out", str(out), "--json", str(tmp_path / "d.json")]) == 0
    text = capsys.readouterr().out
    assert "recorded during training: 3 probes" in text
    for name in ("activations", "gradients", "ratios", "over_training"):
        assert (out / f"{name}.png").stat().st_size > 5000
    data = json.loads((tmp_path / "d.json").read_text())
    last, best = load_file(str(run.weights_path("last"))), load_file(str(run.weights_path("best")))
    for w in data["weights"]:
        if torch.equal(last[w["name"]], best[w["name"]]):
            assert w["update_to_weight"] is None
        else:
            assert w["update_to_weight"] == pytest.approx(ratio(last[w["name"]], best[w["name"]]), abs=1e-9)


def test_diagnose_a_local_gpt2_directory_with_given_text(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=32))
    hf.save_pretrained(tmp_path / "gpt2-local")
    (tmp_path / "t.txt").write_text(ROMEO)
    assert main(["diagnose", str(tmp_path / "gpt2-local"), "--data", str(tmp_path / "t.txt"), "--batches", "1",
                 "--out", str(tmp_path / "p")]) == 0
    assert "layer" in capsys.readouterr().out
    assert (tmp_path / "p" / "activations.png").is_file()
    assert main(["diagnose", str(tmp_path / "gpt2-local"), "--out", str(tmp_path / "p")]) == 1
    assert "give --data" in capsys.readouterr().err


def test_train_flag(tmp_path):
    corpus = tmp_path / "r.txt"
    corpus.write_text(ROMEO)
    assert main(["train", "--data", str(corpus), "--out", str(tmp_path / "r"), "--max-steps", "2",
                 "--diagnostics", "1", "--max-new-tokens", "0", *TINY_TRAIN]) == 0
    assert [r["step"] for r in RunDir(tmp_path / "r").read_diagnostics()] == [1, 2]


def test_previous_weights_are_a_runs_checkpoint_or_a_file_on_the_models_device(trained_run, tmp_path):
    from tinygpt.generation import load

    lm = load(trained_run, device="cpu")
    run = RunDir(trained_run)
    assert health.previous_weights(lm, run, None) is None
    last = health.previous_weights(lm, run, "last")
    want = load_file(str(run.weights_path("last")))
    assert last.keys() == want.keys() and all(torch.equal(last[k], want[k]) for k in want)
    assert all(t.device == lm.device for t in last.values())
    same = health.previous_weights(lm, None, str(run.weights_path("last")))  # a path needs no run
    assert all(torch.equal(same[k], want[k]) for k in want)
    with pytest.raises(TinyGPTError, match="--previous best: no weights file at best; give best, last or a"):
        health.previous_weights(lm, None, "best")  # not a run: 'best' is just a missing file


def test_diagnose_options_are_checked_where_they_enter():
    assert health.DiagnoseOptions().batch_size == 8
    for bad in (dict(batches=0), dict(batch_size=0)):
        with pytest.raises(TinyGPTError, match="--batches and --batch-size must be at least 1"):
            health.DiagnoseOptions(**bad)


def test_update_ratios_are_judged_against_the_range_of_the_optimizer_that_made_them():
    (_, adamw_hi), (_, muon_hi) = health.UPDATE_RANGES["adamw"], health.UPDATE_RANGES["muon"]
    assert adamw_hi < muon_hi  # measured: Muon's orthogonalised steps move a matrix more at one rate
    u = (adamw_hi + muon_hi) / 2
    result = {"layers": [], "weights": []}
    recorded = [{"step": 4, "weights": [{"name": "h.0.w", "update_to_weight": u, "optimizer": "muon"},
                                         {"name": "wte", "update_to_weight": u, "optimizer": "adamw"},
                                         {"name": "h.1.w", "update_to_weight": u},    # recorded before rows said
                                         {"name": "h.2.w", "update_to_weight": u}]}]
    problems = health.judge(result, recorded, by={"h.1.w": "muon"})
    flagged = sorted(p.split(":")[0] for p in problems)
    assert flagged == ["h.2.w", "wte"]  # h.2.w: no word on its optimizer anywhere, so AdamW's range
    assert all("healthy under AdamW" in p and "lower the learning rate" in p for p in problems)
    assert health.judge(result, [{"step": 4, "weights": [{"name": "h.0.w", "update_to_weight": muon_hi + 0.1,
                                                          "optimizer": "muon"}]}]) != []


def test_a_ratio_taken_at_a_decayed_rate_is_judged_at_the_peak_rate():
    lo, _ = health.UPDATE_RANGES["muon"]
    row = {"name": "h.0.w", "update_to_weight": lo - 0.5, "optimizer": "muon"}
    result = {"layers": [], "weights": []}
    late = {"step": 90, "lr": 6e-4, "peak_lr": 6e-3, "weights": [row]}  # cosine's end: a tenth of the peak
    assert health.latest_updates([late])["h.0.w"] == pytest.approx((lo - 0.5, lo + 0.5, "muon"))
    assert health.judge(result, [late]) == []
    slow = {**late, "lr": 6e-3}
    assert health.judge(result, [slow]) == [
        f"h.0.w: updates are 10^{lo - 0.5:.1f} of the weights per step, healthy under Muon: 10^{lo:g} to 10^-1: "
        "raise the learning rate"]
    warming = {**slow, "lr": 6e-4, "warmup": True}  # weights still near their init: not judged
    assert health.judge(result, [warming]) == []
    old = {"step": 90, "weights": [row]}  # recorded before probes kept their rate: judged as it is, and said why
    assert health.judge(result, [old])[0].endswith("(or the schedule has decayed it: expected at the end of a run)")


def test_probes_record_which_optimizer_updated_each_matrix(tmp_path):
    session, _, _ = train(tmp_path, "muon", diagnostics=3, optimizer="muon")
    rows = session.run.read_diagnostics()[-1]["weights"]
    assert {w["name"]: w["optimizer"] for w in rows} == {
        w["name"]: "muon" if w["name"].startswith("transformer.h.") else "adamw" for w in rows}
    muon = {id(p) for p in session.trainer.optimizer.optimizers["muon"].param_groups[0]["params"]}
    assert {n for n, p in session.trainer.model.named_parameters() if id(p) in muon} == \
        {w["name"] for w in rows if w["optimizer"] == "muon"}


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [t.get_text() for t in legend.get_texts()]


def test_pictures_mark_the_flat_region_left_of_minus_3_and_healthy_ranges_with_labels(tmp_path):
    from tinygpt.generation import load

    session, _, _ = train(tmp_path, "run", diagnostics=2, optimizer="muon")
    d = health.diagnose_model(load(session.run.path, device="cpu"), "run", session.run.path,
                              health.DiagnoseOptions(batches=1))
    figs = health_pictures.figures(d.name, d.result, d.recorded)
    assert list(figs) == ["activations", "gradients", "ratios", "over_training"]

    ax = figs["activations"].axes[0]
    band = [p for p in ax.patches if "flat region" in p.get_label()]
    assert len(band) == 1
    (x0, _), (x1, _) = band[0].get_path().get_extents(band[0].get_patch_transform()).get_points()
    assert x1 == pytest.approx(-3) and x0 < -3 and ax.get_xlim()[0] <= x0

    ax = figs["ratios"].axes[0]
    labels = _legend(ax)
    assert any(t.startswith("healthy one-step update under Muon") for t in labels)
    assert any(t.startswith("healthy one-step update under AdamW") for t in labels)
    assert any(t.startswith("gradient as large as the weight") for t in labels)
    for line in ax.get_lines():  # every plotted series in the legend has points to show
        if not line.get_label().startswith("_") and len(line.get_xdata()) > 1:
            assert not all(math.isnan(y) for y in line.get_ydata())

    a, b, c = figs["over_training"].axes
    assert any(t.startswith("healthy under Muon") for t in _legend(a))
    assert any(t.startswith("healthy under AdamW") for t in _legend(a))
    assert "10%: too many dead" in _legend(b)
    xs = [tuple(line.get_xdata()) for line in b.get_lines() if line.get_label().startswith("layer")]
    assert len(xs) == 2 and len(set(xs)) == 2  # layers side by side, none hidden under another
    assert c.get_ylim() == (0, 1.02)
    figs["over_training"].canvas.draw()
    assert all(ax.yaxis.get_offset_text().get_text() == "" for ax in (a, b, c))

    # Only the first probe in warmup: its band still has a width, up to halfway to the next probe.
    first_only = [dict(r, warmup=i == 0) for i, r in enumerate(d.recorded)]
    a = health_pictures.figures(d.name, d.result, first_only)["over_training"].axes[0]
    (band,) = [p for p in a.patches if p.get_label().startswith("warmup")]
    (x0, _), (x1, _) = band.get_path().get_extents(band.get_patch_transform()).get_points()
    steps = [r["step"] for r in d.recorded]
    assert len(steps) >= 2 and x0 == steps[0] and x1 == pytest.approx((steps[0] + steps[1]) / 2)


def test_the_ratios_picture_shows_no_empty_series_without_recorded_updates():
    weights = [{"name": n, "grad_to_weight": -1.5, "grad_std": 0.1, "w_std": 0.02, "update_to_weight": None}
               for n in ("transformer.wte.weight", "transformer.wpe.weight")]  # no blocks: no gradients page
    ax = health_pictures.figures("m", {"layers": [], "weights": weights})["ratios"].axes[0]
    assert _legend(ax) == ["gradient as large as the weight: above, too large", "log10 std(grad) / std(weight)"]
