"""Crash-safe writes and safe loading of weights and state; no file names (see run.py).

Every file is written to a temporary file in the same directory, fsynced and renamed
over the old one, so a kill at any instant leaves the previous version loadable.
Nothing is ever unpickled beyond tensors and plain containers (safetensors for weights;
``torch.load(weights_only=True)`` for trainer state). Weights are read memory-mapped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import re
import shutil
import struct
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file

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


# atomic_write's temp files are ".tinygpt-<name>.<random>.tmp": a name no user would choose,
# so sweeping what a killed write left (stale_temp_files) can never take a user's file.
TMP_PREFIX, TMP_SUFFIX = ".tinygpt-", ".tmp"


class DiskFullError(TinyGPTError):
    """A write found the disk full; the file it was replacing is untouched. ``problem`` is
    the message without its advice, for callers that know a better next step."""

    def __init__(self, problem: str):
        super().__init__(f"{problem}. Free some space and run the command again")
        self.problem = problem


def _fmt_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # unreachable


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what it wraps: torch.save reports a failed write as a RuntimeError
    whose context is the OSError) is the disk or the quota running out."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def _full_error(path: Path, size: int | None, existed: bool) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free
    need = f"needs about {_fmt_bytes(size)}" if size else "could not be written"
    kept = f"the previous {path.name} is intact" if existed else "nothing was replaced"
    return DiskFullError(f"the disk is full: {path} {need} and {path.parent} has {_fmt_bytes(free)} free; {kept}")


def _open_temp(path: Path) -> tuple[Path, BinaryIO]:
    """A new temp file beside ``path`` (same filesystem, so the final rename is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    return Path(tmp), os.fdopen(fd, "wb")


@contextmanager
def _replacing(path: Path, size: int | None) -> Iterator[tuple[Path, BinaryIO]]:
    """The one way files are written: yields a temp file beside ``path`` (same filesystem,
    so the final rename is atomic) and its open handle; when the block ends, the file is
    closed, fsynced and renamed over ``path``. On an error it is removed and ``path`` is
    untouched; a full disk raises :class:`DiskFullError`. ``size`` (bytes, when known)
    lets a full disk be reported before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise TinyGPTError(f"{path} is a directory; give a file path to write to")
    existed = path.exists()
    if size is not None and shutil.disk_usage(path.parent).free < size:
        raise _full_error(path, size, existed)
    tmp_path, f = _open_temp(path)
    try:
        yield tmp_path, f
        f.close()  # flushes: a full disk can show here
        with open(tmp_path, "rb+") as synced:
            os.fsync(synced.fileno())
        # mkstemp makes 0600: give the file the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    except BaseException as e:
        with contextlib.suppress(OSError):  # closing flushes what the full disk refused
            f.close()
        tmp_path.unlink(missing_ok=True)
        if isinstance(e, Exception) and _disk_full(e):
            raise _full_error(path, size, existed) from None
        raise
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], *, size: int | None = None) -> None:
    """Run ``write(f)`` on a temp file and move it over ``path`` in one rename (see _replacing)."""
    with _replacing(Path(path), size) as (_, f):
        write(f)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path beside ``path`` for a library that writes files itself (gguf); the file
    there replaces ``path`` when the block ends, as with :func:`atomic_write`."""
    with _replacing(Path(path), None) as (tmp_path, f):
        f.close()
        yield tmp_path


def atomic_write_text(path: str | Path, text: str) -> None:
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data), size=len(data))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def output_file(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """Check ``path`` is a file a command may write (exports, results, pictures): a new
    name, or, with ``force``, an existing file. Write it with :func:`atomic_write`."""
    path = Path(path)
    if path.is_dir():
        raise TinyGPTError(f"{flag} {path} is a directory; give a file name")
    if path.exists() and not force:
        raise TinyGPTError(f"{path} already exists; choose another {flag}, or pass --force to replace it")
    return path


def output_dir(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """Check ``path`` is a folder a command may fill (an export): absent or empty, or
    anything with ``force`` (its files with the names written are replaced)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TinyGPTError(f"{flag} {path} is a file, not a directory; choose a directory")
    if path.is_dir() and not force and any(path.iterdir()):
        raise TinyGPTError(f"{flag} {path} is not empty; choose a new or empty directory, or pass --force to "
                           "write into it (replacing files with the same names)")
    return path


def stale_temp_files(directory: str | Path, names: Iterable[str] = ()) -> list[Path]:
    """Temp files a killed write left in ``directory``: ours (".tinygpt-<name>.<random>.tmp"),
    and those of earlier versions (".<name>.<random>.tmp") for the file ``names`` given. Nothing
    else, however temporary its name looks: a user's ".draft.tmp" is theirs."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    random = r"\.[a-z0-9_]{8}" + re.escape(TMP_SUFFIX)  # mkstemp's 8 characters
    ours = re.compile(re.escape(TMP_PREFIX) + r".+" + random)
    earlier = re.compile(r"\.(" + "|".join(map(re.escape, names)) + ")" + random) if names else None
    return sorted(p for p in directory.iterdir()
                  if not p.is_symlink() and p.is_file()
                  and (ours.fullmatch(p.name) or (earlier is not None and earlier.fullmatch(p.name))))


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


# safetensors dtype names (the format's spec) for the dtypes a model can hold.
_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64",
              torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
              torch.bool: "BOOL"}


def write_safetensors(f: BinaryIO, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Stream ``tensors`` to ``f`` in the safetensors format, one tensor at a time.

    The safetensors package can only write to a path (through a temp file of its own,
    which a kill leaves behind) or build the whole file in memory; streaming to our own
    temp file keeps the atomic-write discipline, costs no second copy of the weights,
    and reports a full disk as an OSError. The file is read back by the package itself;
    the layout (8-byte header length, JSON header padded to 8 bytes, tensors packed in
    header order, largest dtypes first) is the one it writes."""
    if sys.byteorder != "little":  # the format is little-endian; let the package convert
        from safetensors.torch import save

        f.write(save(tensors, metadata=metadata))
        return
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in _ST_DTYPES:
            raise TypeError(f"cannot store {name} of dtype {t.dtype} in safetensors")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": _ST_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    f.write(struct.pack("<Q", len(raw)) + raw)
    for name in order:
        t = tensors[name].detach().to("cpu").contiguous()
        if t.numel():
            f.write(t.reshape(-1).view(torch.uint8).numpy().data)


def _tensor_bytes(obj: Any, per_tensor: int = 0) -> int:
    """Bytes held by the tensors in a nest of dicts / lists / tuples, plus ``per_tensor`` each."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size() + per_tensor
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, per_tensor) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v, per_tensor) for v in obj)
    return 0


def save_weights(model: torch.nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> None:
    """Write ``model``'s weights as safetensors, with ``metadata`` as one JSON document."""
    save_tensors(weight_tensors(model), path, metadata)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, Any] | None = None, *,
                 plain: dict[str, str] | None = None) -> None:
    """Write ``tensors`` as a safetensors file, with ``metadata`` as one JSON document
    (and ``plain`` string entries beside it, for other tools: transformers wants "format")."""
    meta = {METADATA_KEY: json.dumps(metadata or {}), **(plain or {})}
    atomic_write(path, lambda f: write_safetensors(f, tensors, meta), size=_tensor_bytes(tensors, 100) + 1024)


def read_metadata(path: str | Path) -> dict[str, str]:
    """The raw string metadata of a safetensors file (our JSON document is under METADATA_KEY)."""
    path = existing_file(path, "checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:
        raise unreadable(path, e) from None


RUN_ADVICE = "use the run's other checkpoint (--checkpoint best|last) or train again"


def load_weights(path: str | Path, advice: str = RUN_ADVICE) -> dict[str, torch.Tensor]:
    """Read a safetensors file; on CPU the tensors are memory-mapped (copy-on-write), not copied.
    ``advice``: what the error says to do when the file is unreadable (a run's, by default)."""
    path = existing_file(path, "checkpoint")
    try:
        return load_file(str(path))
    except Exception as e:
        raise unreadable(path, e, advice) from None


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


def check_tensors_hold(params: int, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse, before anything is built, a config declaring more parameters than the weights
    hold: a config.json saying 100000 layers would otherwise build layer after layer for
    minutes (and gigabytes) before the weights are compared with it."""
    held = sum(t.numel() * (2 if t.dtype == torch.uint8 else 1) for t in tensors.values())  # uint8: int4 pairs
    if params > held:
        raise TinyGPTError(f"{source}: the config declares a model of {params:,} parameters but the weights hold "
                           f"{held:,}; the config does not match the weights (load it with the config it was "
                           "saved with)")


def model_from_tensors(build: Callable[[], torch.nn.Module], tensors: dict[str, torch.Tensor],
                       source: str | Path, *, params: int | None = None) -> torch.nn.Module:
    """``build()`` on the meta device, given ``tensors`` as its parameters (checked by
    :func:`assign_weights`): no random init, no copy. Derived buffers are then computed.
    ``params``: the parameter count ``build()`` implies, checked against the tensors first."""
    if params is not None:
        check_tensors_hold(params, tensors, source)
    with torch.device("meta"):
        model = build()
    assign_weights(model, tensors, source, assign=True)
    if hasattr(model, "init_buffers"):
        model.init_buffers()
    return model


def save_state(state: dict, path: str | Path) -> None:
    """Write a trainer-state dict (tensors and plain containers only) atomically."""
    # To a file object, not a path: torch's own path writer reports a full disk only as
    # "basic_ios::clear: iostream error"; through Python the OSError survives.
    atomic_write(path, lambda f: torch.save(state, f), size=_tensor_bytes(state, 100) + 4096)  # zip records


def load_state(path: str | Path) -> dict:
    """Read a trainer state without unpickling arbitrary objects."""
    path = existing_file(path, "trainer state")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's message here advises weights_only=False, i.e. running the file's code: never.
        raise TinyGPTError(f"{path} holds objects other than tensors and plain values (it was not written by "
                           "tinygpt, or was altered); refusing to unpickle it. This run cannot be resumed: "
                           "start a new run") from None
    except Exception as e:
        raise TinyGPTError(f"{path} is unreadable (truncated or corrupt: {first_line(e)}); this run cannot be "
                           "resumed exactly: its weights still sample, or start a new run") from None
    if not isinstance(state, dict):
        raise TinyGPTError(f"{path} does not hold a trainer state; this run cannot be resumed: start a new run")
    return state


def existing_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        hint = ("train first, or point at a run directory that 'tinygpt train' wrote"
                if what != "trainer state" else "this run cannot be resumed; start a new run instead")
        raise TinyGPTError(f"no {what} at {path}: {hint}")
    return path


def in_directory(directory: str | Path, name: str, what: str) -> Path:
    """``directory / name`` where ``name`` (read from a file there, e.g. a shard index) is a
    plain file name; anything else (``../x``, ``/etc/passwd``, ``a/b``) is refused."""
    if not isinstance(name, str) or not name or name in (".", "..") or Path(name).name != name or "\\" in name:
        raise TinyGPTError(f"{what} names {name!r}, which is not a file of {directory}; the directory is damaged "
                           "or was tampered with")
    return Path(directory) / name


def check_no_links_out(directory: str | Path, names: Iterable[str], what: str) -> None:
    """Refuse where one of the files ``names`` in ``directory`` is a link that leads out of
    it: reading it would read, and appending to it would write, a file elsewhere. (A Hugging
    Face hub snapshot's files link into the same repository's blobs/ folder: that is its layout.)"""
    root = Path(directory).resolve()
    if root.parent.name == "snapshots":
        root = root.parent.parent
    for name in names:
        path = Path(directory) / name
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise TinyGPTError(f"{path} is a link out of {what} (to {os.readlink(path)}); tinygpt does not follow "
                               "it: put the file itself there")


def first_line(err: BaseException) -> str:
    """An exception's first line (or its type), at most 200 characters, for one-line errors."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


def unreadable(path: Path, err: Exception, advice: str = RUN_ADVICE) -> TinyGPTError:
    return TinyGPTError(f"{path} is unreadable (truncated or corrupt: {first_line(err)}); {advice}")
