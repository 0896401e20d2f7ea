"""Crash-safe writes and safe loading of weights and state; no file names (see run.py).

Every file is written to a temporary file in the same directory, fsynced and renamed
over the old one, so a kill at any instant leaves the previous version loadable.
Nothing is ever unpickled beyond tensors and plain containers (safetensors for weights;
``torch.load(weights_only=True)`` for trainer state). Weights are read memory-mapped.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .errors import TinyGPTError

METADATA_KEY = "tinygpt"  # safetensors metadata is str -> str; ours is one JSON document under this key


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some platforms (Windows) cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_path)`` then move the finished file over ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        # mkstemp makes 0600 (and some writers recreate the file): give it normal permissions.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file, with a one-line error naming ``what`` it is when it is absent or damaged."""
    path = existing_file(path, what)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TinyGPTError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None


def weight_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """State dict with each shared tensor once (safetensors refuses aliases; tied head)."""
    out, seen = {}, set()
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.shape) if t.numel() else (name,)
        if key in seen:
            continue
        seen.add(key)
        out[name] = t.detach().to("cpu").contiguous()
    return out


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights as safetensors, with ``metadata`` as one JSON document."""
    tensors = weight_tensors(model)
    meta = {METADATA_KEY: json.dumps(metadata or {})}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The raw string metadata of a safetensors file (our JSON document is under METADATA_KEY)."""
    path = existing_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise unreadable(path, e) from None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; on CPU the tensors are memory-mapped (copy-on-write), not copied."""
    path = existing_file(path, "checkpoint")
    try:
        return load_file(str(path))
    except Exception as e:
        raise unreadable(path, e) from None


def assign_weights(model: torch.nn.Module, tensors: dict[str, torch.Tensor], source: str | Path, *,
                   assign: bool = False) -> None:
    """Put ``tensors`` (as written by :func:`save_weights`) into ``model``, checking that they are
    exactly its parameters; ``source`` names them in errors.

    ``assign=True`` makes the tensors the parameters themselves (no copy), for a model
    built on the meta device; ``model.tie_weights()``, if it has one, then re-ties shared weights."""
    expected = model.state_dict()
    for name, t in tensors.items():
        if name not in expected:
            raise TinyGPTError(f"{source} has a tensor {name!r} that this model does not: config.json does not "
                               "match the weights; load it with the config it was trained with")
        if expected[name].shape != t.shape:
            raise TinyGPTError(f"{source}: {name} is {tuple(t.shape)} but config.json implies "
                               f"{tuple(expected[name].shape)}; the config does not match the weights")
    # A tied head shares its parameter with the embedding and is stored once, under one
    # name; a file holding both (an untied model) must not be squeezed into one tensor.
    owners: dict[int, str] = {}
    params = {name: p for name, p in model.named_parameters(remove_duplicate=False)}
    for n in tensors:
        other = owners.setdefault(id(params.get(n, expected[n])), n)
        if other != n:
            raise TinyGPTError(f"{source} has separate {other} and {n} but config.json ties them "
                               "(tie_embeddings); the config does not match the weights")
    loaded = set(owners)
    missing = {n for n, t in expected.items() if n not in tensors and id(params.get(n, t)) not in loaded}
    if missing:
        raise TinyGPTError(f"{source} lacks {len(missing)} tensors (e.g. {sorted(missing)[0]}): it does not "
                           "match config.json; load it with the config it was trained with")
    model.load_state_dict(tensors, strict=False, assign=assign)
    if assign and hasattr(model, "tie_weights"):
        model.tie_weights()


def save_state(state: dict, path: str | Path) -> None:
    """Write a trainer-state dict (tensors and plain containers only) atomically."""
    atomic_write(path, lambda p: torch.save(state, p))


def load_state(path: str | Path) -> dict:
    """Read a trainer state without unpickling arbitrary objects."""
    path = existing_file(path, "trainer state")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise unreadable(path, e) from None


def existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        hint = ("train first, or point at a run directory that 'tinygpt train' wrote"
                if what != "trainer state" else "this run cannot be resumed; start a new run instead")
        raise TinyGPTError(f"no {what} at {path}: {hint}")
    return path


def unreadable(path: Path, err: Exception) -> TinyGPTError:
    first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    return TinyGPTError(f"{path} is unreadable (truncated or corrupt: {first}); "
                        "use the run's other checkpoint (--checkpoint best|last) or train again")
