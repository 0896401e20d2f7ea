"""Config dataclasses -> CLI flags, config files and JSON round-trips."""

import argparse
import dataclasses
import json

import pytest

from tinygpt.config import (
    Alias,
    add_arguments,
    add_command,
    cli_values,
    from_dict,
    iter_fields,
    layered,
    like,
    load_config_file,
    opt,
    parse_count,
    parse_duration,
    parse_ints,
    replace,
    section,
    sections_of,
    to_dict,
    unescape,
)
from tinygpt.device import RuntimeConfig
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPTConfig
from tinygpt.train import RunConfig


@pytest.mark.parametrize("text, seconds", [
    ("300", 300.0), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0), ("1h30m", 5400.0), ("1.5d", 129600.0),
    (" 2h 5m ", 7500.0), (None, None), ("none", None), (45, 45.0),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["6x", "h", "1h30", "-5m", "1 hour"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize("text, n", [("5000", 5000), ("50k", 50_000), ("2.5M", 2_500_000), ("1B", 10**9),
                                     ("20_000", 20_000), (None, None), (7, 7)])
def test_parse_count(text, n):
    assert parse_count(text) == n


def test_parse_ints_names_the_whole_value_and_the_form():
    assert parse_ints("0,1, 2") == (0, 1, 2) and parse_ints([1, 8]) == (1, 8)
    with pytest.raises(ValueError) as err:
        parse_ints("0,x")
    assert str(err.value) == "not whole numbers: '0,x' (use e.g. 1,8 or 0,1,2)"


def test_round_trip_through_json_is_exact():
    cfg = layered(RunConfig, {"model": {"n_layer": 3, "pos_emb": "rope"}, "train": {"max_time": "2h", "lr": 3e-4}})
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert again.train.max_time == 7200.0 and again.model.pos_emb == "rope"
    # Derived fields are recomputed, never stored.
    assert "padded_vocab_size" not in to_dict(cfg)["model"]


def test_flat_and_nested_values_are_equivalent():
    flat = layered(RunConfig, {"n_layer": 2, "lr": 0.01, "tokenizer": "gpt2"})
    nested = layered(RunConfig, {"model": {"n_layer": 2}, "train": {"lr": 0.01}, "data": {"tokenizer": "gpt2"}})
    assert flat == nested


def test_layers_apply_in_order():
    cfg = layered(RunConfig, {"n_layer": 2, "n_head": 2}, {"n_layer": 4}, {"lr": "0.5"})
    assert (cfg.model.n_layer, cfg.model.n_head, cfg.train.lr) == (4, 2, 0.5)


def test_replace_keeps_other_fields():
    cfg = layered(RunConfig, {"n_layer": 3, "max_steps": "10k"})
    new = replace(cfg, {"lr": 0.2})
    assert new.model.n_layer == 3 and new.train.max_steps == 10_000 and new.train.lr == 0.2


def test_escapes_in_stop_texts_are_read_once():
    from tinygpt.generation import GenerationConfig

    assert unescape(r"a\nb\t\r\\n\x41\u00e9\q\\") == "a\nb\t\r\\nA\u00e9\\q\\"
    cfg = layered(GenerationConfig, {"stop": r"\n\n"})  # what bash passes for --stop "\n\n"
    assert cfg.stop == ["\n\n"]
    literal = layered(GenerationConfig, {"stop": [r"\\n", "x"]})  # a backslash, then n
    assert literal.stop == ["\\n", "x"]
    again = replace(literal, {"max_new_tokens": 5})  # its own values are not read again
    assert again.stop == ["\\n", "x"] and again.max_new_tokens == 5 and again.stop is not literal.stop


def test_unknown_option_suggests_close_names():
    with pytest.raises(TinyGPTError, match=r"unknown option 'n_layers'.*--n-layer"):
        layered(RunConfig, {"n_layers": 3})


@pytest.mark.parametrize("values, match", [
    ({"n_layer": "three"}, "--n-layer"),
    ({"norm": "batchnorm"}, "unknown value 'batchnorm' for --norm; choose one of: layernorm, rmsnorm"),
    ({"compile": "maybe"}, "--compile"),
    ({"max_time": "soon"}, "--max-time"),
    ({"dtype": "int8"}, "--dtype"),
    ({"n_layer": 2.5}, "--n-layer"),
])
def test_bad_values_name_the_option(values, match):
    with pytest.raises(TinyGPTError, match=match) as e:
        layered(RunConfig, values)
    assert "\n" not in str(e.value)


def test_cli_flags_are_generated_from_fields():
    parser = argparse.ArgumentParser()
    add_arguments(parser, RunConfig)
    ns = parser.parse_args(["--n-layer", "3", "--max-time", "6h", "--compile", "--bias", "false", "--lr", "1e-3"])
    given = cli_values(RunConfig, ns)
    assert given == {"n_layer": "3", "max_time": "6h", "compile": "true", "bias": "false", "lr": "1e-3"}
    cfg = layered(RunConfig, given)
    assert (cfg.model.n_layer, cfg.train.max_time, cfg.train.compile, cfg.model.bias) == (3, 21600.0, True, False)


def test_a_tuple_default_is_shown_as_it_is_typed():
    from tinygpt.learn.micrograd import MicrogradConfig

    parser = argparse.ArgumentParser()
    add_arguments(parser, MicrogradConfig)
    assert "(default: 16,16)" in " ".join(parser.format_help().split())


def test_every_field_has_help():
    from tinygpt.config import iter_fields

    for leaf in iter_fields(RunConfig):
        assert leaf.field.metadata.get("help"), f"{'.'.join(leaf.path)} has no help text"


def test_yaml_and_json_config_files(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text("model:\n  n_layer: 3\nlr: 0.002\nmax_time: 10m\n")
    j = tmp_path / "run.json"
    j.write_text(json.dumps({"n_layer": 3, "train": {"lr": 0.002, "max_time": "10m"}}))
    assert layered(RunConfig, load_config_file(y)) == layered(RunConfig, load_config_file(j))


@pytest.mark.parametrize("content, match", [("model: [unclosed", "cannot parse config file"),
                                            ("- a\n- b\n", "must hold a mapping")])
def test_bad_config_files(tmp_path, content, match):
    p = tmp_path / "bad.yaml"
    p.write_text(content)
    with pytest.raises(TinyGPTError, match=match):
        load_config_file(p)
    with pytest.raises(TinyGPTError, match="config file not found"):
        load_config_file(tmp_path / "missing.yaml")


def test_model_config_direct_construction_validates():
    with pytest.raises(TinyGPTError, match="--mlp"):
        GPTConfig(mlp="relu")


def test_a_section_sets_its_own_defaults_for_a_shared_config():
    """RuntimeConfig is declared once; a run seeds with 1337 and the sample command samples in fp32."""
    from tinygpt.cli.sample import SampleCommand
    from tinygpt.config import iter_fields

    assert RuntimeConfig().seed is None and RuntimeConfig().dtype == "auto"
    run, sample = layered(RunConfig), layered(SampleCommand)
    assert (run.runtime.seed, run.runtime.dtype) == (1337, "auto")
    assert (sample.runtime.seed, sample.runtime.dtype) == (None, "fp32")
    assert layered(SampleCommand, {"dtype": "bf16"}).runtime.dtype == "bf16"  # a given value still wins
    defaults = {leaf.path: leaf.default for leaf in iter_fields(SampleCommand)}
    assert defaults[("runtime", "dtype")] == "fp32" and defaults[("runtime", "device")] == "auto"
    parser = argparse.ArgumentParser()
    add_arguments(parser, SampleCommand)
    dtype_help = next(a.help for a in parser._actions if "--dtype" in a.option_strings)
    assert dtype_help.endswith("(default: fp32)")
    with pytest.raises(TypeError, match="no field"):
        from tinygpt.config import section

        section(RuntimeConfig, colour="red")


# ---------------------------------------------------------------------------- commands from sections

@dataclasses.dataclass
class _Source:
    model: str = opt("", "the model", positional=True, metavar="MODEL")
    checkpoint: str = opt("best", "which weights")


@dataclasses.dataclass
class _Options:
    models: list[str] = like(_Source, "model", [])
    maybe: str | None = like(_Source, "model", None)
    steps: int = opt(5, "steps to take", aliases=("--n-steps", Alias("--quick", const="1")))
    names: list[str] = opt([], "a name", aliases=("--name-old",))
    pair: list[str] = opt([], "two things", nargs=2, metavar=("A", "B"), required=True)
    level: str = opt("low", "how much", choices=("low", "high"), aliases=(Alias("--levels", convert=lambda v: "high"),))


@dataclasses.dataclass
class _Command:
    source: _Source = section(_Source, only=("checkpoint",), shown={"checkpoint": "the best weights"})
    options: _Options = dataclasses.field(default_factory=_Options)


def _parse(cls, argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser, cls)
    return parser, parser.parse_args(argv)


def test_like_takes_one_declaration_into_another_config_with_its_own_default():
    fields = {f.name: f for f in dataclasses.fields(_Options)}
    for name in ("models", "maybe"):
        assert fields[name].metadata["help"] == "the model" and fields[name].metadata["positional"]
    assert _Options(pair=["a", "b"]).models == [] and _Options(pair=["a", "b"]).maybe is None
    with pytest.raises(TypeError, match="no field 'colour'"):
        like(_Source, "colour")


def test_a_section_can_take_some_of_its_fields_and_say_what_a_default_means():
    parser, ns = _parse(_Command, ["m1", "m2", "--pair", "a", "b"])
    flags = {s for a in parser._actions for s in a.option_strings}
    assert "--checkpoint" in flags and "--model" not in flags  # only=: the section's model is not an option here
    assert next(a.help for a in parser._actions if "--checkpoint" in a.option_strings) == \
        "which weights (default: the best weights)"
    cmd = from_dict(_Command, cli_values(_Command, ns))
    assert cmd.options.models == ["m1", "m2"] and cmd.source.checkpoint == "best" and cmd.source.model == ""
    with pytest.raises(TinyGPTError, match="unknown option 'model'"):
        from_dict(_Command, {"model": "x", "pair": ["a", "b"]})  # nor from a file or dict
    with pytest.raises(TypeError, match="no field"):
        section(_Source, only=("colour",))


def test_positionals_take_their_count_from_the_type():
    parser, _ = _parse(_Options, ["m", "--pair", "a", "b"])
    nargs = {a.dest: a.nargs for a in parser._actions if not a.option_strings}
    assert nargs == {"models": "+", "maybe": "?"}
    assert _parse(_Source, ["m"])[1].model == "m"
    with pytest.raises(SystemExit):  # a plain str positional is required
        _parse(_Source, [])


def test_a_required_flag_with_a_count_of_values(capsys):
    _, ns = _parse(_Options, ["m", "--pair", "a", "b"])
    assert ns.pair == ["a", "b"]
    with pytest.raises(SystemExit):
        _parse(_Options, ["m"])
    assert "the following arguments are required: --pair" in capsys.readouterr().err


def test_old_spellings_parse_into_the_new_field_hidden_with_one_warning(capsys):
    parser, ns = _parse(_Options, ["m", "--pair", "a", "b", "--n-steps", "7", "--name-old", "x", "--names", "y",
                                   "--levels", "anything"])
    assert (ns.steps, ns.names, ns.level) == ("7", ["x", "y"], "high")
    assert capsys.readouterr().err.splitlines() == ["warning: --n-steps is deprecated; use --steps",
                                                    "warning: --name-old is deprecated; use --names",
                                                    "warning: --levels is deprecated; use --level"]
    assert _parse(_Options, ["m", "--pair", "a", "b", "--quick"])[1].steps == "1"  # a switch standing for a value
    help_text = parser.format_help()
    assert "--n-steps" not in help_text and "--quick" not in help_text and "--levels" not in help_text


def test_add_command_hands_run_the_parsed_command():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    got = []
    add_command(sub, "go", _Options, lambda cmd: got.append(cmd) or 0)
    ns = parser.parse_args(["go", "m", "--pair", "a", "b", "--steps", "9"])
    assert ns.func(ns) == 0 and (ns.command, ns.command_class) == ("go", _Options)
    assert got == [_Options(models=["m"], pair=["a", "b"], steps=9)]


def test_an_old_name_still_reads_as_a_key_and_the_new_name_wins():
    # config.json of runs recorded before a rename, and old config files.
    assert from_dict(_Options, {"n_steps": 7, "pair": ["a", "b"]}).steps == 7
    assert from_dict(_Options, {"n_steps": 7, "steps": 3, "pair": ["a", "b"]}).steps == 3
    assert from_dict(_Options, {"steps": 3, "n-steps": 7, "pair": ["a", "b"]}).steps == 3
    assert layered(RunConfig, {"train": {"sample_tokens": 0}}).train.max_new_tokens == 0
    with pytest.raises(TinyGPTError, match="unknown option 'quick'"):  # a switch's spelling is no key
        from_dict(_Options, {"quick": 1, "pair": ["a", "b"]})


@dataclasses.dataclass
class _Layered:
    width: int = opt(8, "width")
    heads: int = opt(2, "heads")

    def __post_init__(self):
        if self.width % self.heads:
            raise TinyGPTError("heads must divide width")


@dataclasses.dataclass
class _Settings:
    shape: _Layered = section(_Layered, width=12)
    other: _Source = dataclasses.field(default_factory=_Source)


def test_sections_of_and_a_given_layer():
    Cmd = dataclasses.make_dataclass("Cmd", [("extra", _Source, section(_Source, only=("checkpoint",))),
                                             *sections_of(_Settings, leave=("checkpoint",))])
    assert [leaf.path for leaf in iter_fields(Cmd)] == [("extra", "checkpoint"), ("shape", "width"),
                                                        ("shape", "heads"), ("other", "model")]
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    got = []
    add_command(sub, "go", Cmd, lambda cmd, given: got.append((cmd, given)) or 0, given=_Settings)
    assert "(default: 12)" in sub.choices["go"].format_help()  # the section's own default
    # --heads 5 alone fails over the section's width 12: the settings are not built from the
    # flags here but handed on as given, to be laid over what they belong on.
    ns = parser.parse_args(["go", "m", "--heads", "5", "--checkpoint", "last"])
    assert ns.func(ns) == 0
    cmd, given = got[0]
    assert given == {"heads": "5", "model": "m"}  # not --checkpoint: extra's, though other has one too
    assert cmd.extra.checkpoint == "last" and cmd.shape == _Layered(12, 2) and cmd.other.model == ""
