"""Prefix caching: the keys and values of prompts already read, for rows whose prompts begin
the same way (a shared system prompt, a chat's history so far).

A key at position p depends only on the tokens 0..p, so a new prompt that begins with c
tokens of a stored one can take those c positions' keys and values as they are and read only
the rest. The store keeps whole prompts' keys and values (per layer, (n_kv, L, hs)) under a
byte budget, least recently used out first; a lookup takes the stored prompt with the
longest common beginning (a scan: the store holds tens of prompts, and comparing token
arrays costs microseconds next to a forward). At least one token is always left to read, so
the row's first logits come from a forward as usual.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np
import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]   # per layer: keys and values (n_kv, L, hs)


class PrefixStore:
    def __init__(self, budget_bytes: int, min_tokens: int = 16):
        self.budget, self.min_tokens = budget_bytes, min_tokens
        self._entries: OrderedDict[bytes, tuple[np.ndarray, KV, int]] = OrderedDict()   # key -> (ids, kv, bytes)
        self.bytes = 0
        self.hits = self.misses = self.reused_tokens = 0

    def lookup(self, prompt: Sequence[int]) -> tuple[int, KV] | None:
        """(c, keys and values) for the longest stored beginning of ``prompt`` (c of its tokens,
        at least ``min_tokens``, at most all but the last), or None."""
        ids = np.asarray(prompt, dtype=np.int64)
        best, found = 0, None
        for key, (stored, kv, _) in self._entries.items():
            n = min(len(ids) - 1, len(stored))
            if n <= best:
                continue
            differ = np.flatnonzero(ids[:n] != stored[:n])
            common = int(differ[0]) if len(differ) else n
            if common > best:
                best, found = common, key
        if found is None or best < self.min_tokens:
            self.misses += 1
            return None
        self._entries.move_to_end(found)
        self.hits, self.reused_tokens = self.hits + 1, self.reused_tokens + best
        return best, self._entries[found][1]

    def add(self, prompt: Sequence[int], kv: KV) -> None:
        """Keep ``prompt``'s keys and values (already copies), dropping the least recently used to fit."""
        ids = np.asarray(prompt, dtype=np.int64)
        key = ids.tobytes()
        if len(ids) < self.min_tokens:
            return
        if key in self._entries:
            self._entries.move_to_end(key)
            return
        size = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)
        if size > self.budget:
            return
        while self.bytes + size > self.budget:
            _, (_, _, freed) = self._entries.popitem(last=False)
            self.bytes -= freed
        self._entries[key] = (ids, kv, size)
        self.bytes += size

    def __len__(self) -> int:
        return len(self._entries)
