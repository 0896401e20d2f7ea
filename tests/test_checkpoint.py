"""Atomic writes, safetensors weights with JSON metadata, and safe trainer-state round trips."""

import errno
import json
import os

import pytest
import torch

from tinygpt import checkpoint as ckpt
from tinygpt.errors import TinyGPTError
from tinygpt.model import GPT, GPTConfig


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_weights_round_trip_exactly(tmp_path, tiny_model):
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(tiny_model, path, {"step": 7, "val_loss": 1.25, "note": None})
    torch.manual_seed(123)
    other = GPT(tiny_model.config)
    ckpt.assign_weights(other, ckpt.load_weights(path), path)
    for (n, a), (_, b) in zip(tiny_model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), n
    # One JSON document: types survive (an int, a float, a null), no string parsing.
    raw = ckpt.read_metadata(path)
    assert set(raw) == {"tinygpt"} and json.loads(raw["tinygpt"]) == {"step": 7, "val_loss": 1.25, "note": None}
    if tiny_model.config.tie_embeddings:  # tied head stored once and still tied after loading
        assert other.lm_head.weight.data_ptr() == other.transformer.wte.weight.data_ptr()


def test_crash_during_write_keeps_previous_file(tmp_path, tiny_model, monkeypatch):
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(tiny_model, path, {"step": 1})
    before = path.read_bytes()

    def crash(f, tensors, metadata):
        f.write(b"\x00" * 100)  # half-written file...
        raise KeyboardInterrupt  # ...then the process is interrupted

    monkeypatch.setattr(ckpt, "write_safetensors", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_weights(tiny_model, path, {"step": 2})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()
    ckpt.assign_weights(GPT(tiny_model.config), ckpt.load_weights(path), path)


def test_kill_before_rename_leaves_old_file_loadable(tmp_path, tiny_model, monkeypatch):
    """A kill between writing the temp file and the rename: the old file is untouched."""
    path = tmp_path / "last.safetensors"
    ckpt.save_weights(tiny_model, path, {"step": 1})
    before = path.read_bytes()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(SystemExit(137)))
    with pytest.raises(SystemExit):
        ckpt.save_weights(tiny_model, path, {"step": 2})
    assert path.read_bytes() == before


def test_truncated_weights_give_clear_error(tmp_path, tiny_model):
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(tiny_model, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TinyGPTError, match=r"model.safetensors is unreadable \(truncated or corrupt"):
        ckpt.load_weights(path)


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(TinyGPTError, match="no checkpoint at"):
        ckpt.load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(TinyGPTError, match="cannot be resumed"):
        ckpt.load_state(tmp_path / "trainer.pt")


def test_weights_that_do_not_match_the_config(tmp_path, tiny_model):
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(tiny_model, path)
    tensors = ckpt.load_weights(path)
    wider = GPTConfig(**{**_settable(tiny_model.config), "n_embd": 64})
    with pytest.raises(TinyGPTError, match="does not match the weights|config does not match"):
        ckpt.assign_weights(GPT(wider), tensors, path)
    deeper = GPTConfig(**{**_settable(tiny_model.config), "n_layer": 3})
    with pytest.raises(TinyGPTError, match="lacks .* tensors"):
        ckpt.assign_weights(GPT(deeper), tensors, path)
    flipped = GPTConfig(**{**_settable(tiny_model.config), "tie_embeddings": not tiny_model.config.tie_embeddings})
    with pytest.raises(TinyGPTError, match="ties them|lacks"):  # a tied file into an untied model, or back
        ckpt.assign_weights(GPT(flipped), tensors, path)


def test_assigned_weights_are_the_file_itself(tmp_path, tiny_model):
    """Meta-device model + assign: no init, no copy; a tied head is tied again."""
    path = tmp_path / "model.safetensors"
    ckpt.save_weights(tiny_model, path)
    tensors = ckpt.load_weights(path)
    with torch.device("meta"):
        model = GPT(tiny_model.config)
    ckpt.assign_weights(model, tensors, path, assign=True)
    assert model.transformer.wte.weight.data_ptr() == tensors["transformer.wte.weight"].data_ptr()
    assert not any(p.is_meta for p in model.parameters())
    if tiny_model.config.tie_embeddings:
        assert model.lm_head.weight is model.transformer.wte.weight


def test_state_loads_without_unpickling_objects(tmp_path):
    path = tmp_path / "trainer.pt"
    state = {"step": 3, "t": torch.arange(4), "rng": (3, tuple(range(5)), None), "nested": {"x": [1.5, "a"]}}
    ckpt.save_state(state, path)
    back = ckpt.load_state(path)
    assert back["step"] == 3 and torch.equal(back["t"], torch.arange(4)) and back["rng"] == state["rng"]

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"x": Evil()}, path)
    with pytest.raises(TinyGPTError, match="refusing to unpickle") as err:
        ckpt.load_state(path)
    # Never pass on torch's advice to load with weights_only=False (that runs the file's code).
    assert "weights_only" not in str(err.value) and "--checkpoint" not in str(err.value)


def _settable(cfg):
    from tinygpt.config import to_dict

    return to_dict(cfg)


def test_written_files_get_normal_permissions(tmp_path, tiny_model):
    mask = os.umask(0o022)
    try:
        ckpt.save_weights(tiny_model, tmp_path / "w.safetensors")
        ckpt.save_state({"step": 1}, tmp_path / "trainer.pt")
        ckpt.atomic_write_text(tmp_path / "config.json", "{}")
    finally:
        os.umask(mask)
    for name in ("w.safetensors", "trainer.pt", "config.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


# ---------------------------------------------------------------------------- our safetensors writer


def test_streamed_safetensors_are_the_packages_own_bytes(tmp_path, tiny_model):
    from safetensors.torch import save

    path = tmp_path / "model.safetensors"
    ckpt.save_weights(tiny_model, path, {"step": 3})
    tensors = ckpt.weight_tensors(tiny_model)
    assert path.read_bytes() == save(tensors, metadata={"tinygpt": json.dumps({"step": 3})})


def test_streamed_safetensors_round_trip_every_dtype_and_shape(tmp_path):
    from safetensors.torch import load_file

    tensors = {"f32": torch.randn(3, 5), "bf16": torch.randn(7).bfloat16(), "f16": torch.randn(2, 2).half(),
               "i64": torch.arange(5), "u8": torch.arange(3, dtype=torch.uint8), "bool": torch.tensor([True, False]),
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "strided": torch.randn(4, 6).t()}
    path = tmp_path / "t.safetensors"
    ckpt.save_tensors(tensors, path)
    back = load_file(str(path))
    assert back.keys() == tensors.keys()
    assert all(back[k].dtype == t.dtype and torch.equal(back[k], t) for k, t in tensors.items())


# ---------------------------------------------------------------------------- a full disk


class FullDisk:
    """A temp file whose disk fills up after ``room`` bytes, as ENOSPC does."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            self.f.write(bytes(data)[: self.room])
            self.room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def fill_disk_at(monkeypatch, room):
    real = ckpt._open_temp

    def open_temp(path):
        tmp, f = real(path)
        return tmp, FullDisk(f, room)

    monkeypatch.setattr(ckpt, "_open_temp", open_temp)


@pytest.mark.parametrize("room", [0, 100, 5000])
@pytest.mark.parametrize("kind", ["weights", "state"])
def test_a_full_disk_mid_write_says_so_and_keeps_the_old_file(tmp_path, tiny_model, monkeypatch, kind, room):
    path = tmp_path / ("last.safetensors" if kind == "weights" else "trainer.pt")
    save = ((lambda: ckpt.save_weights(tiny_model, path, {"step": 1})) if kind == "weights"
            else lambda: ckpt.save_state({"model": ckpt.weight_tensors(tiny_model), "step": 1}, path))
    save()
    before = path.read_bytes()
    fill_disk_at(monkeypatch, room)
    with pytest.raises(ckpt.DiskFullError, match=rf"^the disk is full: {path} needs about [\d.]+ [KM]B and "
                                                 rf"{tmp_path} has [\d.]+ [KMG]?B free; the previous {path.name} "
                                                 "is intact. Free some space"):
        save()
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_a_full_disk_is_found_before_writing_when_the_size_is_known(tmp_path, tiny_model, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000))
    monkeypatch.setattr(ckpt, "_open_temp", lambda path: pytest.fail("nothing may be written"))
    with pytest.raises(ckpt.DiskFullError, match=r"model.safetensors needs about [\d.]+ KB and .* has 1.0 KB free; "
                                                 "nothing was replaced"):
        ckpt.save_weights(tiny_model, tmp_path / "model.safetensors")


def test_writing_over_a_directory_is_a_clear_error(tmp_path):
    (tmp_path / "out.json").mkdir()
    with pytest.raises(TinyGPTError, match="out.json is a directory; give a file path"):
        ckpt.atomic_write_json(tmp_path / "out.json", {})


def test_output_paths_never_go_over_a_users_files_without_force(tmp_path):
    (tmp_path / "taken.gguf").write_text("mine")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("mine")
    assert ckpt.output_file(tmp_path / "new.gguf") == tmp_path / "new.gguf"
    with pytest.raises(TinyGPTError, match="taken.gguf already exists; choose another --out, or pass --force"):
        ckpt.output_file(tmp_path / "taken.gguf")
    assert ckpt.output_file(tmp_path / "taken.gguf", force=True)
    with pytest.raises(TinyGPTError, match="full is a directory"):
        ckpt.output_file(tmp_path / "full", force=True)
    assert ckpt.output_dir(tmp_path / "new") and ckpt.output_dir(tmp_path / "full", force=True)
    with pytest.raises(TinyGPTError, match="--to .*full is not empty; choose a new or empty directory"):
        ckpt.output_dir(tmp_path / "full", flag="--to")
    with pytest.raises(TinyGPTError, match="taken.gguf is a file, not a directory"):
        ckpt.output_dir(tmp_path / "taken.gguf", force=True)
