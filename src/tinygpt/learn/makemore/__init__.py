"""makemore: character-level models of names, each rung more powerful than the last.

Every rung reads the same words (:mod:`tinygpt.data.words`), trains with the same loop
(:mod:`.train`) and lands in the same comparison table (:mod:`.ladder`):

- ``bigram``: the next character from the current one, by counting and by a one-layer net;
- ``mlp``: Bengio et al. 2003: embed the last n characters, one tanh hidden layer;
- ``mlp-bn``: the same with BatchNorm, its activation / gradient statistics, and a
  hand-written backward pass (:mod:`.manual`);
- ``wavenet``: characters fused in pairs, pairs into pairs: a hierarchy instead of one flat layer;
- ``gpt``: tinygpt's own GPT on the same words.
"""
