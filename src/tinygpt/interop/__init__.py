"""Conversion to and from other ecosystems' checkpoint formats.

This package is the only place in tinygpt that knows Hugging Face, GGUF or MLX
parameter, config and file names. ``hf.py`` holds the mappings as pure functions on
tensors, state dicts and plain config dicts (no I/O, no foreign imports); ``hf_dir.py``
reads and writes Hugging Face model directories and hub names with them.
"""
