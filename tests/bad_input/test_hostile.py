"""Hostile content: code in a model folder never runs; pickles load only when asked, and then only
through ``torch.load(weights_only=True)``; legitimate symlinks (the Hugging Face cache) still work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from awm_jax.io.checkpoint import Checkpoint, pickle_loading
from awm_jax.errors import CheckpointError, UsageError

from .cases import SENTINEL, by_name, good_model, prepare, run_in_process, snapshot

ROOT = Path(__file__).resolve().parents[2]

#: Module names a model folder could hold to be imported by mistake: remote-code files, and
#: names of modules the CLI imports (``python -m`` puts the current folder on the import path).
HOSTILE_MODULES = ("modeling_evil", "configuration_evil", "tokenization_evil", "__init__", "json", "argparse",
                   "tempfile", "types", "numpy", "jax", "scipy", "safetensors", "ml_dtypes", "sentencepiece")


def test_code_in_a_model_folder_never_runs(tmp_path):
    folder = good_model(tmp_path)
    sentinel = tmp_path / SENTINEL
    for name in HOSTILE_MODULES:
        (folder / f"{name}.py").write_text(f"open({str(sentinel)!r}, 'a').write({name!r} + '\\n')\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["tokenization_evil.T", None]}}))
    before = snapshot(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # Run from inside the hostile folder, the worst case for `python -m`.
    proc = subprocess.run([sys.executable, "-m", "awm_jax.compare", ".", str(folder), "--no-cache", "--quiet"],
                          cwd=folder, capture_output=True, text=True, check=False, env=env, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert "\tmean 1.000000\t" in proc.stdout  # the comparison ran on the weights, and nothing else did
    assert not sentinel.exists(), f"imported from the model folder: {sentinel.read_text().split()}"
    assert snapshot(tmp_path) == before, "a successful comparison wrote into a model folder"


def test_pickle_is_refused_by_default_and_never_unpickled(tmp_path):
    case = by_name("pickle_only")
    args = prepare(case, tmp_path)
    with pytest.raises(CheckpointError, match="not loaded by default because unpickling can run code"):
        Checkpoint(args[0])
    with pickle_loading(False), pytest.raises(CheckpointError, match="--allow-pickle"):
        Checkpoint(args[0], allow_pickle=None)
    assert not (tmp_path / SENTINEL).exists()


def test_allow_pickle_without_torch_is_a_usage_error(tmp_path):
    case = by_name("pickle_without_torch")
    args = prepare(case, tmp_path)
    outcome = run_in_process(case, tmp_path, args)
    assert outcome.code == UsageError.exit_code and "needs PyTorch" in outcome.stderr
    assert not (tmp_path / SENTINEL).exists()


# -- pickle loading, against a stand-in for torch (CI has no PyTorch) -------------------------------


class _FakeTensor:
    """The part of ``torch.Tensor`` that Checkpoint uses, over a numpy array."""

    def __init__(self, array: np.ndarray, dtype: str):
        self.array, self.dtype = array, dtype
        self.shape = array.shape
        self.layout = "strided"

    def detach(self):
        return self

    def contiguous(self):
        return _FakeTensor(np.ascontiguousarray(self.array), self.dtype)

    def __getitem__(self, index):
        return _FakeTensor(self.array[index], self.dtype)

    def view(self, dtype: str):
        return _FakeTensor(self.array.view({"int16": np.int16, "uint8": np.uint8}[dtype]), dtype)

    def numpy(self):
        return self.array


def _fake_torch(state, calls: list, legacy: bool = False) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.Tensor = _FakeTensor
    torch.strided = "strided"
    for name in ("float32", "bfloat16", "int16", "uint8", "float16"):
        setattr(torch, name, name)

    def load(f, **kwargs):
        calls.append(kwargs)
        if legacy and kwargs.get("mmap"):
            raise RuntimeError("mmap can only be used with files saved with `torch.save(_use_new_zipfile_serialization=True)`")
        if not kwargs.get("weights_only"):
            raise AssertionError("pickles must be loaded with weights_only=True")
        return state

    torch.load = load
    return torch


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_allow_pickle_loads_through_weights_only(tmp_path, monkeypatch, legacy):
    e = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = (np.arange(6, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16).reshape(2, 3)
    state = {"state_dict": {"e": _FakeTensor(e, "float32"), "b": _FakeTensor(b.view(np.int16), "bfloat16"), "n": 3}}
    state["state_dict"]["b"].array = b  # stored as bf16; viewed as int16 on the way out, as torch does
    calls: list = []
    monkeypatch.setitem(sys.modules, "torch", _fake_torch(state, calls, legacy))
    (tmp_path / "pytorch_model.bin").write_bytes(b"stand-in")
    (tmp_path / "training_args.bin").write_bytes(b"not weights")
    ckpt = Checkpoint(tmp_path, allow_pickle=True)
    assert calls[0] == {"map_location": "cpu", "weights_only": True, "mmap": True}
    assert all(c["weights_only"] for c in calls) and len(calls) == (2 if legacy else 1)
    assert ckpt.files == [tmp_path.resolve() / "pytorch_model.bin"]
    assert ckpt.info("e").dtype == "F32" and ckpt.info("b").dtype == "BF16" and "n" not in ckpt
    np.testing.assert_array_equal(ckpt.read("e"), e)
    np.testing.assert_array_equal(ckpt.read("e", slice(1, 3)), e[1:3])
    np.testing.assert_array_equal(ckpt.read("b").astype(np.float32), b.astype(np.float32))
    with pickle_loading():  # the CLI's --allow-pickle sets the default the same way
        assert Checkpoint(tmp_path).info("e").shape == (4, 3)


def test_allow_pickle_reports_what_torch_refused(tmp_path, monkeypatch):
    torch = _fake_torch({}, [])

    def refuse(f, **kwargs):
        raise RuntimeError("Weights only load failed.\nTrying to load unsupported GLOBAL posix.system\nCheck the docs")

    torch.load = refuse
    monkeypatch.setitem(sys.modules, "torch", torch)
    (tmp_path / "pytorch_model.bin").write_bytes(b"stand-in")
    with pytest.raises(CheckpointError, match=r"refused it \(RuntimeError: Trying to load unsupported GLOBAL posix.system\)"):
        Checkpoint(tmp_path, allow_pickle=True)


# -- the same with PyTorch, where it is installed ----------------------------------------------------


def test_real_torch_hostile_pickle_and_state_dict(tmp_path):
    torch = pytest.importorskip("torch")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / SENTINEL}",))

    hostile = tmp_path / "hostile"
    hostile.mkdir()
    torch.save({"x": Payload()}, hostile / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint(hostile, allow_pickle=True)
    assert not (tmp_path / SENTINEL).exists()

    good = good_model(tmp_path)
    reference = Checkpoint(good)
    state = {n: torch.from_numpy(reference.read(n).copy()) for n in reference.tensors}
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"].to(torch.bfloat16)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(state, pickled / "pytorch_model.bin")
    ckpt = Checkpoint(pickled, allow_pickle=True)
    assert set(ckpt.tensors) == set(reference.tensors) and ckpt.info("model.embed_tokens.weight").dtype == "BF16"
    for name in reference.tensors:
        expected = state[name].float().numpy()
        np.testing.assert_array_equal(ckpt.read(name).astype(np.float32), expected)


def test_symlinks_out_of_the_folder_are_followed_like_the_hub_cache(tmp_path):
    """Hugging Face snapshots link each file to ../../blobs/<hash>; that must keep working."""
    source = good_model(tmp_path)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for f in source.iterdir():
        (blobs / f.name).write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", f.name))
    ckpt = Checkpoint(snapshot)
    np.testing.assert_array_equal(ckpt.read("model.embed_tokens.weight"), Checkpoint(source).read("model.embed_tokens.weight"))
