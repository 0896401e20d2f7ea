"""tinygpt models inside EleutherAI's lm-evaluation-harness.

Importing this module registers the model class ``tinygpt`` with the harness, so every task
the harness knows runs on a tinygpt run, a Hugging Face directory, or a hub name::

    tinygpt lm-eval --model tinygpt --model_args run=runs/shakespeare --tasks hellaswag
    lm_eval.simple_evaluate(model="tinygpt", model_args="run=runs/shakespeare", tasks=[...])

The harness's ``lm_eval`` command has no plugin hook, so it knows only its built-in models.
``tinygpt lm-eval`` imports this module and then runs that same command line.

The harness's own TemplateLM turns text into token pairs, as its Hugging Face backend does
(trailing context whitespace moves to the continuation, and the pair is tokenized together
and split). Scoring is tinygpt's batched :func:`~tinygpt.eval.choice.loglikelihoods`, and
generation is :meth:`TinyGPT.generate`. An exported run therefore scores the same through
either backend.
"""

from __future__ import annotations

import logging

import torch
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from ..errors import TinyGPTError
from ..generation import load
from ..generation.lm import start_ids
from .choice import loglikelihoods

eval_logger = logging.getLogger(__name__)


@register_model("tinygpt")
class TinyGPTLM(TemplateLM):
    """``model_args``: ``run`` (a run directory) or ``pretrained`` (a Hugging Face directory or
    hub name); ``checkpoint`` (best, last or a .safetensors file), ``dtype`` (fp32, bf16,
    fp16), ``max_gen_toks`` (default 256). The harness's ``--device`` and ``--batch_size`` apply."""

    def __init__(self, run: str | None = None, pretrained: str | None = None, checkpoint: str = "best",
                 device: str | None = None, dtype: str = "fp32", batch_size: int | str | None = 16,
                 max_gen_toks: int = 256, seed: int = 1234, **unused) -> None:
        super().__init__()
        source = run or pretrained
        if not source:
            raise TinyGPTError("the tinygpt model needs run=RUN_DIR (or pretrained=HF_DIR_OR_NAME) in --model_args")
        if device == "cuda:0" and not torch.cuda.is_available():
            # The harness asks for cuda:0 unless told otherwise (its Hugging Face backend then
            # falls back to the CPU too); a device the user names must exist.
            eval_logger.info("no CUDA GPU: tinygpt runs on the best device there is (--device auto)")
            device = "auto"
        self.lm = load(source, checkpoint=checkpoint, device=device or "auto", dtype=dtype)
        # "auto" asks the harness to search for a batch size; ours are fixed, 16 is a safe start.
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_gen_toks = int(max_gen_toks)
        self.seed = int(seed)
        self.source = str(source)

    @property
    def eot_token_id(self) -> int:
        return start_ids(self.lm.tokenizer)[0]

    @property
    def max_length(self) -> int:
        return self.lm.model.config.block_size

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.lm.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int], **kwargs) -> str:
        return self.lm.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """[((context, continuation) or None, context ids, continuation ids)] -> [(logprob, is_greedy)]."""
        with tqdm(total=len(requests), desc="tinygpt loglikelihood", disable=disable_tqdm or None) as bar:
            scores = loglikelihoods(self.lm, [(ctx, cont) for _, ctx, cont in requests],
                                    batch_size=self.batch_size, progress=bar.update)
        out = [(s.logprob, s.greedy) for s in scores]
        for (key, _, _), result in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, result)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, every token scored once, in the harness's disjoint
        windows of the model's context (the first token conditions on end-of-text)."""
        windows, owner = [], []
        for i, req in enumerate(requests):
            (text,) = req.args
            for w in lm_utils.get_rolling_token_windows(token_list=self.tok_encode(text), prefix_token=self.eot_token_id,
                                                        max_seq_len=self.max_length, context_len=1):
                windows.append((None, *lm_utils.make_disjoint_window(w)))
                owner.append(i)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, scores):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Continue each context until a stop string, end-of-text or ``max_gen_toks``. As in the
        Hugging Face backend, the context keeps its last ``context - max_gen_toks`` tokens."""
        eot = self.lm.tokenizer.eot_id
        eos = self.tok_decode([eot]) if eot is not None else None
        groups: dict[str, list[int]] = {}  # requests with the same settings generate as one batch
        for i, req in enumerate(requests):
            groups.setdefault(repr(sorted(req.args[1].items())), []).append(i)
        out = [""] * len(requests)
        with tqdm(total=len(requests), desc="tinygpt generate", disable=disable_tqdm or None) as bar:
            for members in groups.values():
                kwargs = normalize_gen_kwargs(requests[members[0]].args[1], self.max_gen_toks)
                until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
                new = int(kwargs.pop("max_gen_toks"))
                if new >= self.max_length:
                    raise TinyGPTError(f"max_gen_toks {new} leaves no room for a context in the model's "
                                       f"{self.max_length}; lower it (--gen_kwargs max_gen_toks=N)")
                greedy = not kwargs.get("do_sample") or not kwargs.get("temperature")
                options = {"greedy": True} if greedy else {"temperature": float(kwargs["temperature"]),
                                                           "top_k": None, "top_p": kwargs.get("top_p")}
                for b in range(0, len(members), self.batch_size):
                    batch = members[b:b + self.batch_size]
                    prompts = [self.tok_encode(requests[i].args[0])[-(self.max_length - new):] for i in batch]
                    texts = self.lm.generate(prompts, new, stop=[s for s in until if s], seed=self.seed,
                                             **options)
                    for i, text in zip(batch, texts):
                        out[i] = text
                        self.cache_hook.add_partial("generate_until", requests[i].args, text)
                    bar.update(len(batch))
        return out

    def get_model_info(self) -> dict:
        return {"model_source": self.source, "checkpoint": str(self.lm.checkpoint), "step": self.lm.step}
