"""How fast each route multiplies one row by a weight matrix on this CPU (batch-1 decoding).

    python bench/one_row_routes.py                  # GPT-2 small's shapes, fp32 and bf16

Decoding one token reads every weight once, so each product is a matrix-vector product and
its speed is the speed of reading the weight: reported as GB/s of weights read. Routes:
PyTorch's ``F.linear`` on one row, ``torch.mv``, and oneDNN's prepacked (blocked) weight
(``torch.ops.mkldnn._linear_pointwise``, what :func:`tinygpt.kernels.packed_weights` makes).
Each shape is timed alternating the routes, best of 7, with several distinct weights per
timing so that the large ones come from memory as in a real decode step, not from cache.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from tinygpt.device import cpu_name, fastest

# (out, in) of GPT-2 small's matrices: attention's QKV and projection, the MLP's two, the head.
SHAPES = [(2304, 768), (768, 768), (3072, 768), (768, 3072), (50304, 768)]


def routes(ws: list[torch.Tensor], x: torch.Tensor) -> dict:
    out = {"linear": lambda: [F.linear(x[None], w) for w in ws],
           "mv": lambda: [torch.mv(w, x) for w in ws]}
    try:
        packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in ws]
        out["oneDNN packed"] = lambda: [torch.ops.mkldnn._linear_pointwise(x[None], p, None, "none", [], "")
                                        for p in packed]
    except (AttributeError, RuntimeError):
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--mb", type=float, default=64, help="MB of distinct weights read per timing")
    args = ap.parse_args()
    rows = []
    print(f"one-row products, GB/s of weights read; {cpu_name()}; {torch.get_num_threads()} threads")
    for name in args.dtypes.split(","):
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
        for shape in SHAPES:
            nbytes = shape[0] * shape[1] * dtype.itemsize
            ws = [torch.randn(shape).to(dtype) for _ in range(max(1, int(args.mb * 2**20 // nbytes)))]
            x = torch.randn(shape[1]).to(dtype)
            _, times = fastest(routes(ws, x), torch.device("cpu"), reps=7)
            gbs = {r: len(ws) * nbytes / t / 1e9 for r, t in times.items()}
            rows.append({"dtype": name, "shape": shape, **{r: round(v, 1) for r, v in gbs.items()}})
            print(f"{name:>5} {str(shape):>13}  " + "  ".join(f"{r} {v:5.1f}" for r, v in gbs.items()), flush=True)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
