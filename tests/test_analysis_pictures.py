"""Where pictures go: --out, else the run's own folder of their kind, else ./kind."""

from pathlib import Path

from tinygpt.analysis.pictures import folder


def test_pictures_go_to_out_else_into_the_run_else_here(trained_run, tmp_path):
    assert folder("attention", tmp_path / "mine", trained_run) == tmp_path / "mine"
    assert folder("attention", None, trained_run) == trained_run / "attention"
    assert folder("plots", None, str(trained_run)) == trained_run / "plots"
    assert folder("plots", None, "gpt2") == Path("plots")  # a hub name is no run
    assert folder("attention") == Path("attention")
