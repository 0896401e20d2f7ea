"""Instruction data: reading JSONL, templates, loss masks, and packed, resumable batches."""

import json
from pathlib import Path

import pytest
import torch

from tinygpt.data import Batch
from tinygpt.data.instruct import (
    END_WITHOUT_EOT,
    TEMPLATES,
    Example,
    ExampleBatches,
    Turn,
    chat_prompt,
    encode_example,
    encode_examples,
    is_instruction_data,
    prompt_text,
    read_examples,
    render,
    split_examples,
    stop_strings,
)
from tinygpt.errors import TinyGPTError
from tinygpt.model import IGNORE_INDEX
from tinygpt.tokenizer import CharTokenizer, GPT2Tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
INSTRUCT = FIXTURES / "instruct.jsonl"
CHAT = FIXTURES / "chat.jsonl"
FIXTURE_CHARS = "abcdefghijklmnopqrstuvwxyz \n.,:ABCDEFGHIJKLMNOPQRSTUVWXYZ?"
GOOD_LINE = '{"instruction": "a", "response": "b"}'

ALPACA = ("Below is an instruction that describes a task. "
          "Write a response that appropriately completes the request.\n\n")
ALPACA_INPUT = ("Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n\n")


@pytest.fixture(scope="module")
def gpt2():
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def char():
    return CharTokenizer(FIXTURE_CHARS)


def write(tmp_path, text, name="data.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def split_by_flag(ids, trained, flag):
    """The ids whose trained flag equals ``flag``, in order."""
    return [i for i, t in zip(ids, trained) if t == flag]


# ---------------------------------------------------------------------------- reading


def test_read_instruction_examples_with_and_without_input_and_the_output_synonym():
    examples = read_examples(INSTRUCT)
    assert len(examples) == 10   # the blank line is skipped
    assert examples[0] == Example((Turn("Name a color of the sky.", "The sky is blue."),))
    assert examples[1] == Example((Turn("What is the opposite of cold?", "The opposite of cold is hot."),))
    assert examples[3] == Example((Turn("Translate the word into french.", "chat", input="cat"),))
    assert examples[5].turns[0].assistant == "Hello, good friend."   # given as "output"
    assert all(e.system is None and len(e.turns) == 1 for e in examples)


def test_read_chat_examples():
    first, second = read_examples(CHAT)
    assert first.system == "You are a kind tutor."
    assert first.turns == (Turn("What is two and two?", "Two and two is four."),
                           Turn("And four and four?", "Four and four is eight."))
    assert second == Example((Turn("Say hi.", "Hi."),))


def test_null_input_means_no_input(tmp_path):
    path = write(tmp_path, '{"instruction": "a", "input": null, "output": "b"}\n')
    assert read_examples(path) == [Example((Turn("a", "b"),))]


def msgs(*pairs):
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in pairs]})


@pytest.mark.parametrize("line, problem", [
    ("this is not json", "not valid JSON"),
    ("[1, 2]", "a JSON array, not an object"),
    ('"text"', "a JSON string, not an object"),
    ('{"input": "x", "response": "y"}', 'missing "instruction"'),
    ('{"instruction": "x"}', 'missing "response"'),
    ('{"instruction": "x", "input": "z"}', 'missing "response"'),
    ('{"instruction": 3, "response": "y"}', '"instruction" is a JSON number, not a string'),
    ('{"instruction": "x", "output": ["y"]}', '"output" is a JSON array, not a string'),
    ('{"instruction": "x", "input": false, "response": "y"}', '"input" is a JSON boolean, not a string'),
    ('{"instruction": "x", "response": "y", "output": "z"}', 'both "response" and "output"'),
    ('{"messages": [], "instruction": "x"}', 'both "messages" and "instruction"'),
    ('{"messages": []}', '"messages" is an empty list'),
    ('{"messages": "hi"}', '"messages" is a JSON string'),
    ('{"messages": [{"role": "user"}]}', 'message 1 is not an object with "role" and "content"'),
    (msgs(("bot", "hi")), "message 1 has role 'bot'; use one of: system, user, assistant"),
    (msgs(("assistant", "hi")), "message 1 is 'assistant' where 'user' is expected"),
    (msgs(("system", "s"), ("user", "a"), ("user", "b")), "message 3 is 'user' where 'assistant' is expected"),
    (msgs(("user", "a"), ("system", "s")), "message 2 is 'system' where 'assistant' is expected; only the first"),
    (msgs(("user", "a"), ("assistant", "b"), ("user", "c")), "must end with the assistant's reply"),
    (msgs(("system", "s")), "must end with the assistant's reply"),
    ('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": 1}]}',
     "message 2's content is a JSON number, not a string"),
])
def test_bad_lines_name_file_line_and_problem(tmp_path, line, problem):
    path = write(tmp_path, f"{GOOD_LINE}\n\n{line}\n{GOOD_LINE}\n")   # the bad line is line 3
    with pytest.raises(TinyGPTError) as err:
        read_examples(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3: ") and problem in message
    assert "\n" not in message


def test_bad_files(tmp_path):
    with pytest.raises(TinyGPTError, match="does not exist; check the --data path"):
        read_examples(tmp_path / "missing.jsonl")
    with pytest.raises(TinyGPTError, match="holds no examples"):
        read_examples(write(tmp_path, "\n  \n"))
    with pytest.raises(TinyGPTError, match=r":1: the file is one JSON array .* one example object per line"):
        read_examples(write(tmp_path, f"[\n{GOOD_LINE},\n{GOOD_LINE}\n]\n"))
    (tmp_path / "latin.jsonl").write_bytes(GOOD_LINE.encode() + b'\n{"instruction": "caf\xe9", "response": "b"}\n')
    with pytest.raises(TinyGPTError, match=r"latin.jsonl:2: byte 21 of the line is not UTF-8"):
        read_examples(tmp_path / "latin.jsonl")


def test_byte_order_mark_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD_LINE.encode() + b"\r\n" + GOOD_LINE.encode() + b"\r\n")
    assert read_examples(path) == [Example((Turn("a", "b"),))] * 2


def test_is_instruction_data():
    assert is_instruction_data("data/alpaca.jsonl") and is_instruction_data("X.JSONL")
    assert not is_instruction_data("shakespeare") and not is_instruction_data("books/") \
        and not is_instruction_data("a.json")


# ---------------------------------------------------------------------------- templates


def test_alpaca_text_with_and_without_input():
    assert prompt_text("alpaca", "Add the numbers.") == (
        ALPACA + "### Instruction:\nAdd the numbers.\n\n### Response:\n")
    assert prompt_text("alpaca", "Add the numbers.", "2 and 3") == (
        ALPACA_INPUT + "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n")
    assert prompt_text("alpaca", "Add.", system="Be brief.") == "Be brief.\n\n### Instruction:\nAdd.\n\n### Response:\n"
    example = Example((Turn("Add the numbers.", "5", "2 and 3"),))
    assert render("alpaca", example) == [
        (ALPACA_INPUT + "### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3\n\n### Response:\n", False),
        ("5", True)]


def test_chatml_and_simple_conversations(gpt2, char):
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi."},
                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye."}]
    assert chat_prompt("chatml", messages, gpt2) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi.<|im_end|>\n<|im_start|>assistant\n"
        "Hello.<|im_end|><|endoftext|>\n<|im_start|>user\nBye.<|im_end|>\n<|im_start|>assistant\n")
    assert chat_prompt("simple", messages, char) == (
        "System:\nBe kind.\n\nUser:\nHi.\n\nAssistant:\nHello.\n\n\nUser:\nBye.\n\nAssistant:\n")
    assert chat_prompt("alpaca", messages[1:], gpt2) == (
        ALPACA + "### Instruction:\nHi.\n\n### Response:\nHello.<|endoftext|>### Instruction:\nBye.\n\n### Response:\n")
    assert prompt_text("chatml", "Sum.", "1 2") == (
        "<|im_start|>user\nSum.\n\n1 2<|im_end|>\n<|im_start|>assistant\n")
    assert prompt_text("simple", "Sum.", "1 2") == "User:\nSum.\n\n1 2\n\nAssistant:\n"
    with pytest.raises(TinyGPTError, match="chat: the conversation must end with a user message"):
        chat_prompt("simple", messages[:3], char)
    with pytest.raises(TinyGPTError, match="unknown template 'vicuna'; use one of: alpaca, chatml, simple"):
        prompt_text("vicuna", "x")


def test_simple_template_writes_only_letters_colons_and_newlines():
    own = set(TEMPLATES["simple"].own_text())
    assert own and all(c.isalpha() and c.isascii() or c in ":\n" for c in own)


def test_stop_strings(gpt2, char):
    assert stop_strings("alpaca", gpt2) == [] and stop_strings("simple", gpt2) == []
    assert stop_strings("chatml", gpt2) == ["<|im_end|>"]
    assert stop_strings("alpaca", char) == [END_WITHOUT_EOT] == ["\n\n\n"]
    assert stop_strings("chatml", char) == ["<|im_end|>", "\n\n\n"]


# ---------------------------------------------------------------------------- masks


@pytest.mark.parametrize("template", ["alpaca", "chatml", "simple"])
def test_gpt2_trains_exactly_the_response_and_end_of_text(gpt2, template):
    for example in read_examples(INSTRUCT):
        turn = example.turns[0]
        ids, trained = encode_example(example, gpt2, template)
        assert len(ids) == len(trained)
        close = "<|im_end|>" if template == "chatml" else ""
        assert gpt2.decode(split_by_flag(ids, trained, True)) == turn.assistant + close + "<|endoftext|>"
        assert gpt2.decode(split_by_flag(ids, trained, False)) == prompt_text(template, turn.user, turn.input)
        assert ids[-1] == gpt2.eot_id and trained[-1]
        first = trained.index(True)   # the prompt is one block, the response follows it to the end
        assert not any(trained[:first]) and all(trained[first:])


def test_char_trains_exactly_the_response_and_end_text(char):
    for example in read_examples(INSTRUCT):
        turn = example.turns[0]
        ids, trained = encode_example(example, char, "simple")
        assert char.decode(split_by_flag(ids, trained, True)) == turn.assistant + "\n\n\n"
        assert char.decode(split_by_flag(ids, trained, False)) == prompt_text("simple", turn.user, turn.input)
        assert char.decode(ids).endswith(turn.assistant + END_WITHOUT_EOT)


@pytest.mark.parametrize("template", ["chatml", "simple"])
def test_multi_turn_chat_trains_both_replies_and_nothing_else(gpt2, char, template):
    example = read_examples(CHAT)[0]
    for tok in (gpt2, char) if template == "simple" else (gpt2,):
        ids, trained = encode_example(example, tok, template)
        end = "<|endoftext|>" if tok is gpt2 else "\n\n\n"
        close = "<|im_end|>" if template == "chatml" else ""
        runs, current = [], []   # contiguous runs of trained tokens
        for i, t in zip(ids, trained):
            if t:
                current.append(i)
            elif current:
                runs.append(current)
                current = []
        runs.append(current)
        assert [tok.decode(r) for r in runs] == [f"Two and two is four.{close}{end}",
                                                 f"Four and four is eight.{close}{end}"]
        prompt = tok.decode(split_by_flag(ids, trained, False))
        assert "You are a kind tutor." in prompt and "What is two and two?" in prompt and "And four" in prompt
        assert "Two and two is four" not in prompt and "eight" not in prompt
        # What chat feeds the model before the second reply is exactly the training text before it.
        messages = [{"role": "system", "content": example.system}]
        for t in example.turns:
            messages += [{"role": "user", "content": t.user}, {"role": "assistant", "content": t.assistant}]
        assert tok.decode(ids[:ids.index(runs[1][0], len(runs[0]) + 1)]) == chat_prompt(template, messages[:-1], tok)


def test_encode_examples_matches_encode_example(gpt2, char):
    examples = read_examples(INSTRUCT) + read_examples(CHAT)
    assert encode_examples(examples, gpt2, "chatml") == [encode_example(e, gpt2, "chatml") for e in examples]
    assert encode_examples(examples, char, "simple") == [encode_example(e, char, "simple") for e in examples]


def test_unknown_characters_are_reported_at_once(char):
    examples = read_examples(INSTRUCT)
    with pytest.raises(TinyGPTError) as err:
        encode_examples(examples, char, "alpaca", source="data.jsonl")
    assert str(err.value) == (
        "the alpaca template's own text has 1 character ('#') that the base model's char tokenizer does not know; "
        "use --template simple (its own text is only letters, ':' and newlines), "
        "or fine-tune a base model with a BPE tokenizer such as gpt2")

    odd = [Example((Turn("caf\u00e9 1 2", "na\u00efve 3 4 5 6 7 8 9 0 !"),))] + examples
    with pytest.raises(TinyGPTError) as err:
        encode_examples(odd, char, "simple", source="data.jsonl")
    assert str(err.value) == (
        "data.jsonl has 13 characters ('\u00e9', '1', '2', '\u00ef', '3', '4', '5', '6', '7', '8' and 3 more) "
        "that the base model's char tokenizer does not know; remove them from the data, "
        "or fine-tune a base model with a BPE tokenizer such as gpt2")

    both = [Example((Turn("caf\u00e9 is 1", "ok"),))]
    with pytest.raises(TinyGPTError) as err:
        encode_examples(both, CharTokenizer("abcdefghijklmnopqrstuvwxyz :\n"), "alpaca", source="d.jsonl")
    assert str(err.value) == (
        "d.jsonl has 2 characters ('\u00e9', '1'), and the alpaca template's own text has 7 characters "
        "('B', '.', 'W', ',', '#', 'I', 'R') that the base model's char tokenizer does not know; "
        "remove them from the data, use --template simple (its own text is only letters, ':' and newlines), "
        "or fine-tune a base model with a BPE tokenizer such as gpt2")


# ---------------------------------------------------------------------------- batches


def synthetic(lengths, first_trained=None):
    """Example k has ids 1000 k + j, so every token says where it came from; tokens from
    ``first_trained[k]`` (default: the middle) on are trained."""
    out = []
    for k, n in enumerate(lengths):
        start = n // 2 if first_trained is None else first_trained[k]
        out.append(([1000 * k + j for j in range(n)], [j >= start for j in range(n)]))
    return out


def rows_of(batches, n_rows):
    """The next n_rows rows as (x, y, mask, pos) tuples of 1-d tensors."""
    rows = []
    while len(rows) < n_rows:
        b = batches.next_batch()
        rows += list(zip(b.x, b.y, b.loss_mask, b.input_pos))
    return rows[:n_rows]


def pieces(row):
    """Split a row into its examples' (x, y, mask) at each position 0; check the padding."""
    x, y, mask, pos = row
    real = pos >= 0
    n = int(real.sum())
    assert bool(real[:n].all()) and not bool(real[n:].any())   # padding only at the end
    assert bool((x[n:] == 0).all() and (y[n:] == IGNORE_INDEX).all() and (~mask[n:]).all() and (pos[n:] == -1).all())
    starts = torch.nonzero(pos[:n] == 0).flatten().tolist() + [n]
    out = []
    for a, b in zip(starts, starts[1:]):
        assert torch.equal(pos[a:b], torch.arange(b - a))   # positions restart at 0 per example
        out.append((x[a:b].tolist(), y[a:b].tolist(), mask[a:b].tolist()))
    return out


def test_packing_covers_every_pair_once_per_epoch():
    lengths = [5, 9, 3, 17, 2, 8, 8, 12, 4, 6, 17, 7]
    encoded = synthetic(lengths)
    stream = ExampleBatches(encoded, batch_size=1, block_size=16, seed=3)
    assert stream.n_truncated == 0 and stream.n_dropped == 0 and stream.n_examples == 12
    assert stream.pairs_per_epoch == sum(lengths) - 12
    rows = rows_of(stream, stream.rows_per_epoch)
    assert stream.row == stream.rows_per_epoch and stream.epoch == 0   # exactly one epoch drawn
    assert stream.tokens_per_epoch == stream.rows_per_epoch * 16
    seen = [p for row in rows for p in pieces(row)]
    assert max(len(pieces(row)) for row in rows) >= 3          # rows do hold several examples
    assert stream.rows_per_epoch < len(lengths)
    expected = sorted((ids[:-1], ids[1:], trained[1:]) for ids, trained in encoded)
    assert sorted(seen) == expected                            # every pair exactly once, mask from the target
    order = [p[0][0] // 1000 for p in seen]
    assert order != list(range(12))                            # shuffled
    # The next epoch is another order of the same examples.
    again = [p for row in rows_of(stream, stream.rows_per_epoch) for p in pieces(row)]
    assert stream.epoch == 1
    assert [p[0][0] // 1000 for p in again] != order and sorted(again)[:3] == expected[:3]


def test_rows_fill_batches_in_order_across_epochs():
    encoded = synthetic([5, 9, 3, 17, 2, 8, 8, 12, 4, 6])
    one = rows_of(ExampleBatches(encoded, 1, 16, seed=5), 20)   # about three epochs
    four = rows_of(ExampleBatches(encoded, 4, 16, seed=5), 20)
    for a, b in zip(one, four):
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_batch_shapes_and_types():
    batch = ExampleBatches(synthetic([5, 9, 3]), 2, 8, seed=0).next_batch()
    assert isinstance(batch, Batch)
    assert batch.x.shape == batch.y.shape == batch.loss_mask.shape == batch.input_pos.shape == (2, 8)
    assert batch.x.dtype == batch.y.dtype == batch.input_pos.dtype == torch.int64
    assert batch.loss_mask.dtype == torch.bool


def test_no_packing_one_example_per_row_in_order():
    lengths = [5, 9, 3, 17, 2]
    stream = ExampleBatches(synthetic(lengths), 5, 16, pack=False, shuffle=False, split="val")
    assert stream.rows_per_epoch == 5
    rows = rows_of(stream, 5)
    assert [len(pieces(r)) for r in rows] == [1] * 5
    assert [pieces(r)[0][0][0] // 1000 for r in rows] == [0, 1, 2, 3, 4]   # file order
    assert [int((r[3] >= 0).sum()) for r in rows] == [4, 8, 2, 16, 1]


def test_truncation_and_dropped_examples():
    # Example 1 is cut to 9 tokens; example 2's reply starts past the cut, so it trains nothing.
    encoded = synthetic([5, 20, 12, 6], first_trained=[2, 3, 10, 3])
    stream = ExampleBatches(encoded, 1, 8, pack=False, shuffle=False)
    assert stream.n_truncated == 2 and stream.n_dropped == 1 and stream.n_examples == 3
    rows = [pieces(r)[0] for r in rows_of(stream, 3)]
    assert rows[1][0] == list(range(1000, 1008)) and rows[1][1] == list(range(1001, 1009))
    assert [r[0][0] // 1000 for r in rows] == [0, 1, 3]
    with pytest.raises(TinyGPTError, match="the val split has no example with a response within --block-size 4"):
        ExampleBatches(synthetic([10], first_trained=[8]), 1, 4, split="val")


@pytest.mark.parametrize("pack", [True, False])
def test_state_dict_resumes_exactly(tmp_path, pack):
    encoded = synthetic([5, 9, 3, 17, 2, 8, 8, 12, 4, 6, 11])
    run = ExampleBatches(encoded, 3, 16, pack=pack, seed=7)
    for _ in range(4):
        run.next_batch()
    torch.save(run.state_dict(), tmp_path / "state.pt")
    expected = [run.next_batch() for _ in range(9)]   # crosses epoch boundaries
    assert run.epoch >= 2

    resumed = ExampleBatches(encoded, 3, 16, pack=pack, seed=0)   # the seed is overridden by the state
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    for want, got in zip(expected, (resumed.next_batch() for _ in range(9))):
        assert all(torch.equal(a, b) for a, b in zip(want, got))


def test_fixture_end_to_end_counts_every_response_token(gpt2):
    encoded = encode_examples(read_examples(INSTRUCT) + read_examples(CHAT), gpt2, "alpaca")
    stream = ExampleBatches(encoded, 4, 128, seed=1)
    assert stream.n_truncated == 0
    n_rows = stream.rows_per_epoch
    total = sum(int(b.n_targets()) for b in (stream.next_batch() for _ in range(-(-n_rows // 4))))
    overshoot = (-n_rows) % 4   # rows of the next epoch that filled the last batch
    extra = rows_of(ExampleBatches(encoded, 1, 128, seed=1), n_rows + overshoot)[n_rows:]
    assert total - sum(int(r[2].sum()) for r in extra) == sum(sum(t[1:]) for _, t in encoded)


# ---------------------------------------------------------------------------- split


def test_split_sizes():
    examples = read_examples(INSTRUCT)
    for fraction, n_val in [(0.0, 0), (0.01, 1), (0.1, 1), (0.3, 3), (0.5, 5)]:
        train, val = split_examples(examples, fraction, seed=0)
        assert len(val) == n_val and len(train) == 10 - n_val
        assert sorted(map(examples.index, train + val)) == list(range(10))
        assert [examples.index(e) for e in train] == sorted(examples.index(e) for e in train)   # file order
    one = examples[:1]
    assert split_examples(one, 0.3) == (one, [])
    with pytest.raises(TinyGPTError, match="leaves none to train on; use a smaller --val-fraction"):
        split_examples(examples[:2], 0.9)
    with pytest.raises(TinyGPTError, match="--val-fraction must be at least 0 and below 1"):
        split_examples(examples, 1.0)


def test_split_is_seeded():
    examples = read_examples(INSTRUCT)
    assert split_examples(examples, 0.3, seed=4) == split_examples(examples, 0.3, seed=4)
    held = {tuple(examples.index(e) for e in split_examples(examples, 0.3, seed=s)[1]) for s in range(5)}
    assert len(held) > 1


def test_the_template_is_the_given_one_else_the_fine_tunes_else_alpaca(gpt2):
    from tinygpt.data.instruct import DEFAULT_TEMPLATE, run_template

    tuned = {"finetune": {"template": "simple"}, "data": {"data": "qa.jsonl"}}
    assert run_template(tuned, "chatml") == "chatml"
    assert run_template(tuned) == run_template(tuned, tokenizer=gpt2) == "simple"
    assert run_template({"model": {}}) == run_template({"finetune": {}}) == DEFAULT_TEMPLATE == "alpaca"
    # merge keeps the fine-tune's record under "merged"; a fine-tune on plain text used no template
    assert run_template({"merged": {"finetune": {"template": "chatml"}}, "data": {"data": "qa.jsonl"}}) == "chatml"
    assert run_template({"finetune": {"template": "chatml"}, "data": {"data": "notes.txt"}}) == DEFAULT_TEMPLATE


def test_a_char_vocabulary_gets_a_template_it_can_write_or_a_refusal_naming_simple(char):
    from tinygpt.data.instruct import run_template

    assert run_template({"model": {}}, tokenizer=char) == "simple"  # alpaca's '#' is not in it
    for config, given, whose in (({"model": {}}, "alpaca", "--template alpaca"),
                                 ({"finetune": {"template": "chatml"}}, None, "the fine-tune's template chatml")):
        with pytest.raises(TinyGPTError, match=f"^{whose}'s own text has .*'[#<]'.*; use --template simple "
                                               r"\(its own text is only letters, ':' and newlines\)$"):
            run_template(config, given, char)
    lowercase = CharTokenizer("abcdefghijklmnopqrstuvwxyz \n.,")
    with pytest.raises(TinyGPTError, match=r"^the default template alpaca's .*'#'.* \(and --template simple needs "
                                           r"4 characters \('S', ':', 'U', 'A'\)\); instructions need a model"):
        run_template({"model": {}}, tokenizer=lowercase)
