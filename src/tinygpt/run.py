"""The run directory: the only code that knows its file names and formats.

::

    config.json            every setting (model, data, train, runtime), the tokenizer, data key, versions
    tokenizer_config.json  the tokenizer (+ tokenizer.json for a trained BPE)
    model.safetensors      weights with the best validation loss so far
    last.safetensors       the latest weights
    trainer.pt             everything needed to resume exactly (weights, optimizer, schedule
                           position, loss scaler, RNG states, data position, best val loss)
    metrics.jsonl          one JSON line per step / evaluation (appended by a train callback)
    adapter.safetensors    a fine-tune's adapters, described by adapter.json
    eval.json, plots/, attention/     results and pictures

Weights carry a typed :class:`CheckpointInfo` as one JSON document in the safetensors
metadata. ``trainer.pt`` carries its own copy of the weights, so resuming reads a single
file that is consistent with itself. Every file goes through the atomic writer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from . import checkpoint as ckpt
from .config import from_dict
from .errors import TinyGPTError
from .model import GPT, GPTConfig
from .tokenizer import Tokenizer, load_tokenizer

CONFIG_FILE = "config.json"
BEST_WEIGHTS = "model.safetensors"
LAST_WEIGHTS = "last.safetensors"
TRAINER_STATE = "trainer.pt"
METRICS_FILE = "metrics.jsonl"
ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
CHECKPOINTS = {"best": BEST_WEIGHTS, "last": LAST_WEIGHTS}


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


class RunDir:
    """A run directory on disk. ``RunDir.create`` for a new run, ``RunDir.open`` for an existing one."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._config: dict | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @staticmethod
    def is_run(path: str | Path) -> bool:
        return (Path(path) / CONFIG_FILE).is_file()

    @staticmethod
    def check_new(path: str | Path) -> None:
        """Raise unless ``path`` is free for a new run."""
        path = Path(path)
        if (path / CONFIG_FILE).exists():
            raise TinyGPTError(f"{path} already holds a run; continue it with --resume {path}, "
                               "or choose another --out / --name")

    @classmethod
    def create(cls, path: str | Path) -> "RunDir":
        """Make the directory for a new run; refuses one that already holds a run."""
        cls.check_new(path)
        Path(path).mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> "RunDir":
        """An existing run directory (it must have its config.json)."""
        path = Path(path)
        if not path.is_dir():
            raise TinyGPTError(f"no run directory at {path}; pass a directory made by 'tinygpt train' (see runs/)")
        ckpt.existing_file(path / CONFIG_FILE, "run config")
        return cls(path)

    # ------------------------------------------------------------------ config and tokenizer

    def write_config(self, config: dict) -> None:
        ckpt.atomic_write_json(self.path / CONFIG_FILE, config)
        self._config = json.loads(json.dumps(config))

    def read_config(self) -> dict:
        if self._config is None:
            config = ckpt.read_json(self.path / CONFIG_FILE, "run config")
            if not isinstance(config, dict):
                raise TinyGPTError(f"{self.path / CONFIG_FILE} does not hold a mapping; the run directory is damaged")
            self._config = config
        return self._config

    def model_config(self) -> GPTConfig:
        section = self.read_config().get("model")
        if not isinstance(section, dict):
            raise TinyGPTError(f"{self.path / CONFIG_FILE} has no model section; the run directory is damaged")
        return from_dict(GPTConfig, section)

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
        """'best', 'last' or a path to a .safetensors file. With no best yet, 'best' means 'last'."""
        if which not in CHECKPOINTS:
            return Path(which)
        path = self.path / CHECKPOINTS[which]
        if which == "best" and not path.exists() and (self.path / LAST_WEIGHTS).exists():
            return self.path / LAST_WEIGHTS
        return path

    def save_weights(self, model: torch.nn.Module, which: str, info: CheckpointInfo) -> None:
        ckpt.save_weights(model, self.path / CHECKPOINTS[which], info.to_metadata())

    def checkpoint_info(self, which: str = "best") -> CheckpointInfo:
        return CheckpointInfo.from_metadata(ckpt.read_metadata(self.weights_path(which)))

    def load_model(self, which: str = "best", device: torch.device | str = "cpu") -> tuple[GPT, CheckpointInfo, Path]:
        """The model with weights ``which``, built on the meta device and given the file's
        memory-mapped tensors: no random init, no copy. In eval mode, on ``device``."""
        config = self.model_config()
        path = self.weights_path(which)
        info = CheckpointInfo.from_metadata(ckpt.read_metadata(path))
        tensors = ckpt.load_weights(path)
        with torch.device("meta"):
            model = GPT(config)
        ckpt.assign_weights(model, tensors, path, assign=True)
        model.init_buffers()
        return model.to(device).eval(), info, path

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
    def adapter_paths(self) -> tuple[Path, Path]:
        """(adapter weights, adapter config) of a fine-tune."""
        return self.path / ADAPTER_WEIGHTS, self.path / ADAPTER_CONFIG

    def results_path(self, name: str) -> Path:
        """Where a result document lives, e.g. ``results_path('eval')`` -> eval.json."""
        return self.path / f"{name}.json"

    def pictures_dir(self, kind: str) -> Path:
        """A folder of pictures: 'plots' (training diagnostics) or 'attention' (attention maps)."""
        if kind not in ("plots", "attention"):
            raise ValueError(f"unknown picture folder {kind!r}")
        return self.path / kind
