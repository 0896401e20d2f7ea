"""The house plan's layers (ARCHITECTURE.md), read from the source: imports point down only,
and no cli module imports another."""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tinygpt"

# Each top-level module or package of tinygpt and its floor in the plan, lowest first; a
# module may import only from its own package or from a lower floor.
FLOORS = [
    ("presets", "config", "device", "checkpoint", "lock", "errors", "console", "options"),
    ("model", "kvcache", "kernels", "quant", "tokenizer", "moe", "patterns"),
    ("adapters",),  # below run.py, since loading a fine-tune needs them
    ("run",),
    ("source",),
    ("data",),
    ("interop",),
    ("generation",),
    ("train",),
    ("finetune", "eval", "analysis", "compress", "learn"),
    ("bench",),
    ("serve",),
    ("cli",),
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}

# Imports that point up and are known: the plan should move rather than the code.
KNOWN_UP = {
    # source.py opens Hugging Face directories and hub names with interop.hf_dir: the plan
    # should put interop's readers (hf, hf_dir) below source.py, and what opens a model
    # source to write it (interop/export.py) above.
    ("source", "interop"),
    # learn's makemore and micrograd draw with analysis.pictures and judge with analysis.health,
    # a sibling floor: pictures could move below both.
    ("learn", "analysis"),
}


def imports(path: Path) -> list[tuple[str, int]]:
    """(tinygpt.x.y, line) of every import of tinygpt in ``path``, relative ones resolved."""
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    if path.name == "__init__.py":
        parts = parts[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                if node.module:
                    out.append((".".join(base + [node.module]), node.lineno))
                else:  # from . import a, b
                    out += [(".".join(base + [a.name]), node.lineno) for a in node.names]
            else:
                out.append((node.module, node.lineno))
    return [(name, line) for name, line in out if name == "tinygpt" or name.startswith("tinygpt.")]


def top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


# Every module but the package's own entry points (tinygpt/__init__.py, __main__.py).
MODULES = sorted(p for p in SRC.rglob("*.py") if p.parent != SRC or p.stem not in ("__init__", "__main__"))


def test_every_module_has_a_floor():
    for path in MODULES:
        name = path.relative_to(SRC).parts[0].removesuffix(".py")
        assert name in FLOOR, f"{name} is on no floor of the plan; add it to FLOORS (and to ARCHITECTURE.md)"


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(SRC)) for p in MODULES])
def test_imports_point_down_the_layers(path):
    me = path.relative_to(SRC).parts[0].removesuffix(".py")
    for module, line in imports(path):
        other = top(module)
        if other is None or other == me or other not in FLOOR:  # tinygpt itself (versions), or its own package
            continue
        assert FLOOR[other] <= FLOOR[me] or (me, other) in KNOWN_UP, \
            f"{path.relative_to(SRC)}:{line} imports {module}, a floor above it"


def test_the_known_exceptions_still_exist():
    found = {(p.relative_to(SRC).parts[0].removesuffix(".py"), top(m)) for p in MODULES for m, _ in imports(p)}
    assert KNOWN_UP <= found  # an exception gone: take it off the list


@pytest.mark.parametrize("path", sorted((SRC / "cli").glob("*.py")), ids=lambda p: p.name)
def test_no_cli_module_imports_another(path):
    if path.name == "__init__.py":  # the package wires the commands together
        return
    others = [(m, line) for m, line in imports(path) if m == "tinygpt.cli" or m.startswith("tinygpt.cli.")]
    assert not others, f"cli/{path.name}:{others[0][1]} imports {others[0][0]}; move what it needs into the library"
