"""Knowledge distillation (Hinton et al. 2015): the student learns the teacher's whole
next-token distribution, not only the one token the text has.

A forward hook on the student mixes, in training only, its cross-entropy with the KL
divergence KL(teacher || student) summed over the same counted targets, so the trainer's
step, its gradient accumulation and its loss normalisation stay exactly as they are:
loss_sum = (1 - w) * CE_sum + w * KL_sum. Temperature 1: the teacher's distribution as it
samples (a small model recovering from pruning is the use, not squeezing a large one).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from ..errors import TinyGPTError
from ..model import GPT, IGNORE_INDEX, GPTOutput


def attach_teacher(student: GPT, teacher: GPT, weight: float) -> RemovableHandle:
    """Make ``student``'s training forwards return the distillation loss (``weight``: the KL
    term's share). ``teacher`` is frozen and read in eval mode; remove the handle to stop."""
    if teacher.config.vocab_size != student.config.vocab_size:
        raise TinyGPTError(f"the teacher's vocabulary ({teacher.config.vocab_size} tokens) is not the student's "
                           f"({student.config.vocab_size}); distil from a model with the same tokenizer")
    teacher.eval().requires_grad_(False)

    def mix(module, args, kwargs, out: GPTOutput):
        targets = args[1] if len(args) > 1 else kwargs.get("targets")
        if not module.training or targets is None or weight == 0:
            return None
        with torch.no_grad():
            taught = teacher(args[0], input_pos=kwargs.get("input_pos")).logits  # (B, T, V)
        counted = targets != IGNORE_INDEX  # (B, T)
        if kwargs.get("loss_mask") is not None:
            counted = counted & kwargs["loss_mask"].bool()
        # Pointwise p_t (log p_t - log p_s), summed over the vocabulary: (B, T)
        kl = F.kl_div(out.logits.float().log_softmax(-1), taught.float().log_softmax(-1), log_target=True,
                      reduction="none").sum(-1)
        loss_sum = (1 - weight) * out.loss_sum + weight * kl[counted].sum()
        return GPTOutput(out.logits, loss_sum / out.n_targets, loss_sum, out.n_targets, out.aux_loss)

    return student.register_forward_hook(mix, with_kwargs=True)
