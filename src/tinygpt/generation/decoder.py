"""Decoding as a state that rows join and leave between steps.

A :class:`Decoder` owns a pool of KV-cache rows for one model. ``add(prompt, settings)``
queues a row (its prompt is read at the next step, with every row that joined since);
``step()`` gives every active row one token; ``remove(row)`` drops a row at once. A row
also ends by itself, at one of its stop ids or at its budget (``Sampling.max_new_tokens``):
``step()`` says so and frees its place. Each row keeps its own settings, generator and
budget, so it gives the same tokens whatever else is in the batch and whenever it joined.

Rows of different lengths share one forward: each row's last token goes in at the row's
own position (the model's per-row ``input_pos``). Rows that join are read in one
left-padded forward: a pad has a negative position, so the model neither caches nor
attends to it, and each row's real tokens sit at positions 0.. exactly as they would alone.

Past the context (``block_size``) a row goes on in one of two ways (``past_context``):

- "exact" (default): every step re-reads the row's last ``block_size`` tokens without the
  cache, as the textbook loop does, so long generations equal the uncached sliding
  window. The cost: a full forward of the window per token, about ``block_size`` times a
  cached step's arithmetic (on GPT-2 small's 1024 that is compute-bound, tens of times
  slower than a cached step on CPU).
- "fast": the cache goes on. RoPE models keep a rolling cache that overwrites the oldest
  position, so each step still costs one token and attends the last ``block_size``
  positions; what differs from exact is that the kept keys and values were computed
  when their own context reached further back than the window does now. Learned
  positions end at ``block_size``, so a row that reaches it is re-read from its last
  ``block_size // 2`` tokens (one half-block forward every half block of tokens) and
  goes on cached; its context then shrinks to half a block at each re-read, where
  exact mode always sees a whole block.

Every row decides this by itself, so a batched row gives what it gives alone.

With a :class:`~tinygpt.generation.prefix.PrefixStore` (``prefixes``), the decoder keeps the
keys and values of the prompts it reads, and a new row whose prompt begins like a stored
one copies those positions into its cache row and reads only the rest (a server's shared
system prompt). Only prompts within the context, in a cache whose slot is the position (a
local attention layer's cache keeps only its window: prompts within the shortest window).

With ``chunk`` > 0, a row with more than ``chunk`` tokens to read does not join the batch
at once: each step reads at most ``chunk`` prompt tokens of such rows (first come, first
read) into a cache of their own, next to the batch's one-token step, so the rows already
decoding wait for one chunk per step instead of a whole long prompt (with no row decoding,
the oldest prompt is read whole: smaller forwards cost more per token). When all but its last
token are read, the row joins the batch like a prefix-cache hit (its keys and values copied
into its cache row) and its first token comes from that step's forward. A chunk's keys at
position p see the same tokens 0..p as in one long forward, so the tokens are the same; the
sums run in a different order, so logits agree to float rounding, not bit for bit.

The compute dtype is given, never read from the weights (an int8 model's weights are not
its compute dtype): with ``autocast`` the forwards run under autocast to it (fp32 weights
computing in bf16, as the trainer's model does); without, the weights already hold it.
The cache stores keys and values in it. On CPU, a decoder may run on oneDNN-packed
weights (``pack``, see tinygpt.kernels): several rows, and one row where this CPU reads
some weight fastest packed. Packing costs about as much as 10-30 decode steps and a second
copy of the weights while the decoder is open:
:func:`worth_packing` is the rule. Use a decoder inside ``with``: eval mode (and packed
weights) hold while it is open, and the model's own mode comes back after.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import torch

from .. import patterns
from ..device import autocast as autocast_to
from ..kernels import packed_weights, packs_one_row
from ..kvcache import KVCache
from ..model import GPT
from . import processors as P
from .prefix import PrefixStore
from .sampling import Generators, Sampling, choose

PACK_MIN_TOKENS = 32  # batched generations shorter than this do not pay for packing
PAST_CONTEXT = ("exact", "fast")


def worth_packing(model: GPT, rows: int, max_new_tokens: int, device: torch.device) -> bool:
    """Whether a generation of ``rows`` rows and ``max_new_tokens`` tokens should decode on
    packed weights: several rows always do on a CPU; one row where some weight reads
    fastest packed on this CPU (measured: :func:`tinygpt.kernels.one_row_route`)."""
    if device.type != "cpu" or max_new_tokens < PACK_MIN_TOKENS:
        return False
    return rows > 1 or packs_one_row(model)


class Token(NamedTuple):
    """One new token of one row, from :meth:`Decoder.step`."""
    row: int          # the row, as :meth:`Decoder.add` named it
    id: int           # the token
    done: str | None  # "stop" (one of its stop ids), "length" (its budget), or None: it goes on


@dataclass
class _Row:
    handle: int
    settings: Sampling
    generator: torch.Generator | None
    new: int = 0         # tokens generated so far
    read: bool = False   # its tokens are in its cache row (else it is read at the next step)
    shift: int = 0       # its last token sits at position len(tokens) - 1 - shift (fast mode re-reads)


@dataclass
class _Reading:
    """A row whose long prompt is read a chunk per step before it joins the batch."""
    row: _Row
    prompt: list[int]
    cache: KVCache       # one row, the prompt's positions
    done: int = 0        # prompt tokens read into it so far


class Decoder:
    """The rows being decoded by one model, their KV cache and their settings (see the module notes)."""

    def __init__(self, model: GPT, *, device: torch.device | str, dtype: torch.dtype, autocast: bool = False,
                 past_context: str = "exact", use_cache: bool = True, pack: bool = False,
                 processors: Sequence[P.LogitsProcessor] = (), rows: int = 1,
                 prefixes: PrefixStore | None = None, chunk: int = 0):
        if past_context not in PAST_CONTEXT:
            raise ValueError(f"past_context must be one of {PAST_CONTEXT}, got {past_context!r}")
        self.model, self.device, self.dtype = model, torch.device(device), dtype
        self.autocast, self.use_cache, self.pack = autocast, use_cache, pack
        self.fast = use_cache and past_context == "fast"
        self.rolling = self.fast and model.config.pos_emb == "rope"
        self.block = model.config.block_size
        # A local layer's cache keeps its last W positions only (slot = position % W): a stored
        # prompt's keys are reusable for a shorter beginning only while slot = position.
        windows = [p.window for p in patterns.layer_patterns(model.config) if p is not None and p.kind == "local"]
        self.reusable = min([self.block] + windows)
        self.processors = list(processors)  # for every row, before its own rule's
        self.prefixes = prefixes             # prompts read before, whose beginnings new rows may reuse
        if chunk < 0:
            raise ValueError(f"chunk must be 0 (read a prompt at once) or a positive token count, got {chunk}")
        self.chunk = chunk
        self.reading: list[_Reading] = []    # rows reading their long prompts, oldest first
        self._read: dict[int, _Reading] = {} # rows read that join at the next step: handle -> what they read
        self.rows: list[_Row] = []           # active rows, in batch order = cache row order
        self.history = P.History([], model.config.vocab_size, self.device)
        self.cache: KVCache | None = None    # the pool, allocated as rows join
        self._capacity = rows
        self._handles = 0
        self._open: ExitStack | None = None
        self._chains: dict[tuple, list[P.LogitsProcessor]] = {}
        self._grouping: dict[tuple, list[int]] | None = None  # _groups(), until rows join or leave

    # ------------------------------------------------------------------ open and close

    def __enter__(self) -> "Decoder":
        stack = ExitStack()
        was_training = self.model.training
        self.model.eval()
        stack.callback(self.model.train, was_training)
        if self.pack and not self.autocast:  # under autocast Linear takes no packed route: no copies to make
            stack.enter_context(packed_weights(self.model))
        self._open = stack
        return self

    def __exit__(self, *exc) -> None:
        stack, self._open = self._open, None
        stack.close()

    # ------------------------------------------------------------------ rows

    @property
    def active(self) -> list[int]:
        """The rows being decoded, in batch order (not those still reading a long prompt)."""
        return [r.handle for r in self.rows]

    @property
    def busy(self) -> bool:
        """Whether a step has work: rows to decode, or prompts being read."""
        return bool(self.rows or self.reading)

    def add(self, prompt: Sequence[int], settings: Sampling = Sampling(),
            generator: torch.Generator | None = None) -> int:
        """Queue a row continuing ``prompt`` (token ids); its name for :meth:`step` and
        :meth:`remove`. ``generator``: the row's own (default: seeded ``settings.seed``, or
        the global one when that is None)."""
        if len(prompt) == 0:
            raise ValueError("every prompt needs at least one token")
        if settings.max_new_tokens < 1:
            raise ValueError(f"a row needs a budget of at least one token, got {settings.max_new_tokens}")
        if generator is None and settings.seed is not None:
            generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        self._handles += 1
        row = _Row(self._handles, settings, generator)
        if self._chunked(prompt):
            reading = _Reading(row, list(prompt), KVCache(self.model.config, 1, len(prompt), device=self.device,
                                                          dtype=self.dtype))
            reading.done = self._reuse(reading.cache, [prompt])[0]
            if len(prompt) - 1 - reading.done > self.chunk:
                self.reading.append(reading)
                return row.handle
            if reading.done:  # a stored beginning leaves at most one chunk: the row joins with it now
                self._read[row.handle] = reading
        self._join(row, prompt)
        return row.handle

    def _join(self, row: _Row, prompt: Sequence[int]) -> None:
        self.rows.append(row)
        self._grouping = None
        self.history.extend([list(prompt)])

    def _chunked(self, prompt: Sequence[int]) -> bool:
        # A prompt longer than a chunk, within the context, in a cache whose slot is its position.
        return 0 < self.chunk < len(prompt) - 1 and self.use_cache and not self.rolling and len(prompt) <= self.block

    def remove(self, row: int) -> None:
        """Drop a row now (its client left, or a stop string appeared); the others go on unchanged."""
        self.reading = [r for r in self.reading if r.row.handle != row]
        self._read.pop(row, None)
        self._keep([j for j, r in enumerate(self.rows) if r.handle != row])

    def reorder(self, index: Sequence[int]) -> list[int]:
        """The active rows become copies of the rows at batch positions ``index``, in that
        order (beam search keeps and forks hypotheses); returns their new names."""
        self._reserve(len(index))
        copies = []
        for j in index:
            self._handles += 1
            copies.append(dataclasses.replace(self.rows[j], handle=self._handles))
        self._keep(list(index), copies)
        return self.active

    def _keep(self, index: list[int], rows: list[_Row] | None = None) -> None:
        self.rows = rows if rows is not None else [self.rows[j] for j in index]
        self._grouping = None
        self.history.select(index)
        if self.cache is not None and index:
            at = torch.tensor(index, device=self.device)
            for layer in self.cache.layers:
                layer.k[:len(index)] = layer.k[at]
                layer.v[:len(index)] = layer.v[at]

    def _reserve(self, n_rows: int) -> None:
        """Room in the pool for ``n_rows`` rows and every row's prompt and budget."""
        # A row's prompt and its whole budget (its tokens so far include those already generated).
        need = min(self.block, max(len(t) - r.new + r.settings.max_new_tokens
                                   for t, r in zip(self.history.rows, self.rows)))
        if self.cache is not None and self.cache.batch_size >= n_rows and self.cache.max_len >= need:
            return
        old = self.cache
        rows = max(n_rows, self._capacity, old.batch_size if old is not None else 0)
        length = max(need, old.max_len if old is not None else 0)
        self.cache = KVCache(self.model.config, rows, length, device=self.device, dtype=self.dtype,
                             rolling=self.rolling)
        if old is not None:  # the rows already read keep their slots
            n, span = old.batch_size, old.max_len
            for mine, theirs in zip(self.cache.layers, old.layers):
                mine.k[:n, :, :span] = theirs.k[:, :, :span]
                mine.v[:n, :, :span] = theirs.v[:, :, :span]

    # ------------------------------------------------------------------ a step

    @torch.no_grad()
    def step(self) -> list[Token]:
        """One new token for every active row (rows that joined are read first), and the
        next chunk of the long prompts being read."""
        if self.reading:
            self._read_chunk()
        if not self.rows:
            return []
        logits = self.process(self.logits())
        return self.advance(self.choose(logits))

    def _read_chunk(self) -> None:
        """Read up to ``chunk`` tokens of the rows reading long prompts, oldest first; a row
        with all but its last token read joins the batch (its first token comes from this
        step's forward)."""
        if self._open is None:
            raise RuntimeError("use a Decoder inside `with`: it holds the model in eval mode while open")
        # With no row decoding there is no one to keep waiting: the oldest prompt is read whole.
        budget = self.chunk if self.rows else len(self.reading[0].prompt)
        while self.reading and budget > 0:
            r = self.reading[0]
            n = min(budget, len(r.prompt) - 1 - r.done)
            r.cache.length = r.done
            self._forward(torch.tensor([r.prompt[r.done:r.done + n]], device=self.device), None, r.cache)
            r.done, budget = r.done + n, budget - n
            if r.done == len(r.prompt) - 1:
                self.reading.pop(0)
                self._read[r.row.handle] = r
                self._join(r.row, r.prompt)

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        """Next-token logits (B, V) in fp32 of the active rows, in batch order."""
        if self._open is None:
            raise RuntimeError("use a Decoder inside `with`: it holds the model in eval mode while open")
        parts: list[tuple[list[int], torch.Tensor]] = []  # (batch positions, their logits)
        tokens = self.history.rows
        windowed = [j for j, t in enumerate(tokens) if not self.use_cache or (not self.fast and len(t) > self.block)]
        fresh = [j for j, r in enumerate(self.rows) if not r.read and j not in windowed]
        stepped = [j for j, r in enumerate(self.rows) if r.read and j not in windowed]
        if windowed:  # read again from scratch: the last block, no cache
            ids, pos = _left_pad([tokens[j][-self.block:] for j in windowed], self.device)
            parts.append((windowed, self._forward(ids, pos, None)))
        if fresh or stepped:
            self._reserve(len(self.rows))
        if stepped:
            parts += self._step(stepped)
        if fresh:  # rows join at the end of the batch: read their prompts into their cache rows
            start = fresh[0]
            for j in fresh:
                self.rows[j].shift = max(0, len(tokens[j]) - self.block) if self.fast else 0
                self.rows[j].read = True
            view = self.cache.rows(start, start + len(fresh))
            view.length = 0
            known = self._reuse(view, [tokens[j] for j in fresh], [self.rows[j].handle for j in fresh])
            ids, pos = _left_pad([tokens[j][-self.block:] for j in fresh], self.device, known)
            parts.append((fresh, self._forward(ids, pos, view)))
            self._keep_prefixes(view, [tokens[j] for j in fresh])
        if len(parts) == 1 and len(parts[0][0]) == len(self.rows):
            return parts[0][1]  # the usual step: every row in one forward, in batch order (no copy)
        out = torch.empty(len(self.rows), parts[0][1].shape[-1], device=parts[0][1].device)
        for index, logits in parts:
            out[index] = logits
        return out

    def _cacheable(self, prompt: Sequence[int]) -> bool:
        # A prompt within the context, in a cache whose slot is its position.
        return self.prefixes is not None and not self.rolling and len(prompt) <= self.reusable

    def _reuse(self, view: KVCache, prompts: list[Sequence[int]],
               handles: Sequence[int | None] = ()) -> list[int]:
        """Copy into each prompt's cache row what is already read of it (a long prompt read in
        chunks, else its longest stored beginning); how many tokens each got."""
        known = []
        for n, prompt in enumerate(prompts):
            read = self._read.pop(handles[n], None) if n < len(handles) else None
            if read is not None:
                c, kv = read.done, [(layer.k[0], layer.v[0]) for layer in read.cache.layers]
            else:
                hit = self.prefixes.lookup(prompt) if self._cacheable(prompt) else None
                if hit is None:
                    known.append(0)
                    continue
                c, kv = hit
            for layer, (k, v) in zip(view.layers, kv):
                layer.k[n, :, :c] = k[:, :c]
                layer.v[n, :, :c] = v[:, :c]
            known.append(c)
        return known

    def _keep_prefixes(self, view: KVCache, prompts: list[Sequence[int]]) -> None:
        """Store the prompts just read (their keys and values, copied out of the pool)."""
        for n, prompt in enumerate(prompts):
            if self._cacheable(prompt):
                L = len(prompt)
                self.prefixes.add(prompt, [(layer.k[n, :, :L].clone(), layer.v[n, :, :L].clone())
                                           for layer in view.layers])

    def _step(self, stepped: list[int]) -> list[tuple[list[int], torch.Tensor]]:
        """One cached step of rows ``stepped`` (batch positions, each read before): their last
        token at its position; (batch positions, logits) parts. A row whose position would
        pass the context (fast mode, learned positions) is first re-read from its last half
        block, which gives its logits."""
        tokens, out = self.history.rows, []
        n = stepped[-1] + 1
        ids, pos = [0] * n, [-1] * n  # rows not stepped here are pads: they write the spare slot, and nothing reads it
        for j in stepped:
            r = self.rows[j]
            p = len(tokens[j]) - 1 - r.shift
            if self.fast and not self.rolling and p >= self.block:
                keep = self.block // 2
                r.shift = len(tokens[j]) - keep
                view = self.cache.rows(j, j + 1)
                view.length = 0
                out.append(([j], self._forward(torch.tensor([tokens[j][-keep:]], device=self.device), None, view)))
                continue
            ids[j], pos[j] = tokens[j][-1], p
        reread = {j for index, _ in out for j in index}
        live = [j for j in stepped if j not in reread]
        if live:
            view = self.cache.rows(0, n)
            x = torch.tensor(ids, device=self.device)[:, None]
            if len(set(pos)) == 1:  # every row at the same next position: no mask needed
                view.length = pos[0]
                logits = self._forward(x, None, view)
            else:
                view.length = 0
                logits = self._forward(x, torch.tensor(pos, device=self.device)[:, None], view)
            out.append((live, logits if live == list(range(n)) else logits[live]))
        return out

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor | None, cache: KVCache | None) -> torch.Tensor:
        """The last position's logits (B, V), fp32."""
        with autocast_to(self.device, self.dtype) if self.autocast else ExitStack():
            return self.model(ids, input_pos=pos, cache=cache, last=True).logits[:, -1].float()

    def process(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's logits through the decoder's processors, then its own rule's chain."""
        logits = P.apply(self.processors, logits, self.history)
        groups = self._groups()
        if len(groups) == 1:
            (rule, _), = groups.items()
            return P.apply(self._chain(rule), logits, self.history)
        logits = logits.clone()
        for rule, index in groups.items():
            logits[index] = P.apply(self._chain(rule), logits[index], self.history.subset(index))
        return logits

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Each row's token (B,): the likeliest for a greedy row, else a draw from its generator."""
        groups = self._groups()
        if len(groups) == 1 and self.rows[0].settings.is_greedy:
            return choose(logits, True)
        out = torch.empty(len(self.rows), dtype=torch.long, device=logits.device)
        for index in groups.values():
            greedy = self.rows[index[0]].settings.is_greedy
            out[index] = choose(logits[index], greedy, None if greedy else [self.rows[j].generator for j in index])
        return out

    def advance(self, tokens: torch.Tensor) -> list[Token]:
        """Append ``tokens`` (B,) to the active rows; rows that reach a stop id or their budget leave."""
        self.history.append(tokens)
        new, keep = [], []
        for j, (r, t) in enumerate(zip(self.rows, tokens.tolist())):
            r.new += 1
            done = "stop" if t in r.settings.stop_ids else "length" if r.new >= r.settings.max_new_tokens else None
            new.append(Token(r.handle, t, done))
            if done is None:
                keep.append(j)
        if len(keep) < len(self.rows):
            self._keep(keep)
        return new

    def _groups(self) -> dict[tuple, list[int]]:
        """Batch positions of the rows sharing each rule (kept until the rows change)."""
        if self._grouping is None:
            self._grouping = {}
            for j, r in enumerate(self.rows):
                self._grouping.setdefault(r.settings.rule(), []).append(j)
        return self._grouping

    def _chain(self, rule: tuple) -> list[P.LogitsProcessor]:
        if rule not in self._chains:
            row = next(r for r in self.rows if r.settings.rule() == rule)
            self._chains[rule] = row.settings.chain()
        return self._chains[rule]


def _left_pad(rows: Sequence[Sequence[int]], device,
              known: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) ids and per-row positions (negative = pad), or None positions when no row is
    padded. ``known[i]``: row i's first tokens already in its cache row, not read again."""
    known = known or [0] * len(rows)
    T = max(len(r) - k for r, k in zip(rows, known))
    if all(len(r) == T and not k for r, k in zip(rows, known)):
        return torch.tensor([list(r) for r in rows], device=device), None
    ids = torch.tensor([[0] * (T - len(r) + k) + list(r[k:]) for r, k in zip(rows, known)], device=device)
    pos = torch.tensor([[-1] * (T - len(r) + k) + list(range(k, len(r))) for r, k in zip(rows, known)],
                       device=device)
    return ids, pos


# ---------------------------------------------------------------------------- whole generations

# on_step(rows, tokens): the original indices of the rows still generating and their new
# tokens (B,); returns the rows (original indices) to stop now, e.g. on a stop string.
OnStep = Callable[[list[int], torch.Tensor], "set[int] | None"]


def decode(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
           processors: Sequence[P.LogitsProcessor] = (), greedy: bool = False, generator: Generators = None,
           stop_ids: Sequence[int] = (), use_cache: bool = True, on_step: OnStep | None = None,
           past_context: str = "exact", dtype: torch.dtype = torch.float32,
           device: torch.device | str | None = None) -> list[list[int]]:
    """The new tokens of each prompt (a list of ids, lengths may differ): up to
    ``max_new_tokens``, ending at the first of ``stop_ids`` (included) or when ``on_step``
    stops the row. ``processors`` make every row's rule (greedy, or a draw from
    ``generator``: one for the batch, or one per row). The model computes in ``dtype``
    (its weights' own; ``device``: the embeddings' by default)."""
    if len(prompts) == 0 or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if past_context not in PAST_CONTEXT:
        raise ValueError(f"past_context must be one of {PAST_CONTEXT}, got {past_context!r}")
    out: list[list[int]] = [[] for _ in prompts]
    if max_new_tokens <= 0:
        return out
    device = torch.device(device) if device is not None else model.transformer.wte.weight.device
    gens = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(prompts)
    rule = Sampling(greedy=greedy, max_new_tokens=max_new_tokens, stop_ids=tuple(stop_ids))
    with Decoder(model, device=device, dtype=dtype, past_context=past_context, use_cache=use_cache,
                 pack=worth_packing(model, len(prompts), max_new_tokens, device), processors=processors,
                 rows=len(prompts)) as decoder:
        index = {decoder.add(p, rule, g): i for i, (p, g) in enumerate(zip(prompts, gens))}
        while decoder.active:
            new = decoder.step()
            for t in new:
                out[index[t.row]].append(t.id)
            if on_step is not None:
                stop = on_step([index[t.row] for t in new], torch.tensor([t.id for t in new], device=device)) or ()
                for t in new:
                    if index[t.row] in stop and t.done is None:
                        decoder.remove(t.row)
    return out


def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: Generators = None,
             use_cache: bool = True, stop_id: int | None = None,
             on_token: Callable[[torch.Tensor], None] | None = None) -> torch.Tensor:
    """Continue ``idx`` (B, T) by up to ``max_new_tokens`` tokens -> (B, T + new).

    The tensor form of :func:`decode` for rows of one length, with the model's own
    distribution by default (user-facing defaults live in GenerationConfig). A row that
    produced ``stop_id`` is padded with it until every row has (Hugging Face's convention).
    ``on_token`` sees each new column (B, 1) as it is made."""
    B = idx.size(0)

    def step(rows: list[int], tokens: torch.Tensor) -> None:
        if on_token is not None:
            column = torch.full((B, 1), stop_id if stop_id is not None else 0, dtype=torch.long, device=idx.device)
            column[rows, 0] = tokens
            on_token(column)

    rule = Sampling(temperature=temperature, top_k=top_k, top_p=top_p)
    new = decode(model, idx.tolist(), max_new_tokens, processors=rule.chain(), greedy=rule.is_greedy,
                 generator=generator, stop_ids=() if stop_id is None else (stop_id,), use_cache=use_cache,
                 on_step=step, device=idx.device)
    n = max((len(r) for r in new), default=0)
    tail = torch.tensor([r + [stop_id] * (n - len(r)) for r in new], dtype=torch.long, device=idx.device)
    return torch.cat([idx, tail.view(B, n)], dim=1)
