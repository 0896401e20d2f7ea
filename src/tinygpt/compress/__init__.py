"""Making models smaller and faster: int8 / int4 quantization (post-training, with or without
a calibration text), and pruning (magnitude or Wanda). The formats and kernels are tinygpt.quant's.

    from tinygpt.compress import QuantizeOptions, quantize_run
    quantize_run("runs/shakespeare", "runs/shakespeare-int4", QuantizeOptions(scheme="int4", rounding="gptq-lite"))
"""

from .prune import PruneOptions, prune_model, prune_run
from .quantize import QuantizeOptions, quantize_model, quantize_run

__all__ = ["PruneOptions", "QuantizeOptions", "prune_model", "prune_run", "quantize_model", "quantize_run"]
