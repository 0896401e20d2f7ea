"""Evaluating models the way the field does: loss, perplexity and bits per byte over a text."""

from .perplexity import Score, evaluate, score, validation_text, windows

__all__ = ["Score", "evaluate", "score", "validation_text", "windows"]
