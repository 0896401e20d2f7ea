"""What each parallel layout keeps on each rank, and its picture."""

import pytest

from tinygpt.analysis.layouts import KINDS, draw_layouts, holdings
from tinygpt.model import GPTConfig


@pytest.mark.parametrize("layout", ["ZeRO-1", "ZeRO-2", "ZeRO-3", "TP", "PP"])
def test_the_layout_picture_shares_out_every_element_and_splits_what_it_says(layout, tmp_path):
    cfg = GPTConfig(n_layer=4, n_head=4, n_kv_head=2, n_embd=16, block_size=16, vocab_size=24, mlp="swiglu")
    two = [holdings(cfg, layout, 2, rank) for rank in (0, 1)]
    for kind in KINDS:
        for name, mask in two[0][kind].items():
            other = two[1][kind][name]
            assert (mask | other).all(), (kind, name)  # nothing lost
            block = ".h." in f".{name}"
            # What is split is held once; ZeRO-1 splits the optimizer state alone, whole tensors each.
            split = (layout in ("ZeRO-2", "ZeRO-3") or (block and layout in ("TP", "PP"))
                     or (layout == "ZeRO-1" and kind == "AdamW state"))
            assert (mask & other).any() != split, (kind, name)
    sizes = [sum(m.sum() for m in h["AdamW state"].values()) for h in two]
    if layout == "ZeRO-1":  # the greedy split stays within one tensor of even
        largest = max(m.size for m in two[0]["weights"].values())
        assert abs(sizes[0] - sizes[1]) <= largest
    if layout == "PP":  # the first stage's blocks are 0 and 1
        assert two[0]["weights"]["transformer.h.1.mlp.c_fc.weight"].all()
        assert not two[0]["weights"]["transformer.h.2.mlp.c_fc.weight"].any()


def test_the_layout_picture_is_drawn(tmp_path):
    from PIL import Image

    path = draw_layouts(tmp_path / "layouts.png")
    with Image.open(path) as image:
        assert image.size[0] > 1000 and image.size[1] > 1000
        colours = {c for _, c in image.convert("RGB").getcolors(1 << 20)}
    assert (0x1F, 0x77, 0xB4) in colours and (0xD6, 0x27, 0x28) in colours  # both ranks drawn
