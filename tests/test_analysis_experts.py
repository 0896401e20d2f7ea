"""The expert-load history of a mixture-of-experts run: read, judged and drawn."""

import numpy as np

from tinygpt.analysis import experts
from tinygpt.model import GPTConfig

CONFIG = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=16, vocab_size=50, moe_experts=4, moe_every=2)


def records(shares_of_block_3):
    rows = [{"step": s, "loss": 1.0} for s in range(1, 21)]
    for r in rows:
        r.update(expert_load=[[0.25] * 4, shares_of_block_3], moe_dropped=0.01)
    return rows + [{"step": 20, "val_loss": 1.0}]  # an evaluation record holds no load


def test_history_names_the_moe_blocks_and_skips_records_without_load():
    h = experts.history(records([0.25] * 4), CONFIG)
    assert h["blocks"] == [1, 3] and h["steps"] == list(range(1, 21)) and np.shape(h["load"]) == (20, 2, 4)
    dense = GPTConfig(n_layer=4, n_head=2, n_embd=32, block_size=16, vocab_size=50)
    assert experts.history(records([0.25] * 4), dense) is None


def test_a_collapsed_expert_is_flagged_with_its_fix_and_a_balanced_one_is_not():
    assert experts.judge(experts.history(records([0.25] * 4), CONFIG)) == []
    problems = experts.judge(experts.history(records([0.4, 0.4, 0.19, 0.01]), CONFIG))
    assert len(problems) == 1 and problems[0].startswith("block 3 expert 3 gets 1.0%")
    assert "--moe-aux-weight" in problems[0]
    assert experts.summary(experts.history(records([0.4, 0.4, 0.19, 0.01]), CONFIG))[2] == \
        "  block 3:  1.60  1.60  0.76  0.04"


def test_the_heatmap_has_a_panel_per_moe_block_and_bins_long_runs():
    fig = experts.figure("run", experts.history(records([0.4, 0.4, 0.19, 0.01]), CONFIG))
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title().startswith("block")]
    assert [ax.get_title() for ax in panels] == ["block 1", "block 3"]
    image = panels[1].get_images()[0].get_array()
    assert image.shape == (4, 20) and np.allclose(image[:, 0], [1.6, 1.6, 0.76, 0.04])
    long = {"steps": list(range(1000)), "blocks": [0], "load": [[[0.25] * 4]] * 1000, "dropped": [0.0] * 1000}
    shown = [ax for ax in experts.figure("long", long).axes if ax.get_title() == "block 0"][0]
    assert shown.get_images()[0].get_array().shape == (4, experts.MAX_COLUMNS)
