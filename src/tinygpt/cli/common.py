"""What ``tinygpt train`` and ``tinygpt finetune`` still import from here; the other commands
take ``log`` from :mod:`tinygpt.console` (no cli module imports another). These two move to
it when they adopt the shared option sections."""

from ..console import log

__all__ = ["log"]
