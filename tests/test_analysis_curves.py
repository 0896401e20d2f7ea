"""Training curves from metrics.jsonl and `tinygpt plot`."""

import json

import numpy as np
import pytest

from tinygpt.analysis import curves
from tinygpt.cli import main
from tinygpt.errors import TinyGPTError
from tinygpt.run import RunDir


def test_curves_hold_the_runs_records(trained_run):
    records = RunDir(trained_run).read_metrics()
    c = curves.read(trained_run)
    steps = [r for r in records if "loss" in r]
    assert c.step["step"].tolist() == [r["step"] for r in steps] == list(range(1, 7))
    assert c.step["loss"].tolist() == [r["loss"] for r in steps]
    evals = [r for r in records if "val_loss" in r]
    assert c.evals["step"].tolist() == [3, 6] and c.evals["val_loss"].tolist() == [r["val_loss"] for r in evals]
    s = c.summary()
    best = min(evals, key=lambda r: r["val_loss"])
    assert s["steps"] == 6 and s["best_val_loss"] == best["val_loss"] and s["best_val_step"] == best["step"]


def test_smoothing_is_a_bias_corrected_ema_that_skips_gaps():
    x = np.array([1.0, 3.0, np.nan, 5.0])
    out = curves.smooth(x, 0.5)
    # bias-corrected EMA: sum of 0.5^k-weighted values over the sum of the weights
    assert out[0] == 1.0
    assert out[1] == pytest.approx((0.5 * 1 + 3) / 1.5)
    assert out[2] == out[1]
    assert out[3] == pytest.approx((0.25 * 1 + 0.5 * 3 + 5) / 1.75)
    assert np.array_equal(curves.smooth(x, 0.0), x, equal_nan=True)
    with pytest.raises(TinyGPTError, match="--smooth must be in"):
        curves.smooth(x, 1.0)


def test_a_run_still_training_plots_without_its_torn_last_line(tiny_run, tmp_path):
    with open(RunDir(tiny_run).metrics_path, "a") as f:
        f.write('{"step": 7, "tokens": 44')  # a write cut short by the training process
    assert curves.read(tiny_run).step["step"][-1] == 6


def test_plot_command_draws_runs_overlaid(trained_run, tiny_run, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert main(["plot", str(trained_run), str(tiny_run), "--out", str(out), "--log", "--smooth", "0",
                 "--json", str(tmp_path / "s.json")]) == 0
    assert out.stat().st_size > 10_000
    rows = json.loads((tmp_path / "s.json").read_text())
    assert [r["steps"] for r in rows] == [6, 6]
    text = capsys.readouterr().out
    assert "best val" in text and len(text.strip().splitlines()) == 3
    assert main(["plot", str(tiny_run)]) == 0  # default: inside the run
    assert (tiny_run / "plots" / "curves.png").is_file()


def scored(step, bits_per_byte, data="validation split of run", chars=1000, stride=16, **kw) -> dict:
    """An eval.json record as ``tinygpt eval`` appends it (the fields plotting reads, and a few more)."""
    return {"model": "run", "tokenizer": "char", "checkpoint": "run/last.safetensors", "step": step, "data": data,
            "chars": chars, "stride": stride, "loss": 2 * bits_per_byte, "bits_per_byte": bits_per_byte,
            "kind": "perplexity", "time": "2026-11-21T17:00:00", **kw}


def test_bits_per_byte_by_step_come_from_eval_json(tiny_run):
    run = RunDir(tiny_run)
    for record in (scored(3, 3.0), scored(6, 2.5), scored(3, 2.8),  # step 3 scored again: the later record counts
                   scored(6, 2.0, data="other.txt"),                 # one step only: no curve
                   scored(None, 1.0), {"kind": "generation", "step": 3},  # foreign weights, another kind of result
                   scored(3, 3.3, chars=200), scored(6, 2.9, chars=200)):  # the same text cut shorter (--max-chars)
        run.append_result("eval", record)
    series = curves.bits_per_byte_series(curves.perplexity_records(run))
    assert {k: (s.tolist(), b.tolist()) for k, (s, b) in series.items()} == {
        "validation split of run (1000 chars, stride 16)": ([3, 6], [2.8, 2.5]),
        "validation split of run (200 chars, stride 16)": ([3, 6], [3.3, 2.9])}
    c = curves.read(tiny_run)
    assert c.bits_per_byte.keys() == series.keys()
    s = c.summary()
    assert (s["eval_bits_per_byte"], s["eval_step"]) == (2.9, 6)
    assert "bits/byte" in curves.format_summary([s]) and "2.9000@6" in curves.format_summary([s])
    run.append_result("eval", scored(9, 2.2, chars=200))  # once that text alone remains, its label is the description
    only = curves.bits_per_byte_series([r for r in curves.perplexity_records(run) if r["chars"] == 200])
    assert list(only) == ["validation split of run"] and only["validation split of run"][0].tolist() == [3, 6, 9]


def test_bits_per_byte_add_a_panel_only_when_a_run_has_a_curve(trained_run, tiny_run, tmp_path, capsys):
    run = RunDir(tiny_run)
    run.append_result("eval", scored(3, 3.0, data="held_out.txt"))
    plain = curves.figure([curves.read(trained_run), curves.read(tiny_run, "copy")])  # one step: nothing to draw
    assert len(plain.axes) == 6 and tuple(plain.get_size_inches()) == (16, 8.5)
    run.append_result("eval", scored(6, 2.5, data="held_out.txt"))
    fig = curves.figure([curves.read(trained_run), curves.read(tiny_run, "copy")], log_x=True)
    assert len(fig.axes) == 7
    panel = fig.axes[-1]
    assert panel.get_title().startswith("bits per byte by step") and panel.get_xscale() == "log"
    (line,) = panel.get_lines()
    assert line.get_label() == "copy: held_out.txt" and line.get_xydata().tolist() == [[3, 3.0], [6, 2.5]]
    assert line.get_color() == "C1"  # the colour of its run in the other panels
    from matplotlib.image import imread

    out = tmp_path / "c.png"
    assert main(["plot", str(trained_run), str(tiny_run), "--out", str(out)]) == 0
    assert imread(out).shape[0] > imread(curves.draw([curves.read(trained_run)], tmp_path / "plain.png")).shape[0]
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("bits/byte") and lines[2].endswith("2.5000@6")


def test_plot_errors_are_one_line(tmp_path, capsys, tiny_run):
    assert main(["plot", str(tmp_path / "nope")]) == 1
    RunDir(tiny_run).results_path("eval").write_text("{}")  # not a list of results
    assert main(["plot", str(tiny_run)]) == 1
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and "not a list of results" in errs[1]


def test_plot_options_name_the_runs_and_the_picture(trained_run, tmp_path):
    opts = curves.CurvesOptions(runs=[str(trained_run), str(tmp_path / "other" / "run2")])
    assert opts.names() == ["run", "run2"]
    same_name = curves.CurvesOptions(runs=[str(trained_run), str(tmp_path / "run")])
    assert same_name.names() == [str(trained_run), str(tmp_path / "run")]  # told apart by their paths
    assert opts.picture() == trained_run / "plots" / "curves.png"
    assert opts.picture(tmp_path / "c.png") == tmp_path / "c.png"
    with pytest.raises(TinyGPTError, match="no run directory"):
        curves.CurvesOptions(runs=[str(tmp_path / "nope")]).picture()
    with pytest.raises(TinyGPTError, match="--watch must be a positive number of seconds"):
        curves.CurvesOptions(runs=["x"], watch=0)
