"""Typed dataclass configs: the single source of truth for every option.

Each component (model, data, training, sampling) owns a ``@dataclass`` whose fields
are declared with :func:`opt`, which carries the help text and allowed values. From
those declarations this module derives everything else, so nothing is written twice:

* the command line: every leaf field becomes a ``--kebab-case`` flag or a positional
  argument (:func:`add_arguments`), nested configs are flattened, so names must be unique.
  A command is one dataclass composed of shared sections (:func:`section`, taking all of
  a section or ``only`` some of its fields) and single shared declarations (:func:`like`),
  so an option is declared once and means the same in every command (:func:`add_command`);
  a renamed flag keeps its old spelling as a hidden :class:`Alias`;
* config files: YAML or JSON, either flat (``lr: 3e-4``) or nested by section
  (``train: {lr: 3e-4}``) (:func:`load_config_file`);
* JSON round-trips for checkpoints (:func:`to_dict`, :func:`from_dict`).

Precedence is dataclass default < preset < config file < command-line flag.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import TinyGPTError


class Alias(typing.NamedTuple):
    """An old spelling of a flag, still read (hidden from --help) with one deprecation line.

    ``convert`` turns the old flag's value into the new one's; ``const`` makes it a switch
    that takes no value and stands for that value (``--no-reference`` -> ``--reference false``)."""
    flag: str
    convert: Callable[[str], str] | None = None
    const: str | None = None


def opt(default: Any, help: str, *, choices: tuple | None = None, parse: Callable[[str], Any] | None = None,
        positional: bool = False, metavar: str | tuple[str, ...] | None = None, nargs: int | None = None,
        aliases: tuple[str | Alias, ...] = (), shown: str | None = None, required: bool = False):
    """Declare a config field with its help text (and optionally allowed values / a parser).

    ``parse`` turns a command-line or config-file string into the field's value
    (e.g. ``"6h"`` -> 21600.0 seconds); it must raise ``ValueError`` on bad input.
    On the command line the field is a ``--flag``, or with ``positional`` an argument
    (one value; ``X | None``: may be left out; ``list[X]``: one or more; ``list[X] | None``: any). ``nargs`` makes
    a flag take that many values (a list); ``required`` makes a flag one the command line must
    give; ``aliases`` are its old spellings; ``shown`` says in help what the default means
    where the value alone would not (a None worked out later).
    """
    meta = {"help": help, "choices": choices, "parse": parse, "positional": positional, "metavar": metavar,
            "nargs": nargs, "aliases": _aliases(aliases), "shown": shown, "required": required}
    return _field(default, meta)


def _aliases(aliases: tuple[str | Alias, ...]) -> tuple[Alias, ...]:
    return tuple(a if isinstance(a, Alias) else Alias(a) for a in aliases)


def _field(default: Any, meta: dict) -> dataclasses.Field:
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def like(cls: type, name: str, default: Any = dataclasses.MISSING, *, shown: str | None = None,
         aliases: tuple[str | Alias, ...] = ()):
    """The field ``name`` of ``cls`` declared in another config: the same flag, help, choices
    and parser (one declaration, one meaning), with this context's ``default`` (``shown``:
    how help describes it, where a value alone would not say, e.g. a None the command works
    out) and this context's old spellings (``aliases``)."""
    f = {f.name: f for f in dataclasses.fields(cls)}.get(name)
    if f is None:
        raise TypeError(f"{cls.__name__} has no field {name!r}")
    if default is dataclasses.MISSING:
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return _field(default, {**f.metadata, "shown": shown, "aliases": _aliases(aliases)})


def section(cls: type, *, only: tuple[str, ...] | None = None, shown: dict[str, str] | None = None,
            **defaults: Any):
    """A nested config of type ``cls`` whose defaults differ from ``cls``'s own in this context.

    This is how an option is declared once and shared: e.g. ``RuntimeConfig.seed`` defaults
    to None (fresh randomness), and a training run declares ``section(RuntimeConfig, seed=1337)``.
    ``only`` takes just those fields as options here (the others keep their defaults);
    ``shown`` describes a default in help where the value alone would not say it.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = (set(defaults) | set(only or ()) | set(shown or {})) - names
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
    return dataclasses.field(default_factory=lambda: cls(**defaults),
                             metadata={"defaults": defaults, "only": only, "shown": shown or {}})


def sections_of(cls: type, *, leave: tuple[str, ...] = ()) -> list[tuple[str, type, dataclasses.Field]]:
    """The sections of ``cls`` (a config made of sections) as fields for a command's dataclass
    (``dataclasses.make_dataclass``): the same options and defaults, less the options named in
    ``leave``. A command built from them cannot drift from the config it feeds."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp, m = hints[f.name], f.metadata
        names = tuple(g.name for g in dataclasses.fields(tp) if g.init and g.name not in leave
                      and (m.get("only") is None or g.name in m["only"]))
        out.append((f.name, tp, section(tp, only=names, shown=m.get("shown"), **m.get("defaults", {}))))
    return out


# ---------------------------------------------------------------------------- value parsers

_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | float | int | None) -> float | None:
    """'90' / '90s' / '15m' / '6h' / '1h30m' / '1.5d' -> seconds; None / '' / 'none' -> None."""
    if text is None or isinstance(text, (int, float)):
        return None if text is None else float(text)
    text = text.strip().lower()
    if text in ("", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 300, 90s, 15m, 6h or 1h30m)")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


_COUNT_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_count(text: str | int | None) -> int | None:
    """'5000' / '50k' / '2.5M' / '1B' -> int; None / 'none' -> None."""
    if text is None or isinstance(text, int):
        return text
    if isinstance(text, float):
        return int(text)
    text = text.strip().lower().replace("_", "")
    if text in ("", "none"):
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmbgt]?)", text)
    if not m:
        raise ValueError(f"not a count: {text!r} (use e.g. 5000, 50k, 2.5M)")
    return int(float(m.group(1)) * _COUNT_SUFFIX.get(m.group(2), 1))


def parse_ints(text: str | list | tuple) -> tuple[int, ...]:
    """``"1,8"`` (or ``[1, 8]``) -> ``(1, 8)``."""
    parts = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        return tuple(int(p) for p in parts if str(p).strip())
    except (TypeError, ValueError):  # int()'s own message would quote only the bad part
        raise ValueError(f"not whole numbers: {text!r} (use e.g. 1,8 or 0,1,2)") from None


def parse_names(text: str | list | tuple) -> tuple[str, ...]:
    """``"a,b"`` (or ``["a", "b"]``) -> ``("a", "b")``."""
    parts = text if isinstance(text, (list, tuple)) else str(text).split(",")
    return tuple(str(p).strip() for p in parts if str(p).strip())


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|.)", re.DOTALL)


def unescape(text: str) -> str:
    """Backslash escapes read as a shell cannot type them: ``\\n``, ``\\t``, ``\\r``, ``\\\\``,
    ``\\xhh`` and ``\\uXXXX``; any other backslash stays as it is (as in Python)."""
    def one(m: re.Match) -> str:
        code = m.group(1)
        if code[0] in "xu" and len(code) > 1:
            return chr(int(code[1:], 16))
        return _ESCAPES.get(code, m.group(0))
    return _ESCAPE.sub(one, text)


def parse_escaped(text: str | list | tuple | None) -> list[str]:
    """One text or a list of them (None: none), each with its escapes read (:func:`unescape`)."""
    texts = [] if text is None else text if isinstance(text, (list, tuple)) else [text]
    return [unescape(str(t)) for t in texts]


def _parse_bool(text: str) -> bool:
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on", "y"):
        return True
    if t in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(f"not a boolean: {text!r} (use true or false)")


# ---------------------------------------------------------------------------- field walking

def _is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _leaf_type(tp: Any) -> tuple[Any, bool]:
    """Strip ``Optional[X]`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


class Leaf(typing.NamedTuple):
    path: tuple[str, ...]       # section names, then the field name
    field: dataclasses.Field
    type: Any                   # the resolved annotation
    default: Any                # in this context (a section may override the class default)
    shown: str | None = None    # how help describes the default, where the context says


def iter_fields(cls: type, prefix: tuple[str, ...] = (), defaults: dict | None = None,
                only: tuple[str, ...] | None = None, shown: dict | None = None) -> Iterator[Leaf]:
    """Yield every leaf field of ``cls`` that is an option here, depth first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or (only is not None and f.name not in only):
            continue
        tp = hints[f.name]
        if _is_config(tp):
            m = f.metadata
            yield from iter_fields(tp, prefix + (f.name,), m.get("defaults", {}), m.get("only"), m.get("shown"))
            continue
        if defaults and f.name in defaults:
            default = defaults[f.name]
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        yield Leaf(prefix + (f.name,), f, tp, default, (shown or {}).get(f.name) or f.metadata.get("shown"))


def convert(f: dataclasses.Field, tp: Any, value: Any) -> Any:
    """Coerce a raw value (string from the CLI, or YAML/JSON scalar) to the field's type."""
    name = flag_name(f)
    base, optional = _leaf_type(tp)
    parse = f.metadata.get("parse")
    try:
        if value is None or (optional and isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            if not optional and parse is None:
                raise ValueError("a value is required")
            out = parse(value) if parse is not None else None
        elif parse is not None:
            out = parse(value)
        elif base is bool:
            out = value if isinstance(value, bool) else _parse_bool(value)
        elif base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(f"not an integer: {value!r}")
            out = int(value) if not isinstance(value, str) else int(value.replace("_", ""))
        elif base is float:
            out = float(value)
        elif base is str:
            out = str(value)
        elif typing.get_origin(base) is list:  # a repeatable flag, or a list in a config file
            items = value if isinstance(value, (list, tuple)) else [value]
            if typing.get_args(base) == (int,):  # per-block widths
                if any(isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()) for v in items):
                    raise ValueError(f"not whole numbers: {value!r}")
                out = [int(v) for v in items]
            else:
                out = [str(v) for v in items]
        else:
            out = value
    except (TypeError, ValueError) as e:
        raise TinyGPTError(f"bad value {value!r} for {name}: {e}") from None
    if out is not None:
        _check_choice(f, out)
    return out


def _check_choice(f: dataclasses.Field, value: Any) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise TinyGPTError(f"unknown value {value!r} for {flag_name(f)}; "
                           f"choose one of: {', '.join(map(str, choices))}")


# ---------------------------------------------------------------------------- dict round-trips

def to_dict(cfg: Any) -> dict:
    """Nested plain-JSON dict of a config's settable fields (derived fields are recomputed on load)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.init:
            v = getattr(cfg, f.name)
            out[f.name] = to_dict(v) if dataclasses.is_dataclass(v) else json.loads(json.dumps(v))
    return out


def flatten_values(cls: type, values: dict, *, strict: bool = True) -> dict[tuple[str, ...], Any]:
    """Map flat or nested ``values`` onto the leaf paths of ``cls``, converted to their types.

    Unknown keys raise (with a did-you-mean hint) unless ``strict`` is False.
    """
    leaves = {leaf.path[-1]: leaf for leaf in iter_fields(cls)}
    sections = {leaf.path[0] for leaf in leaves.values() if len(leaf.path) > 1}
    # A renamed option's old name still reads as a key (config.json of earlier runs, old
    # config files); where both are given the new name wins.
    renamed = {a.flag.lstrip("-").replace("-", "_"): leaf for leaf in leaves.values()
               for a in leaf.field.metadata.get("aliases", ()) if a.convert is None and a.const is None}
    out: dict[tuple[str, ...], Any] = {}
    old: dict[tuple[str, ...], Any] = {}

    def walk(vals: dict, where: str) -> None:
        for key, raw in vals.items():
            k = str(key).replace("-", "_")
            if k in sections and isinstance(raw, dict):
                walk(raw, k)
            elif k in leaves or k in renamed:
                leaf = leaves[k] if k in leaves else renamed[k]
                (out if k in leaves else old)[leaf.path] = convert(leaf.field, leaf.type, raw)
            elif strict:
                near = [n.replace("_", "-") for n in leaves if n.startswith(k[:3])][:3]
                hint = f" (did you mean {', '.join('--' + n for n in near)}?)" if near else ""
                where_s = f" in section {where!r}" if where else ""
                raise TinyGPTError(f"unknown option {key!r}{where_s}{hint}; see --help for the options")

    walk(values, "")
    return {**old, **out}


def _build(cls: type, leaves: dict[tuple[str, ...], Any], prefix: tuple[str, ...] = (),
           defaults: dict | None = None) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = dict(defaults or {})
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = prefix + (f.name,)
        if _is_config(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], leaves, path, f.metadata.get("defaults"))
        elif path in leaves:
            kwargs[f.name] = leaves[path]
    return cls(**kwargs)


def from_dict(cls: type, values: dict, *, strict: bool = True) -> Any:
    """Build ``cls`` from a nested or flat dict (missing fields keep their defaults)."""
    return _build(cls, flatten_values(cls, values, strict=strict))


def layered(cls: type, *layers: dict, leave: tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from flat or nested dicts, each laid over the ones before it
    (e.g. preset, then config file, then command-line flags). The sections named in
    ``leave`` keep their defaults (their values are still read, so a bad one is refused)."""
    leaves: dict[tuple[str, ...], Any] = {}
    for layer in layers:
        leaves.update(flatten_values(cls, layer))
    return _build(cls, {path: v for path, v in leaves.items() if path[0] not in leave})


def replace(cfg: Any, values: dict) -> Any:
    """A copy of ``cfg`` with flat or nested ``values`` laid on top, validated again."""
    cls = type(cfg)
    # The copy's own values are already typed: parsed again, an escape already read would be
    # read twice ('\\\\n' -> '\\n' -> a newline).
    leaves = {leaf.path: copy.deepcopy(_value_at(cfg, leaf.path)) for leaf in iter_fields(cls)}
    leaves.update(flatten_values(cls, values))
    return _build(cls, leaves)


def _value_at(cfg: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        cfg = getattr(cfg, name)
    return cfg


# ---------------------------------------------------------------------------- files and CLI

def load_config_file(path: str | Path) -> dict:
    """Read a YAML or JSON config file into a dict (flat or nested by section)."""
    p = Path(path)
    if not p.is_file():
        raise TinyGPTError(f"config file not found: {p}; check the path given to --config")
    text = p.read_text(encoding="utf-8")
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError / json.JSONDecodeError carry positions
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TinyGPTError(f"cannot parse config file {p}: {first}; fix the syntax (YAML or JSON)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TinyGPTError(f"config file {p} must hold a mapping of option: value, not {type(data).__name__}")
    return data


def flag_name(f: dataclasses.Field) -> str:
    """How a field is spelled on the command line: ``--kebab-case``, or a positional's METAVAR."""
    if f.metadata.get("positional"):
        return f.metadata.get("metavar") or f.name.upper()
    return "--" + f.name.replace("_", "-")


class _Deprecated(argparse.Action):
    """An old spelling of a flag: says so on stderr in one line, then sets the new flag's value."""

    def __init__(self, option_strings, dest, *, new: str, alias: Alias, append: bool, **kwargs):
        nargs = kwargs.pop("nargs", None)
        super().__init__(option_strings, dest, nargs=0 if alias.const is not None else nargs,
                         help=argparse.SUPPRESS, **kwargs)
        self.new, self.alias, self.append = new, alias, append

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"warning: {option_string} is deprecated; use {self.new}", file=sys.stderr, flush=True)
        value = self.alias.const if self.alias.const is not None else values
        if self.alias.convert is not None:
            value = self.alias.convert(value)
        if self.append:
            value = (getattr(namespace, self.dest) or []) + [value]
        setattr(namespace, self.dest, value)


def add_arguments(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` (or positional argument) per leaf field of ``cls``, and its hidden
    old spellings (defaults stay ``None`` = 'not given')."""
    seen: set[str] = set()
    for leaf in iter_fields(cls):
        f, name = leaf.field, leaf.field.name
        if name in skip:
            continue
        if name in seen:
            raise RuntimeError(f"duplicate config field name {name!r}: CLI flags must be unique")
        seen.add(name)
        base, optional = _leaf_type(leaf.type)
        meta = f.metadata
        choices = meta.get("choices")
        help_text = meta.get("help", "")
        if choices:
            help_text += f" [{'|'.join(map(str, choices))}]"
        listed = typing.get_origin(base) is list
        if meta.get("positional"):
            nargs = ("*" if optional else "+") if listed else "?" if optional else None
            parser.add_argument(name, metavar=flag_name(f), nargs=nargs,
                                default=None, help=help_text)
            continue
        kwargs: dict[str, Any] = {"required": bool(meta.get("required"))}
        if not kwargs["required"]:
            help_text += f" (default: {_shown(leaf)})"
        flag, metavar = flag_name(f), meta.get("metavar") or name.upper()
        if base is bool:
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif meta.get("nargs"):
            kwargs.update(nargs=meta["nargs"], metavar=metavar)
        elif listed:
            kwargs.update(action="append", metavar=metavar)
            help_text += "; repeat the flag for more"
        else:
            kwargs.update(metavar=metavar)
        parser.add_argument(flag, dest=name, default=None, help=help_text, **kwargs)
        for alias in meta.get("aliases", ()):
            parser.add_argument(alias.flag, dest=name, default=None, action=_Deprecated, new=flag, alias=alias,
                                append=listed and not meta.get("nargs"),
                                **{k: v for k, v in kwargs.items() if k in ("nargs", "const")})


def _shown(leaf: Leaf) -> Any:
    if leaf.shown is not None:
        return leaf.shown
    # A tuple is shown the way it is typed on the command line: 16,16, not (16, 16).
    return ",".join(map(str, leaf.default)) if isinstance(leaf.default, tuple) else leaf.default


def cli_values(cls: type, ns: argparse.Namespace) -> dict:
    """The flags the user actually gave, as a flat dict of raw strings."""
    return {leaf.field.name: getattr(ns, leaf.field.name) for leaf in iter_fields(cls)
            if getattr(ns, leaf.field.name, None) is not None}


def parse_command(cls: type, ns: argparse.Namespace, *, leave: set[str] = frozenset()) -> Any:
    """The command's config ``cls`` from parsed arguments: defaults, then what was given
    (less the options named in ``leave``, which keep their defaults here)."""
    return from_dict(cls, {k: v for k, v in cli_values(cls, ns).items() if k not in leave})


def add_group(sub: Any, name: str, **parser_args: Any) -> Any:
    """A command made of subcommands (``tinygpt bench generate``): add them with :func:`add_command`."""
    return sub.add_parser(name, **parser_args).add_subparsers(dest=name.replace("-", "_"), required=True,
                                                               metavar="what")


def add_command(sub: Any, name: str, cls: type, run: Callable[..., int], *, given: type | None = None,
                **parser_args: Any) -> argparse.ArgumentParser:
    """A subcommand whose options are generated from ``cls`` (one dataclass composed of
    sections) and whose ``run`` receives the parsed ``cls``.

    With ``given`` (a config class whose fields are among ``cls``'s options), ``run`` also
    receives the flags of ``given`` that the command line really gave, as a flat dict: a
    layer to lay over a preset and a config file, where defaults must not win."""
    p = sub.add_parser(name, **parser_args)
    add_arguments(p, cls)
    if given is None:
        p.set_defaults(func=lambda ns: run(parse_command(cls, ns)), command_class=cls)
        return p
    # The options of cls's sections named as given's are. They are not built into cls here: a
    # flag may only make sense over the preset or file it is laid on (--n-head 3 for a preset
    # 96 wide), which the library reads.
    sections = {f.name for f in dataclasses.fields(given)}
    names = {leaf.field.name for leaf in iter_fields(cls) if leaf.path[0] in sections}

    def func(ns: argparse.Namespace) -> int:
        flags = {k: v for k, v in cli_values(cls, ns).items() if k in names}
        return run(parse_command(cls, ns, leave=names), flags)

    p.set_defaults(func=func, command_class=cls)
    return p


def cache_dir() -> Path:
    """Where downloaded corpora and tokenized datasets live (``$TINYGPT_CACHE`` overrides)."""
    root = os.environ.get("TINYGPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "tinygpt")
    return Path(root)


def check_choices(cfg: Any) -> None:
    """Validate every field declared with ``choices`` (call from ``__post_init__``); None is
    no choice made (an optional field left unset)."""
    for f in dataclasses.fields(cfg):
        if f.init and getattr(cfg, f.name) is not None:
            _check_choice(f, getattr(cfg, f.name))
