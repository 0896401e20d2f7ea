"""How fast each route multiplies one row by a weight matrix on this CPU (batch-1 decoding).

    python bench/one_row_routes.py                  # GPT-2 small's shapes, fp32 and bf16

Decoding one token reads every weight once, so each product is a matrix-vector product and
its speed is the speed of reading the weight: reported as GB/s of weights read. Routes:
PyTorch's ``F.linear`` on one row, ``torch.mv``, and oneDNN's prepacked (blocked) weight
(``torch.ops.mkldnn._linear_pointwise``, what :func:`tinygpt.kernels.packed_weights` makes).
Each shape is timed as decoding times it (:func:`tinygpt.kernels.route_speeds`: alternating
the routes, best of 5, over copies of the weight that leave the cache as a decode step's
weights do), and the route decoding takes on this machine is named after the arrow.
"""

from __future__ import annotations

import argparse
import json

import torch

from tinygpt.device import cpu_name
from tinygpt.kernels import one_row_route, route_speeds

# (out, in) of GPT-2 small's matrices: attention's QKV and projection, the MLP's two, the head.
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072), (50304, 768)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    args = ap.parse_args()
    rows = []
    print(f"one-row products, GB/s of weights read; {cpu_name()}; {torch.get_num_threads()} threads")
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        for shape in SHAPES:
            w = torch.randn(shape).to(dtype)
            gbs = route_speeds(w)
            rows.append({"dtype": name, "shape": shape, **{r: round(v, 1) for r, v in gbs.items()}})
            chosen = one_row_route(w)  # what decoding takes here (timed now, or kept from before)
            print(f"{name:>5} {str(shape):>13}  " + "  ".join(f"{r} {v:5.1f}" for r, v in gbs.items())
                  + f"  -> {chosen}", flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
