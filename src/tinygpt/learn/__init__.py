"""The ladder to GPT: small from-scratch models to learn how a GPT works, each checked
against PyTorch or the real library.

Rungs, in the order people climb them:

- :mod:`.micrograd`: a scalar autograd engine and a tiny MLP on it (``tinygpt learn micrograd``);
- :mod:`.makemore`: character-level name models of growing power: bigram (counts and a
  one-layer net), the MLP of Bengio et al. 2003, the MLP with BatchNorm (with a hand-written
  backward pass), a WaveNet-style hierarchy, and tinygpt's own GPT (``tinygpt makemore``);
- :mod:`.bpe` (encode, decode, special tokens), :mod:`.bpe_train` (learning the merges) and
  :mod:`.bpe_compare` (beside GPT-2's and the ``tokenizers`` library's): the byte-level BPE
  tokenizer written plainly (``tinygpt learn bpe``).

This package teaches; the production code it mirrors lives in ``model.py`` (the GPT),
``tokenizer.py`` (tiktoken / tokenizers) and PyTorch's autograd.
"""
