"""Where pictures go (--out, else the run's own folder of their kind, else ./kind), and what
they show: colour bars, scales and tick labels a reader can read."""

import re
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from tinygpt.analysis import curves, pictures
from tinygpt.analysis.pictures import folder


def test_pictures_go_to_out_else_into_the_run_else_here(trained_run, tmp_path):
    assert folder("attention", tmp_path / "mine", trained_run) == tmp_path / "mine"
    assert folder("attention", None, trained_run) == trained_run / "attention"
    assert folder("plots", None, str(trained_run)) == trained_run / "plots"
    assert folder("plots", None, "gpt2") == Path("plots")  # a hub name is no run
    assert folder("attention") == Path("attention")


def causal(rng, n, T):
    m = np.tril(rng.random((n, T, T)) ** 4)
    return m / m.sum(-1, keepdims=True)  # each row sums to 1; the first query puts 1.0 on itself


def test_a_grid_of_heads_has_a_colour_bar_and_scales_past_the_first_query(tmp_path, monkeypatch):
    maps = causal(np.random.default_rng(0), 4, 12)
    figs = []
    monkeypatch.setattr(pictures, "save", lambda fig, path: figs.append(fig) or Path(path))
    pictures.grid(maps, tmp_path / "g.png", "t", names=[f"head {i}" for i in range(4)])
    fig = figs[0]
    panels = [ax for ax in fig.axes if ax.images]
    bars = [ax for ax in fig.axes if not ax.images]
    assert len(panels) == 4 and len(bars) == 1 and bars[0].get_ylabel() == "weight / the panel's max"
    for i, ax in enumerate(panels):
        top = maps[i][1:].max()
        assert ax.get_title() == f"head {i}, max {top:.2f}"
        shown = ax.images[0].get_array()
        assert np.allclose(shown, maps[i] / top) and shown[0, 0] > 1  # the first query runs off the scale
    pictures.heatmap(maps[0], list("abcdefghijkl"), tmp_path / "h.png", "t")
    assert figs[1].axes[0].images[0].get_clim() == (0.0, maps[0][1:].max())


def numbers(labels) -> list[str]:
    return [t.get_text() for t in labels if t.get_text()]


def test_log_axes_read_as_plain_numbers_and_token_counts_are_short(trained_run):
    fig = curves.figure([curves.read(trained_run)], log_y=True, log_x=True)
    fig.canvas.draw()
    for ax in fig.axes:
        for label in numbers(ax.get_yticklabels(which="both")) + numbers(ax.get_xticklabels(which="both")):
            assert re.fullmatch(r"-?[0-9.]+[kMG]?|−?[0-9.]+(e−?[0-9]+)?", label), label
    assert [pictures.short_number(v) for v in (0, 0.5, 250, 200_000, 1_500_000, 2e9)] == \
        ["0", "0.5", "250", "200k", "1.5M", "2G"]
    ax = Figure().add_subplot()
    ax.plot([1.4, 4.4], [1.4, 4.4])
    ax.set_yscale("log")
    pictures.plain_log_ticks(ax, "y")
    ax.figure.canvas.draw()
    assert set(numbers(ax.get_yticklabels(which="both"))) >= {"2", "3", "4"}
