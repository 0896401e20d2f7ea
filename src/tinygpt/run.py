"""The run directory: the only code that knows its file names and formats.

::

    config.json            every setting (model, data, run, train, runtime), the tokenizer, data key, versions
    tokenizer_config.json  the tokenizer (+ tokenizer.json for a trained BPE)
    model.safetensors      weights with the best validation loss so far
    last.safetensors       the latest weights
    trainer.pt             everything needed to resume exactly (weights, optimizer, schedule
                           position, loss scaler, RNG states, data position, best val loss)
    metrics.jsonl          one JSON line per step / evaluation (appended by a train callback)
    diagnostics.jsonl      training-health statistics every --diagnostics N steps (a train callback)
    adapter.safetensors    a parameter-efficient fine-tune's adapter tensors (best; adapter-last.safetensors:
                           latest), described with its base by adapter.json; such a run has no model weights
    eval.json, plots/, attention/     results and pictures
    .lock                  held by the one process writing the run (see lock.py)

Weights carry a typed :class:`CheckpointInfo` as one JSON document in the safetensors
metadata. ``trainer.pt`` carries its own copy of the weights, so resuming reads a single
file that is consistent with itself. Every file goes through the atomic writer.

Safety rules: a new run only goes into a new or empty directory (``force`` to write into
anything else); one process at a time writes a run (:meth:`RunDir.lock`, which also
sweeps temp files a killed write left); readers (sampling, loading) need no lock because
every file is replaced whole. Readers may add to one kind of file while a writer holds
the run: results (eval.json), each append under the brief ``.results.lock``. No file tinygpt
names in a run may be a link out of it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from shlex import quote
from typing import Any, Callable

import torch

from . import adapters, quant
from . import checkpoint as ckpt
from . import lock as _lock
from .adapters import AdapterConfig
from .config import from_dict, to_dict
from .errors import TinyGPTError
from .model import GPT, GPTConfig
from .tokenizer import BPE_FILE, Tokenizer, load_tokenizer
from .tokenizer import CONFIG_FILE as TOKENIZER_CONFIG

CONFIG_FILE = "config.json"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
TRAINER_STATE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_LAST = "adapter-last.safetensors"
ADAPTER_CONFIG = "adapter.json"
LOCK_FILE = ".lock"
RESULTS_LOCK = ".results.lock"  # taken briefly by each append to a results file (eval.json)
CHECKPOINTS = {"best": BEST_WEIGHTS, "last": LAST_WEIGHTS}
ADAPTER_CHECKPOINTS = {"best": ADAPTER_WEIGHTS, "last": ADAPTER_LAST}
SECTIONS = ("model", "data", "run", "train", "runtime")  # config.json's settings; each a mapping
# What a new run replaces when told to (``force``) write where a run already was: everything
# that would otherwise describe the old run beside the new one.
RUN_FILES = (CONFIG_FILE, TOKENIZER_CONFIG, BPE_FILE, BEST_WEIGHTS, LAST_WEIGHTS, TRAINER_STATE, METRICS_FILE,
             ADAPTER_WEIGHTS, ADAPTER_LAST, ADAPTER_CONFIG)
# Every file tinygpt reads or writes by name in a run: none may be a link out of the run.
NAMED_FILES = RUN_FILES + (DIAGNOSTICS_FILE, "eval.json", LOCK_FILE, RESULTS_LOCK)


@dataclass
class CheckpointInfo:
    """What a weights file records about the moment it was written."""
    step: int | None = None
    tokens: int | None = None
    val_loss: float | None = None

    def to_metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_metadata(cls, raw: dict[str, str]) -> "CheckpointInfo":
        if ckpt.METADATA_KEY in raw:
            doc = json.loads(raw[ckpt.METADATA_KEY])
            return cls(**{f.name: doc.get(f.name) for f in dataclasses.fields(cls)})
        # tinygpt 0.1 stored each value as str(value), so None became the string "None".
        def legacy(key: str, kind: type):
            value = raw.get(key, "None")
            return None if value == "None" else kind(value)

        return cls(step=legacy("step", int), tokens=legacy("tokens", int), val_loss=legacy("val_loss", float))


def _is_tinygpt_config(path: Path) -> bool:
    """Whether ``path`` is a config.json that tinygpt wrote (an HF model folder has one too)."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("versions"), dict) and "tinygpt" in config["versions"]


class RunDir:
    """A run directory on disk. ``RunDir.create`` for a new run, ``RunDir.open`` for an existing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._config: dict | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def is_run(path: str | Path) -> bool:
        """Whether ``path`` holds a run tinygpt wrote (a Hugging Face model folder has a config.json too)."""
        return _is_tinygpt_config(Path(path) / CONFIG_FILE)

    @staticmethod
    def check_new(path: str | Path, *, force: bool = False) -> None:
        """Raise unless ``path`` is free for a new run: absent, or a directory holding
        nothing but what tinygpt itself leaves (its lock file, temp files of killed writes).
        ``force`` allows any directory (a new run then replaces an old one's files)."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise TinyGPTError(f"--out {path} is a file, not a directory; choose a directory for the run")
        if force or not path.is_dir():
            return
        if (path / CONFIG_FILE).is_file() and _is_tinygpt_config(path / CONFIG_FILE):
            if (pid := _lock.held_by(path / LOCK_FILE)) is not None:
                raise TinyGPTError(f"{path} is being written by process {pid} (another tinygpt command, still "
                                   "running); wait for it to finish, or choose another --out / --name")
            if not (path / TRAINER_STATE).exists():
                raise TinyGPTError(f"{path} holds a run that stopped before its first checkpoint; start it over "
                                   f"with --resume {quote(str(path))}, or pass --force to replace it with a new run")
            raise TinyGPTError(f"{path} already holds a run; continue it with --resume {quote(str(path))}, choose "
                               "another "
                               "--out / --name, or pass --force to replace it")
        temps = set(ckpt.stale_temp_files(path, NAMED_FILES))
        others = sorted(p.name for p in path.iterdir()
                        if p.name not in (LOCK_FILE, RESULTS_LOCK) and p not in temps)
        if others:
            listed = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
            raise TinyGPTError(f"--out {path} is not empty and is not a tinygpt run (it holds {listed}); choose a "
                               "new or empty directory, or pass --force to write the run into it anyway")

    @classmethod
    def create(cls, path: str | Path, *, force: bool = False) -> "RunDir":
        """Make and lock the directory for a new run; refuses one that holds anything else
        (see :meth:`check_new`), checked again under the lock so two processes cannot both pass."""
        cls.check_new(path, force=force)
        Path(path).mkdir(parents=True, exist_ok=True)
        run = cls(path)
        ckpt.check_no_links_out(path, NAMED_FILES, "the run")
        run.lock()
        cls.check_new(path, force=force)
        if force:
            for name in RUN_FILES:  # config.json first: a kill part-way leaves no half-old run
                (run.path / name).unlink(missing_ok=True)
        return run

    @classmethod
    def derive(cls, path: str | Path, config: dict, model: torch.nn.Module, tokenizer: Tokenizer,
               info: CheckpointInfo, record: dict[str, Any], *, force: bool = False) -> "RunDir":
        """A new run at ``path`` holding ``model``, made from another model (merged, quantized,
        pruned): the source's ``config`` (a run's config.json; a Hugging Face model's is not
        kept) with ``model``'s shape and ``record`` (such as {"quantized": {...}}) added, the
        tokenizer, and the weights as "best"."""
        from . import versions

        saved = {k: v for k, v in config.items() if k != "hf"}
        saved.setdefault("versions", versions())
        run = cls.create(path, force=force)
        run.write_config({**saved, "model": to_dict(model.config), **record})
        run.save_tokenizer(tokenizer)
        run.save_weights(model, "best", info)
        return run

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (it must have its config.json), for reading; writers
        also call :meth:`lock`."""
        path = Path(path)
        if not path.is_dir():
            raise TinyGPTError(f"no run directory at {path}; pass a directory made by 'tinygpt train' (see runs/)")
        ckpt.existing_file(path / CONFIG_FILE, "run config")
        ckpt.check_no_links_out(path, NAMED_FILES, "the run")
        run = cls(path)
        if "model" not in run.read_config() and not _is_tinygpt_config(path / CONFIG_FILE):
            raise TinyGPTError(f"{path / CONFIG_FILE} is neither a tinygpt run's (no model section, no tinygpt "
                               "version) nor a Hugging Face model's (no model_type); point at a run directory or a "
                               "model directory")
        return run

    def lock(self) -> None:
        """Become the one process writing this run (until it exits), then remove the temp
        files that writes killed part-way left behind (no write can be in flight now)."""
        _lock.acquire(self.path / LOCK_FILE, f"the run {self.path}")
        for tmp in ckpt.stale_temp_files(self.path, NAMED_FILES):
            tmp.unlink(missing_ok=True)

    def has_checkpoint(self) -> bool:
        """Whether the run saved a resumable checkpoint (a run killed before its first has none)."""
        return self.state_path.exists()

    # ------------------------------------------------------------------ config and tokenizer

    def write_config(self, config: dict) -> None:
        ckpt.atomic_write_json(self.path / CONFIG_FILE, config)
        self._config = json.loads(json.dumps(config))

    def read_config(self) -> dict:
        """config.json, checked to be a mapping whose settings sections are mappings."""
        if self._config is None:
            path = self.path / CONFIG_FILE
            config = ckpt.read_json(path, "run config")
            if not isinstance(config, dict):
                raise TinyGPTError(f"{path} holds {type(config).__name__}, not a mapping of settings; the run "
                                   "directory is damaged (restore config.json, or start a new run)")
            for name in SECTIONS:
                if name in config and not isinstance(config[name], dict):
                    raise TinyGPTError(f"{path}: the {name!r} section is {json.dumps(config[name])[:40]}, not a "
                                       "mapping; the run directory is damaged (restore config.json, or start a "
                                       "new run)")
            model = config.get("model")
            if isinstance(model, dict) and model.get("mlp", "gelu") == "gelu" and "gelu" not in model:
                model["gelu"] = "tanh"  # recorded before the gelu option existed, when every model used tanh
            self._config = config
        return self._config

    def model_config(self) -> GPTConfig:
        section = self.read_config().get("model")
        if section is None:
            raise TinyGPTError(f"{self.path / CONFIG_FILE} has no model section; the run directory is damaged")
        try:
            return from_dict(GPTConfig, section)
        except TinyGPTError as e:
            raise TinyGPTError(f"{self.path / CONFIG_FILE}: {e}; the run directory is damaged") from None

    def has_tokenizer(self) -> bool:
        return (self.path / TOKENIZER_CONFIG).is_file()

    def save_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.save(self.path)

    def load_tokenizer(self) -> Tokenizer:
        """The run's tokenizer, checked against the model's vocabulary size."""
        tokenizer = load_tokenizer(self.path)
        expected = self.model_config().vocab_size
        if expected is not None and tokenizer.vocab_size != expected:
            raise TinyGPTError(f"the tokenizer in {self.path} has {tokenizer.vocab_size} tokens but config.json says "
                               f"{expected}; the run directory is inconsistent")
        return tokenizer

    # ------------------------------------------------------------------ weights

    def weights_path(self, which: str = "best") -> Path:
        """'best', 'last' or a path to a .safetensors file. With no best yet, 'best' means 'last'.
        A parameter-efficient fine-tune's weights are its adapter's."""
        if which not in CHECKPOINTS:
            if not str(which).endswith(".safetensors") and not Path(which).is_file():  # a typo such as best2
                raise TinyGPTError(f"no checkpoint {which!r}: give best, last or the path of a .safetensors file")
            return Path(which)
        names = ADAPTER_CHECKPOINTS if self.has_adapter() else CHECKPOINTS
        path = self.path / names[which]
        if which == "best" and not path.exists() and (self.path / names["last"]).exists():
            return self.path / names["last"]
        return path

    def save_weights(self, model: torch.nn.Module, which: str, info: CheckpointInfo) -> None:
        """The model's weights, or (a model carrying an adapter) the adapter's alone."""
        names = ADAPTER_CHECKPOINTS if adapters.attached(model) else CHECKPOINTS
        ckpt.save_tensors(adapters.state_tensors(model), self.path / names[which], info.to_metadata())

    # ------------------------------------------------------------------ fine-tunes

    def has_adapter(self) -> bool:
        """Whether this is a parameter-efficient fine-tune (adapter.json beside config.json)."""
        return (self.path / ADAPTER_CONFIG).is_file()

    def write_adapter_config(self, cfg: AdapterConfig, base: dict) -> None:
        """adapter.json: the method's settings and the base they apply to (``base``: where
        it was and its content hash), so the adapter files stand on their own."""
        ckpt.atomic_write_json(self.path / ADAPTER_CONFIG, {**to_dict(cfg), "base": base})

    def read_adapter_config(self) -> tuple[AdapterConfig, dict]:
        """(the adapter's settings, its base) from adapter.json."""
        path = self.path / ADAPTER_CONFIG
        raw = ckpt.read_json(path, "adapter config")
        if not isinstance(raw, dict) or not isinstance(raw.get("base"), dict):
            raise TinyGPTError(f"{path} does not describe an adapter and its base; the run directory is damaged")
        base = raw.pop("base")
        try:
            return from_dict(AdapterConfig, raw), base
        except TinyGPTError as e:
            raise TinyGPTError(f"{path}: {e}; the run directory is damaged") from None

    def checkpoint_info(self, which: str = "best") -> CheckpointInfo:
        return CheckpointInfo.from_metadata(ckpt.read_metadata(self.weights_path(which)))

    def load_model(self, which: str = "best", device: torch.device | str = "cpu") -> tuple[GPT, CheckpointInfo, Path]:
        """The model with weights ``which``, built on the meta device and given the file's
        memory-mapped tensors: no random init, no copy. In eval mode, on ``device``."""
        if self.has_adapter():
            raise TinyGPTError(f"{self.path} is a fine-tune holding only its adapter; load it with its base "
                               "through tinygpt.load (or any tinygpt command)")
        config = self.model_config()
        path = self.weights_path(which)
        info = CheckpointInfo.from_metadata(ckpt.read_metadata(path))
        tensors = ckpt.load_weights(path)
        bad = next((n for n, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()), None)
        if bad is not None:
            raise TinyGPTError(f"{path} holds non-finite weights ({bad} has nan/inf): it was saved by a run that "
                               "diverged; use another checkpoint (--checkpoint best|last) or train again")
        spec = self.quantization()
        if spec is None:
            model = ckpt.model_from_tensors(lambda: GPT(config), tensors, path, params=config.stored_params())
        else:  # int8 / int4 buffers in place of the weights it covers (quant.py)
            model = ckpt.model_from_tensors(lambda: quant.prepare(GPT(config), spec), tensors, path,
                                            params=config.stored_params())
            quant.own_buffers(model)
        return model.to(device).eval(), info, path

    def quantization(self) -> quant.QuantSpec | None:
        """How the run's weights are quantized (config.json's "quantization"), or None: float."""
        raw = self.read_config().get("quantization")
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise TinyGPTError(f"{self.path / CONFIG_FILE}: the quantization section is not a mapping; the run "
                               "directory is damaged")
        return quant.QuantSpec.from_json(raw)

    # ------------------------------------------------------------------ trainer state and other files

    @property
    def state_path(self) -> Path:
        return self.path / TRAINER_STATE

    def save_state(self, state: dict) -> None:
        ckpt.save_state(state, self.state_path)

    def load_state(self) -> dict:
        return ckpt.load_state(self.state_path)

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def diagnostics_path(self) -> Path:
        """Training-health statistics recorded by ``--diagnostics N`` (one JSON line per probe)."""
        return self.path / DIAGNOSTICS_FILE

    def read_metrics(self, notice: Callable[[str], None] | None = None) -> list[dict]:
        """metrics.jsonl's records. A line that is not a JSON record (the torn last line of a
        process killed mid-write) is dropped, with a notice."""
        if not self.metrics_path.exists():
            return []
        return self._parse_records(self.metrics_path, notice)

    def read_diagnostics(self, notice: Callable[[str], None] | None = None) -> list[dict]:
        """diagnostics.jsonl's records (damaged lines dropped, as for metrics)."""
        return self._parse_records(self.diagnostics_path, notice) if self.diagnostics_path.exists() else []

    @staticmethod
    def _parse_records(path: Path, notice: Callable[[str], None] | None, text: str | None = None) -> list[dict]:
        if text is None:
            text = path.read_text(encoding="utf-8", errors="replace")
        records, bad = [], 0
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step", 0), int):
                records.append(record)
            else:
                bad += 1
        if bad and notice is not None:
            notice(f"notice: dropped {bad} damaged line(s) of {path} (a write cut short)")
        return records

    def trim_metrics(self, step: int, notice: Callable[[str], None] | None = None) -> None:
        """Keep the metrics and diagnostics records up to ``step`` (those past it are steps a stopped run took but
        never saved) and drop damaged lines, rewriting the file only if that changes it."""
        for path in (self.metrics_path, self.diagnostics_path):
            if not path.exists():
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            kept = "".join(json.dumps(r) + "\n" for r in self._parse_records(path, notice, text)
                           if r.get("step", 0) <= step)
            if kept != text:
                ckpt.atomic_write_text(path, kept)

    @property
    def adapter_paths(self) -> tuple[Path, Path]:
        """(adapter weights, adapter config) of a fine-tune."""
        return self.path / ADAPTER_WEIGHTS, self.path / ADAPTER_CONFIG

    def results_path(self, name: str) -> Path:
        """Where a result document lives, e.g. ``results_path('eval')`` -> eval.json."""
        return self.path / f"{name}.json"

    def read_results(self, name: str) -> list:
        """The list of results in ``results_path(name)``, oldest first (none yet: empty)."""
        path = self.results_path(name)
        kept = ckpt.read_json(path, f"{name} results") if path.exists() else []
        if not isinstance(kept, list):
            raise TinyGPTError(f"{path} holds {type(kept).__name__}, not a list of results; move it aside and "
                               "evaluate again")
        return kept

    def append_result(self, name: str, record: dict) -> None:
        """Add ``record`` to the list of results in ``results_path(name)`` (written atomically),
        under the results lock: two evaluations appending at once both keep their rows."""
        with _lock.briefly(self.path / RESULTS_LOCK, f"the results of {self.path}"):
            ckpt.atomic_write_json(self.results_path(name), self.read_results(name) + [record])

    def pictures_dir(self, kind: str) -> Path:
        """A folder of pictures: 'plots' (training diagnostics) or 'attention' (attention maps)."""
        if kind not in ("plots", "attention"):
            raise ValueError(f"unknown picture folder {kind!r}")
        return self.path / kind
