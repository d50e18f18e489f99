"""Access to the architecture fixtures (``tests/fixtures/architectures``) and checkpoint writers.

The fixtures and their truth are made by ``tests/fixtures/architectures/generate.py`` (see its
docstring); ``MANIFEST.json`` lists every case with its layout, weight class and provenance.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import ml_dtypes
import numpy as np

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.synthetic import write_model

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "architectures"
MANIFEST = json.loads((FIXTURES / "MANIFEST.json").read_text())
CASES = sorted(MANIFEST["cases"])
#: The reference fixture of each weight class: the other members hold the same E, Wq, Wk in other layouts.
CLASS_REFERENCE = {"mha": "llama", "gqa": "llama_gqa", "mqa": "llama_mqa", "mla": "deepseek_v2"}
#: Relative tolerance of extracted vs captured rows (float32 captures of bf16/fp32 weights).
RTOL = 2e-6


def case_dir(case: str) -> Path:
    return FIXTURES / case


@functools.cache
def class_arrays(wclass: str) -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "classes" / f"{wclass}.npz") as data:
        return {k: data[k] for k in data.files}


@functools.cache
def expected_arrays(case: str) -> dict[str, np.ndarray]:
    with np.load(case_dir(case) / "expected.npz") as data:
        return {k: data[k] for k in data.files}


def truth_qk(case: str, layer: int) -> tuple[np.ndarray, np.ndarray]:
    """The captured ``Wq``, ``Wk`` of ``case``'s layer (its class's, or its own for quantised copies)."""
    info = MANIFEST["cases"][case]
    if info["qk"] == "own":
        exp = expected_arrays(case)
        return exp[f"q.{layer}"], exp[f"k.{layer}"]
    arrays = class_arrays(info["class"])
    return arrays[f"q{layer}"], arrays[f"k{layer}"]


def truth_embedding(case: str) -> np.ndarray:
    info = MANIFEST["cases"][case]
    if info["embedding"] == "own":
        return expected_arrays(case)["embedding"]
    return class_arrays(info["class"])["embedding"]


def truth_mlp(case: str, layer: int) -> list[dict[str, np.ndarray]]:
    exp = expected_arrays(case)
    blocks = MANIFEST["cases"][case]["mlp_blocks"][layer]
    return [{part: exp[f"mlp.{layer}.{b}.{part}"] for part in ("gate", "up") if f"mlp.{layer}.{b}.{part}" in exp}
            for b in range(blocks)]


def assert_same_rows(got: np.ndarray, want: np.ndarray, what: str, rtol: float = RTOL) -> None:
    """``got`` holds exactly ``want``'s rows, in some order (within ``rtol`` of the largest entry)."""
    assert got.shape == want.shape, f"{what}: shape {got.shape}, expected {want.shape}"
    scale = float(np.abs(want).max())
    dist = np.abs(got[:, None, :].astype(np.float64) - want[None, :, :]).max(-1)  # [got rows, want rows]
    nearest = dist.argmin(axis=1)
    assert len(set(nearest.tolist())) == len(nearest), f"{what}: rows do not correspond one to one"
    worst = float(dist.min(axis=1).max())
    assert worst <= rtol * scale, f"{what}: a row is off by {worst:.3g} (tolerance {rtol * scale:.3g})"


def rewrite(case: str, folder: Path, transform) -> Path:
    """Copies fixture ``case`` to ``folder`` with every floating tensor passed through ``transform(name, a)``.

    Tensors are written as float32 (FP8 and integer side tensors are copied unchanged).
    """
    src = Checkpoint(case_dir(case))
    specs = []
    for name in sorted(src.tensors):
        arr = src.read(name)
        if arr.dtype in (np.dtype(ml_dtypes.bfloat16), np.dtype(np.float16), np.dtype(np.float32)):
            out = np.asarray(transform(name, arr.astype(np.float32)), dtype=np.float32)
        else:
            out = arr
        specs.append((name, out.shape, out.dtype, (lambda a=out: a)))
    write_model(folder, specs, src.config)
    shutil.copy(case_dir(case) / "tokenizer.json", folder / "tokenizer.json")
    return folder
