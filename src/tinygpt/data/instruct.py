"""Instruction data for fine-tuning: JSONL examples, prompt templates, loss masks and packed batches.

A base model only continues text; fine-tuning on (prompt, response) pairs teaches it to answer.
Two things make that work, and this module owns both. The prompt must be laid out the same way
at training and at generation time, so the layout is a named *template* that ``tinygpt finetune``,
``tinygpt sample --instruct`` and ``tinygpt chat`` all render through :func:`render`. And only the
responses are learned: the prompt is context, so its tokens carry ``loss_mask`` False.

Each line of the ``.jsonl`` file is one example, in either of two shapes::

    {"instruction": "...", "input": "... (optional, may be empty)", "response": "..."}
    {"messages": [{"role": "system", "content": "..."},       (optional)
                  {"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}, ...]}

``"output"`` is accepted for ``"response"`` (the Stanford Alpaca dataset's field name). Both
shapes become one :class:`Example`: an optional system message and (user, assistant) turns.

Templates (``TEMPLATES``; ``[...]`` only when there is an input or a system message, ``<END>``
is the end of a response, below; a trailing ``\\`` joins two lines).

``alpaca`` is the default, Stanford Alpaca's prompt::

    Below is an instruction that describes a task. Write a response that appropriately completes the request.\\n\\n
    ### Instruction:\\n{instruction}\\n\\n### Response:\\n{response}<END>

  with an input, the preamble and an Input section change::

    Below is an instruction that describes a task, paired with an input that provides further context. \\
    Write a response that appropriately completes the request.\\n\\n
    ### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n{response}<END>

  a system message replaces the preamble (``{system}\\n\\n``); a later turn follows the previous
  ``<END>`` directly: ``### Instruction:\\n{user}\\n\\n### Response:\\n{response}<END>``.

``chatml`` (the format of Qwen and OpenAI's ChatML)::

    [<|im_start|>system\\n{system}<|im_end|>\\n]
    <|im_start|>user\\n{instruction}[\\n\\n{input}]<|im_end|>\\n<|im_start|>assistant\\n{response}<|im_end|><END>
    \\n<|im_start|>user\\n...                       (a later turn)

``simple``, whose own text is only letters, ':' and newlines, so a char model trained on plain
English (or Shakespeare, whose speeches it mimics) can encode it::

    [System:\\n{system}\\n\\n]
    User:\\n{instruction}[\\n\\n{input}]\\n\\nAssistant:\\n{response}<END>
    User:\\n...                                      (a later turn)

The end of a response is trained, or the model would never learn to stop. ``<END>`` is the
tokenizer's end-of-text token where it has one (gpt2, bpe: ``<|endoftext|>``); a char tokenizer
has none, so its responses end with the text ``END_WITHOUT_EOT`` ("\\n\\n\\n", which plain prose
rarely holds) instead. Generation stops at the end-of-text token, or at :func:`stop_strings`
(``END_WITHOUT_EOT`` for a char tokenizer, and ``<|im_end|>`` for chatml).

:class:`ExampleBatches` packs tokenized examples into rows of ``block_size`` (x, y) pairs; each
packed example restarts at ``input_pos`` 0, which the model reads as a new sequence, and the
padding after them has position -1.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..config import opt
from ..errors import TinyGPTError
from ..model import IGNORE_INDEX
from ..tokenizer import Tokenizer, some_chars
from .batches import Batch

END_WITHOUT_EOT = "\n\n\n"   # ends a response when the tokenizer has no end-of-text token
DEFAULT_TEMPLATE = "alpaca"
ROLES = ("system", "user", "assistant")
_FORMATS = ('each line must be {"instruction": ..., "response": ...} ("input" optional, "output" also accepted) '
            'or {"messages": [{"role": ..., "content": ...}, ...]}')


# ---------------------------------------------------------------------------- examples


@dataclass(frozen=True)
class Turn:
    """One exchange: what the user said and the assistant's reply (the trained text)."""
    user: str
    assistant: str
    input: str = ""   # instruction data's optional context; each template shows it its own way


@dataclass(frozen=True)
class Example:
    """A conversation: an optional system message, then one or more turns."""
    turns: tuple[Turn, ...]
    system: str | None = None


def is_instruction_data(spec: str) -> bool:
    """Whether ``--data spec`` names instruction data (a .jsonl file) rather than plain text."""
    return str(spec).lower().endswith(".jsonl")


def read_examples(path: str | Path) -> list[Example]:
    """Every example of the JSONL file at ``path``, in file order; blank lines are skipped."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise TinyGPTError(f"instruction data {path} does not exist; check the --data path") from None
    except OSError as err:
        raise TinyGPTError(f"cannot read instruction data {path} ({err.strerror}); check the --data path") from None
    examples = []
    for number, line in enumerate(raw.splitlines(), 1):
        where = f"{path}:{number}"
        try:
            text = line.decode("utf-8-sig" if number == 1 else "utf-8")   # an editor's BOM is not JSON
        except UnicodeDecodeError as err:
            raise TinyGPTError(f"{where}: byte {err.start + 1} of the line is not UTF-8; "
                               "save the file as UTF-8") from None
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            if number == 1 and text.lstrip().startswith("["):
                raise TinyGPTError(f"{where}: the file is one JSON array (like alpaca_data.json), not JSON Lines; "
                                   "convert it to one example object per line") from None
            raise TinyGPTError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); {_FORMATS}") from None
        examples.append(_parse_record(record, where))
    if not examples:
        raise TinyGPTError(f"instruction data {path} holds no examples; {_FORMATS}")
    return examples


def _parse_record(record: object, where: str) -> Example:
    if not isinstance(record, dict):
        hint = " (convert a JSON array to one example object per line)" if isinstance(record, list) else ""
        raise TinyGPTError(f"{where}: a JSON {_json_type(record)}, not an object{hint}; {_FORMATS}")
    if "messages" in record:
        mixed = [k for k in ("instruction", "input", "response", "output") if k in record]
        if mixed:
            raise TinyGPTError(f"{where}: has both \"messages\" and {', '.join(map(json.dumps, mixed))}; "
                               "use one format per line")
        system, turns = _parse_messages(record["messages"], where, open_turn=False)
        return Example(tuple(turns), system)
    if "response" in record and "output" in record:
        raise TinyGPTError(f"{where}: has both \"response\" and \"output\" (synonyms); keep one of them")
    reply = "response" if "response" in record else "output"
    for field in ("instruction", reply):
        if field not in record:
            raise TinyGPTError(f"{where}: missing \"{'response' if field == 'output' else field}\"; {_FORMATS}")
    extra = record.get("input")
    extra = "" if extra is None else extra   # some exports write null for "no input"
    for field, value in (("instruction", record["instruction"]), (reply, record[reply]), ("input", extra)):
        if not isinstance(value, str):
            raise TinyGPTError(f"{where}: \"{field}\" is a JSON {_json_type(value)}, not a string; "
                               "write the text as one JSON string")
    return Example((Turn(record["instruction"], record[reply], extra),))


def _parse_messages(messages: object, where: str, *, open_turn: bool) -> tuple[str | None, list[Turn]]:
    """(system, turns) from chat messages. ``open_turn``: the conversation ends with the user's
    message, which becomes a last turn with an empty reply (a prompt); otherwise with the assistant's."""
    order = "an optional system message, then user and assistant taking turns"
    if not isinstance(messages, list) or not messages:
        got = "an empty list" if isinstance(messages, list) else f"a JSON {_json_type(messages)}"
        raise TinyGPTError(f"{where}: \"messages\" is {got}; it must list messages: {order}")
    texts = []
    for i, message in enumerate(messages, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise TinyGPTError(f"{where}: message {i} is not an object with \"role\" and \"content\"; "
                               'write it as {"role": "user", "content": "..."}')
        role, content = message["role"], message["content"]
        if role not in ROLES:
            raise TinyGPTError(f"{where}: message {i} has role {role!r}; use one of: {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise TinyGPTError(f"{where}: message {i}'s content is a JSON {_json_type(content)}, not a string; "
                               "write the text as one JSON string")
        texts.append((role, content))
    system = None
    if texts[0][0] == "system":
        system = texts.pop(0)[1]
    for i, (role, _) in enumerate(texts):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            number = i + 1 + (system is not None)
            why = "only the first message may be a system message" if role == "system" else order
            raise TinyGPTError(f"{where}: message {number} is {role!r} where {expected!r} is expected; {why}")
    last = "user" if open_turn else "assistant"
    if not texts or texts[-1][0] != last:
        if open_turn:
            raise TinyGPTError(f"{where}: the conversation must end with a user message for the assistant to answer")
        raise TinyGPTError(f"{where}: the conversation must end with the assistant's reply, the text to learn; "
                           "drop the trailing user message or add the reply")
    if open_turn:
        texts.append(("assistant", ""))
    turns = [Turn(texts[i][1], texts[i + 1][1]) for i in range(0, len(texts), 2)]
    return system, turns


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def split_examples(examples: Sequence[Example], val_fraction: float,
                   seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, val): a seeded random hold-out of round(n * val_fraction) examples (at least one
    when val_fraction > 0 and there are two or more); both keep file order."""
    if not 0 <= val_fraction < 1:
        raise TinyGPTError(f"--val-fraction must be at least 0 and below 1, got {val_fraction}; "
                           "e.g. --val-fraction 0.1")
    n = len(examples)
    n_val = round(n * val_fraction)
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    if n_val >= n:
        raise TinyGPTError(f"holding out {n_val} of {n} examples for validation leaves none to train on; "
                           "use a smaller --val-fraction or more examples")
    held = set(torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_val].tolist())
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [e for i, e in enumerate(examples) if i in held]


# ---------------------------------------------------------------------------- templates


@dataclass(frozen=True)
class Template:
    """How a conversation becomes text. Fields are format strings; a reply sits between
    ``assistant`` and ``close``, and the reply plus ``close`` is the trained text."""
    name: str
    preamble: str              # opens a conversation that has no system message
    preamble_with_input: str   # ... whose first turn has an input
    system: str                # a system message, from "{system}"
    user: str                  # a user turn, from "{instruction}" and "{input}" (``input`` filled in, or "")
    input: str                 # how a non-empty input shows inside the user turn, from "{input}"
    assistant: str             # opens the assistant's reply; a prompt ends with it
    close: str = ""            # trained text after each reply, before the end marker
    between: str = ""          # untrained text after a reply's end marker, before the next user turn
    stops: tuple[str, ...] = ()   # text that ends generation besides the end marker

    def own_text(self) -> str:
        """Every character the template itself writes (for the char tokenizer's check)."""
        parts = (self.preamble, self.preamble_with_input, self.system.format(system=""),
                 self.user.format(instruction="", input=""), self.input.format(input=""), self.assistant,
                 self.close, self.between)
        return "".join(parts)


_ALPACA_TASK = "Below is an instruction that describes a task. "
_ALPACA_TASK_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                      "further context. ")
_ALPACA_WRITE = "Write a response that appropriately completes the request.\n\n"

TEMPLATES: dict[str, Template] = {t.name: t for t in (
    Template("alpaca", preamble=_ALPACA_TASK + _ALPACA_WRITE, preamble_with_input=_ALPACA_TASK_INPUT + _ALPACA_WRITE,
             system="{system}\n\n", user="### Instruction:\n{instruction}\n\n{input}",
             input="### Input:\n{input}\n\n", assistant="### Response:\n"),
    Template("chatml", preamble="", preamble_with_input="", system="<|im_start|>system\n{system}<|im_end|>\n",
             user="<|im_start|>user\n{instruction}{input}<|im_end|>\n", input="\n\n{input}",
             assistant="<|im_start|>assistant\n", close="<|im_end|>", between="\n", stops=("<|im_end|>",)),
    Template("simple", preamble="", preamble_with_input="", system="System:\n{system}\n\n",
             user="User:\n{instruction}{input}\n\n", input="\n\n{input}", assistant="Assistant:\n"),
)}


def get_template(template: str | Template) -> Template:
    """The template named ``template`` (a Template passes through)."""
    if isinstance(template, Template):
        return template
    if template not in TEMPLATES:
        raise TinyGPTError(f"unknown template {template!r}; use one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[template]


def render(template: str | Template, example: Example) -> list[tuple[str, bool]]:
    """The example's text as segments in order, each flagged True where it is trained (the replies).

    End markers are not included: they depend on the tokenizer (see :func:`encode_example`)."""
    t = get_template(template)
    if example.system is not None:
        prompt = t.system.format(system=example.system)
    else:
        prompt = t.preamble_with_input if example.turns and example.turns[0].input else t.preamble
    segments = []
    for i, turn in enumerate(example.turns):
        shown_input = t.input.format(input=turn.input) if turn.input else ""
        prompt += (t.between if i else "") + t.user.format(instruction=turn.user, input=shown_input) + t.assistant
        segments += [(prompt, False), (turn.assistant + t.close, True)]
        prompt = ""
    return segments


@dataclass
class InstructOptions:
    """How instructions are laid out for a model: declared once for ``sample --instruct`` and ``chat``."""
    template: str | None = opt(None, "the prompt template instructions are laid out in", choices=tuple(TEMPLATES),
                               shown="the one the model was fine-tuned with, else alpaca (simple where a char "
                                     "vocabulary cannot write alpaca)")
    system: str | None = opt(None, "a system message that opens the conversation")


def recorded_template(run_config: dict) -> str | None:
    """The template a model's fine-tune laid its instruction data out in (``run_config``: its
    config.json; a merged run keeps its fine-tune's record under ``merged``), or None: not
    fine-tuned, or fine-tuned on plain text, where the recorded default was never used."""
    record = run_config.get("finetune") or (run_config.get("merged") or {}).get("finetune") or {}
    data = (run_config.get("data") or {}).get("data")
    if data is not None and not is_instruction_data(data):
        return None
    return record.get("template")


def unwritable(template: str | Template, tokenizer: Tokenizer) -> list[str]:
    """The characters of the template's own text and of a response's end that ``tokenizer``
    cannot encode, in order of appearance (only a char tokenizer lacks any)."""
    if tokenizer.kind != "char":
        return []
    known = set(getattr(tokenizer, "chars", ()))
    return [c for c in dict.fromkeys(get_template(template).own_text() + END_WITHOUT_EOT) if c not in known]


def run_template(run_config: dict, given: str | None = None, tokenizer: Tokenizer | None = None) -> str:
    """The template to lay instructions out in for a model: ``given``, else the one its
    fine-tune was trained with (``run_config``: its config.json), else the default.

    With ``tokenizer``, the template must be one it can write: with nothing given or recorded
    the first of the default and the others it can write is taken; otherwise a char
    vocabulary without the template's own characters is refused here, before the user types."""
    chosen = given or recorded_template(run_config)
    if tokenizer is None:
        return chosen or DEFAULT_TEMPLATE
    if chosen is None:
        chosen = next((t for t in (DEFAULT_TEMPLATE, *TEMPLATES) if not unwritable(t, tokenizer)), DEFAULT_TEMPLATE)
    missing = unwritable(chosen, tokenizer)
    if not missing:
        return chosen
    whose = "--template" if given else "the fine-tune's template" if recorded_template(run_config) \
        else "the default template"
    problem = f"{whose} {chosen}'s own text has {some_chars(missing)} that this model's char vocabulary lacks"
    simple = unwritable("simple", tokenizer)
    if not simple:
        raise TinyGPTError(f"{problem}; use --template simple (its own text is only letters, ':' and newlines)")
    also = "" if chosen == "simple" else f" (and --template simple needs {some_chars(simple)})"
    raise TinyGPTError(f"{problem}{also}; instructions need a model whose vocabulary can write a template, "
                       "e.g. one fine-tuned from a base with a BPE tokenizer such as gpt2")


def response_end(tokenizer: Tokenizer) -> str:
    """The end of a response as text: the end-of-text token's text (it encodes back to that one
    token), or ``END_WITHOUT_EOT`` for a tokenizer without one."""
    return END_WITHOUT_EOT if tokenizer.eot_id is None else tokenizer.decode([tokenizer.eot_id])


def stop_strings(template: str | Template, tokenizer: Tokenizer) -> list[str]:
    """Text at which generation must stop (besides the end-of-text token, where there is one)."""
    stops = list(get_template(template).stops)
    return stops + [END_WITHOUT_EOT] if tokenizer.eot_id is None else stops


def prompt_text(template: str | Template, instruction: str, input: str | None = None,
                system: str | None = None) -> str:
    """The prompt for one instruction, ending where the model writes its response."""
    return _prompt(template, Example((Turn(instruction, "", input or ""),), system), end="")


def chat_prompt(template: str | Template, messages: list[dict], tokenizer: Tokenizer) -> str:
    """The conversation so far (an optional system message, then user/assistant messages ending
    with the user's), ending with the open assistant turn. Earlier replies end as in training,
    which depends on ``tokenizer``."""
    system, turns = _parse_messages(messages, "chat", open_turn=True)
    return _prompt(template, Example(tuple(turns), system), end=response_end(tokenizer))


def _prompt(template: str | Template, example: Example, end: str) -> str:
    # Rendered like training data, so the prompt matches what the model learned; the last
    # (empty) reply is the one the model writes.
    segments = render(template, example)[:-1]
    return "".join(text + (end if trained else "") for text, trained in segments)


# ---------------------------------------------------------------------------- encoding


def encode_example(example: Example, tokenizer: Tokenizer,
                   template: str | Template = DEFAULT_TEMPLATE) -> tuple[list[int], list[bool]]:
    """(ids, trained): the example's tokens, and for each whether it belongs to a reply (or its end marker).

    As a training pair, target ``ids[i + 1]`` counts iff ``trained[i + 1]``."""
    segments = render(template, example)
    return _assemble(segments, [tokenizer.encode(text) for text, _ in segments], _end_ids(tokenizer))


def encode_examples(examples: Sequence[Example], tokenizer: Tokenizer, template: str | Template = DEFAULT_TEMPLATE,
                    source: str = "the instruction data") -> list[tuple[list[int], list[bool]]]:
    """:func:`encode_example` for each example; a char tokenizer's unknown characters are all
    reported in one error (naming ``source``) rather than one at a time."""
    t = get_template(template)
    if tokenizer.kind == "char":
        _check_characters(examples, t, tokenizer, source)
    # One encode per segment, not encode_batch: on short texts the backends' thread pools cost
    # more than they save (50k Alpaca-sized examples: gpt2 8.4 s batched, 1.9 s in a loop, 2 cores).
    return [encode_example(example, tokenizer, t) for example in examples]


def _end_ids(tokenizer: Tokenizer) -> list[int]:
    return tokenizer.encode(END_WITHOUT_EOT) if tokenizer.eot_id is None else [tokenizer.eot_id]


def _assemble(segments: list[tuple[str, bool]], encoded: list[list[int]],
              end: list[int]) -> tuple[list[int], list[bool]]:
    # Segments are tokenized one by one, not as one string: BPE could merge across the prompt/reply
    # boundary into a token that is half prompt, and at generation time the prompt ends exactly
    # there, so the model must learn replies that start on a fresh token.
    ids: list[int] = []
    trained: list[bool] = []
    for (_, is_trained), seg in zip(segments, encoded):
        ids += seg
        trained += [is_trained] * len(seg)
        if is_trained:
            ids += end
            trained += [True] * len(end)
    return ids, trained


def _check_characters(examples: Sequence[Example], template: Template, tokenizer: Tokenizer, source: str) -> None:
    known = set(getattr(tokenizer, "chars", ()))
    found: dict[str, None] = {}   # insertion-ordered: report in order of appearance
    for example in examples:
        texts = [example.system or ""] + [text for turn in example.turns for text in (turn.user, turn.input,
                                                                                        turn.assistant)]
        for text in texts:
            missing = set(text) - known
            if missing:
                found.update(dict.fromkeys(sorted(missing, key=text.index)))
    own = unwritable(template, tokenizer)
    if not found and not own:
        return
    problems, fixes = [], []
    if found:
        problems.append(f"{source} has {some_chars(list(found))}")
        fixes.append("remove them from the data")
    if own:
        problems.append(f"the {template.name} template's own text has {some_chars(own)}")
        if template.name != "simple":
            fixes.append("use --template simple (its own text is only letters, ':' and newlines)")
    fixes.append("fine-tune a base model with a BPE tokenizer such as gpt2")
    raise TinyGPTError(f"{', and '.join(problems)} that the base model's char tokenizer does not know; "
                       f"{', '.join(fixes[:-1])}{', or ' if len(fixes) > 1 else ''}{fixes[-1]}")


# ---------------------------------------------------------------------------- batches


class ExampleBatches:
    """Reproducible stream of Batch(x, y, loss_mask, input_pos), each (batch_size, block_size),
    from tokenized examples.

    Each epoch visits every example once, in an order drawn from a private torch.Generator
    seeded with ``seed`` (``shuffle=False``: file order, for validation). An example of n tokens
    gives n - 1 (x, y) pairs at positions 0..n-2; one longer than block_size + 1 tokens keeps its
    first block_size + 1 (counted in ``n_truncated``), and one left with no trained target is
    skipped (``n_dropped``). ``pack``: consecutive examples share a row while they fit; otherwise
    one example per row. The rest of a row is padding: x 0, y IGNORE_INDEX, loss_mask False,
    input_pos -1. Rows fill batches in order and wrap to the next epoch.
    """

    def __init__(self, encoded: Sequence[tuple[Sequence[int], Sequence[bool]]], batch_size: int, block_size: int,
                 *, pack: bool = True, seed: int = 0, shuffle: bool = True, split: str = "train") -> None:
        if batch_size < 1 or block_size < 1:
            raise TinyGPTError(f"batch size and block size must be at least 1, got {batch_size} and {block_size}")
        self.batch_size, self.block_size = batch_size, block_size
        self.pack, self.seed, self.shuffle, self.split = pack, seed, shuffle, split
        self.n_truncated = self.n_dropped = 0
        ids_kept, trained_kept = [], []
        for ids, trained in encoded:
            if len(ids) != len(trained):
                raise ValueError(f"an example has {len(ids)} ids but {len(trained)} trained flags")
            if len(ids) > block_size + 1:
                self.n_truncated += 1
                ids, trained = ids[:block_size + 1], trained[:block_size + 1]
            if not any(trained[1:]):   # nothing to learn: the reply lies past the cut, or there is none
                self.n_dropped += 1
                continue
            ids_kept.append(np.asarray(ids, dtype=np.int64))
            trained_kept.append(np.asarray(trained, dtype=bool))
        if not ids_kept:
            raise TinyGPTError(f"the {split} split has no example with a response within --block-size {block_size} "
                               "tokens; use a larger --block-size or shorter prompts")
        self.tokens = np.concatenate(ids_kept)        # (N,) every kept example's ids, back to back
        self.trained = np.concatenate(trained_kept)   # (N,) whether each token is reply text
        lengths = np.array([len(a) for a in ids_kept], dtype=np.int64)
        self._starts = (np.cumsum(lengths) - lengths).tolist()   # (E,) each example's first token in `tokens`
        self._pairs = (lengths - 1).tolist()                     # (E,) its (x, y) pairs, at most block_size
        self._positions = np.arange(block_size)                 # (T,) a packed example restarts at 0
        self.n_examples = len(ids_kept)
        self.pairs_per_epoch = int(sum(self._pairs))
        self.generator = torch.Generator().manual_seed(seed)
        self.epoch = 0   # completed passes over the examples
        self.row = 0     # the next row of this epoch's plan
        self._start_epoch()
        # Epoch 0's count; a later epoch packs its own shuffle, so its count may differ slightly.
        self.rows_per_epoch = len(self._rows)

    @property
    def tokens_per_epoch(self) -> int:
        """Token slots one epoch fills (rows x block_size, padding included): divide by
        batch_size * block_size for optimizer steps per epoch."""
        return self.rows_per_epoch * self.block_size

    def _start_epoch(self) -> None:
        # The state before the draw is what a checkpoint keeps: it redraws this epoch's order.
        self._epoch_rng = self.generator.get_state()
        if self.shuffle:
            order = torch.randperm(self.n_examples, generator=self.generator).tolist()
        else:
            order = list(range(self.n_examples))
        rows: list[list[int]] = []
        used = self.block_size   # forces a first row
        for e in order:
            pairs = self._pairs[e]
            if not self.pack or used + pairs > self.block_size:
                rows.append([])
                used = 0
            rows[-1].append(e)
            used += pairs
        self._rows = rows

    def next_batch(self) -> Batch:
        """The next Batch of int64 x, y, input_pos and bool loss_mask, all (batch_size, block_size), on CPU."""
        B, T = self.batch_size, self.block_size
        x = np.zeros((B, T), dtype=np.int64)
        y = np.full((B, T), IGNORE_INDEX, dtype=np.int64)
        mask = np.zeros((B, T), dtype=bool)
        pos = np.full((B, T), -1, dtype=np.int64)
        for b in range(B):
            if self.row >= len(self._rows):
                self.epoch, self.row = self.epoch + 1, 0
                self._start_epoch()
            col = 0
            for e in self._rows[self.row]:
                s, n = self._starts[e], self._pairs[e]
                x[b, col:col + n] = self.tokens[s:s + n]
                y[b, col:col + n] = self.tokens[s + 1:s + n + 1]
                mask[b, col:col + n] = self.trained[s + 1:s + n + 1]   # a pair counts when its target is reply text
                pos[b, col:col + n] = self._positions[:n]
                col += n
            self.row += 1
        return Batch(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(mask), torch.from_numpy(pos))

    def __iter__(self) -> "ExampleBatches":
        return self

    def __next__(self) -> Batch:
        return self.next_batch()

    def state_dict(self) -> dict:
        """Everything needed to continue the stream exactly; safe for torch.load(weights_only=True)."""
        return {"seed": self.seed, "split": self.split, "n_examples": self.n_examples, "pack": self.pack,
                "shuffle": self.shuffle, "rng": self._epoch_rng, "epoch": self.epoch, "row": self.row}

    def load_state_dict(self, state: dict) -> None:
        """Continue from ``state``: redraw that epoch's order and go on from its row."""
        self.generator.set_state(state["rng"])
        self.epoch = int(state["epoch"])
        self._start_epoch()
        # A row past the end (the examples changed) simply starts the next epoch on the next draw.
        self.row = int(state["row"])
