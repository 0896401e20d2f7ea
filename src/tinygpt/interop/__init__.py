"""Conversion to and from other ecosystems' checkpoint formats.

This package is the only place in tinygpt that knows Hugging Face, GGUF or MLX
parameter and config names. Everything in it is a pure function on tensors, state
dicts and plain config dicts: no file I/O and no imports of the foreign libraries
themselves, so the rest of tinygpt never has to know these formats exist.
"""
