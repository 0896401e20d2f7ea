"""Evaluating models the way the field does: loss, perplexity and bits per byte over a text."""

from .perplexity import Score, score, windows

__all__ = ["Score", "score", "windows"]
