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


def test_plot_errors_are_one_line(tmp_path, capsys):
    assert main(["plot", str(tmp_path / "nope")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
