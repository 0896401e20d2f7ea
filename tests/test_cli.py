"""Every subcommand's parser, walked: one name, one meaning; every command generated from its
sections; the model source and runtime options wherever a model is loaded; old spellings of
renamed flags still read, each with one deprecation line."""

import argparse
import re

import pytest
import torch

from tinygpt.cli import build_parser, main
from tinygpt.config import flag_name, iter_fields

# Commands that load a model but cannot take --device/--dtype yet: merge's library function,
# finetune.merge.merge_run, opens the LoRA fine-tune on the CPU in fp32 and takes neither.
PENDING_RUNTIME = {"merge"}
# Every command that loads a model (a MODEL argument, or models to compare).
LOADS_A_MODEL = {"sample", "chat", "eval", "export", "attention", "diagnose", "merge", "finetune"}


def commands(parser=None, path=()):
    """(name, parser) of every leaf subcommand: 'bench generate', 'learn bpe', ..."""
    parser = parser or build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = list(commands(sub, path + (name,)))
                yield from nested or [(" ".join(path + (name,)), sub)]


ALL = dict(commands())
WALKED = ALL


def declarations(name):
    """flag -> what it means in command ``name``: help, type, choices, parser, count, metavar."""
    out = {}
    for leaf in iter_fields(ALL[name].get_default("command_class")):
        m = leaf.field.metadata
        base = leaf.type
        # X | None is X that may be left unset; a positional list is several of one kind.
        args = [a for a in getattr(base, "__args__", ()) if a is not type(None)]
        if len(args) == 1 and type(None) in getattr(base, "__args__", ()):
            base = args[0]
        if m.get("positional") and getattr(base, "__origin__", None) is list:
            base = base.__args__[0]
        out[flag_name(leaf.field)] = (m.get("help"), base, m.get("choices"), m.get("parse"), m.get("nargs"),
                                      m.get("metavar"), bool(m.get("positional")))
    return out


def test_the_walk_finds_every_command():
    assert {"sample", "chat", "eval", "export", "merge", "attention", "plot", "diagnose", "makemore", "lm-eval",
            "bench generate", "bench train", "learn micrograd", "learn bpe", "train", "finetune", "prepare", "serve",
            "arena report", "bench serve", "quantize", "bench compress", "prune", "scaling"} == set(ALL)


@pytest.mark.parametrize("name", sorted(WALKED))
def test_every_option_is_generated_from_the_commands_sections(name):
    parser = WALKED[name]
    cls = parser.get_default("command_class")
    assert cls is not None, f"{name} builds its parser by hand; declare it with config.add_command"
    fields = {leaf.field.name for leaf in iter_fields(cls)}
    for action in parser._actions:
        if not isinstance(action, argparse._HelpAction):
            assert action.dest in fields, f"{name}: {action.option_strings or action.dest} is not a declared field"


def test_one_name_has_one_meaning_in_every_command():
    seen: dict[str, tuple] = {}
    where: dict[str, str] = {}
    shared = set()
    for name in sorted(WALKED):
        for flag, meaning in declarations(name).items():
            if flag in seen:
                shared.add(flag)
                assert meaning == seen[flag], f"{flag} means one thing in {where[flag]} and another in {name}"
            seen.setdefault(flag, meaning)
            where.setdefault(flag, name)
    # The options the issue found spelled or meant differently now share one declaration.
    assert {"--max-new-tokens", "--prompt-tokens", "--seed", "--device", "--dtype", "--checkpoint", "--out",
            "--force", "--json", "--show", "--threads", "--batch-size", "--data", "--max-steps", "--num-samples",
            "MODEL"} <= shared


def test_the_default_may_differ_and_help_says_which():
    helps = {}
    for name in ("sample", "eval", "attention", "makemore"):
        action = next(a for a in WALKED[name]._actions if "--seed" in a.option_strings)
        helps[name] = action.help
    assert helps["sample"].endswith("(default: None)") and helps["eval"].endswith("(default: 0)")
    assert helps["makemore"].endswith("(default: 42)")
    assert len({re.sub(r" \(default: .*\)$", "", h) for h in helps.values()}) == 1


@pytest.mark.parametrize("name", sorted(LOADS_A_MODEL))
def test_every_command_that_loads_a_model_takes_device_dtype_and_checkpoint(name):
    flags = set(declarations(name))
    assert {"MODEL", "--checkpoint"} <= flags
    if name in PENDING_RUNTIME:
        assert not {"--device", "--dtype"} & flags  # when this fails, it got them: drop it from PENDING_RUNTIME
    else:
        assert {"--device", "--dtype", "--threads"} <= flags


def required_args(parser):
    """The least a command line must give for ``parser`` to parse."""
    argv = []
    for a in parser._actions:
        if a.option_strings and a.required:
            argv += [a.option_strings[0], *["x"] * (a.nargs if isinstance(a.nargs, int) else 1)]
        elif not a.option_strings and a.nargs != "?" and not isinstance(a, argparse._SubParsersAction):
            argv.append("x")
    return argv


OLD_SPELLINGS = [(name, alias, leaf)
                 for name, parser in sorted(WALKED.items())
                 for leaf in iter_fields(parser.get_default("command_class"))
                 for alias in leaf.field.metadata.get("aliases", ())]


def test_the_renamed_flags_keep_their_old_spellings():
    found = {(name, alias.flag) for name, alias, _ in OLD_SPELLINGS}
    assert {("eval", "--new-tokens"), ("bench generate", "--new-tokens"), ("bench generate", "--prompt"),
            ("bench generate", "--batches"), ("bench train", "--dtypes"), ("bench train", "--no-reference"),
            ("attention", "--top-k"), ("makemore", "--samples"), ("makemore", "--steps"),
            ("learn micrograd", "--steps"), ("train", "--sample-tokens"), ("finetune", "--sample-tokens"),
            ("finetune", "--prompt-tokens"), ("finetune", "--prompt-init")} <= found


@pytest.mark.parametrize("name, alias, leaf", OLD_SPELLINGS,
                         ids=[f"{name}:{alias.flag}" for name, alias, _ in OLD_SPELLINGS])
def test_an_old_spelling_parses_into_the_new_flag_with_one_deprecation_line(name, alias, leaf, capsys):
    parser = WALKED[name]
    new = flag_name(leaf.field)
    value = [] if alias.const is not None else ["3"]
    ns = parser.parse_args([*required_args(parser), alias.flag, *value])
    expected = alias.const if alias.const is not None else "3"
    if alias.convert is not None:
        expected = alias.convert(expected)
    given = getattr(ns, leaf.field.name)
    assert (given[-1] if isinstance(given, list) else given) == expected
    err = capsys.readouterr().err
    assert err == f"warning: {alias.flag} is deprecated; use {new}\n"
    assert not re.search(re.escape(alias.flag) + r"(?![\w-])", parser.format_help())  # hidden


def test_bench_trains_old_dtype_list_means_every_format_side_by_side():
    parser = WALKED["bench train"]
    assert parser.parse_args(["--dtypes", "fp32,bf16"]).dtype == "auto"
    assert parser.parse_args(["--dtypes", "bf16"]).dtype == "bf16"
    assert parser.parse_args(["--no-reference"]).reference == "false"


def test_threads_are_applied_as_a_command_starts(tiny_run, capsys):
    before = torch.get_num_threads()
    try:
        assert main(["sample", str(tiny_run), "--max-new-tokens", "1", "--threads", "2"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert main(["sample", str(tiny_run), "--threads", "0"]) == 1
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_version_is_the_package_version(capsys):
    import tinygpt

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"tinygpt {tinygpt.__version__}\n"


def test_the_data_help_names_every_built_in_corpus():
    from tinygpt.data.corpora import BUILTIN_CORPORA

    helps = {a.help for name in ("train", "eval", "makemore") for a in ALL[name]._actions
             if "--data" in a.option_strings}
    assert helps and all(all(corpus in h for corpus in BUILTIN_CORPORA) for h in helps)
