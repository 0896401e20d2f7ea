"""Fine-tuning: adapt a trained model (a tinygpt run, GPT-2, a Hugging Face directory) to new
text or to instructions, with every weight (``full``) or a small adapter (``lora``,
``adapter``, ``prompt``; see tinygpt.adapters), on the standard trainer.

    from tinygpt.finetune import FinetuneSession
    FinetuneSession.start("gpt2", {"data": "qa.jsonl", "method": "lora", "lora_rank": 8}).fit()
"""

from .config import METHOD_LR, FinetuneConfig, FinetuneRunConfig
from .data import FinetuneData, prepare
from .session import FinetuneSession

__all__ = ["FinetuneConfig", "FinetuneData", "FinetuneRunConfig", "FinetuneSession", "METHOD_LR", "prepare"]
