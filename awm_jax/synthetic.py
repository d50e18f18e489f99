"""Synthetic checkpoints: write model folders that awm_jax (and transformers) can read.

Used by the tests, the benchmarks and the examples to build checkpoints of real shapes without
downloading anything. Tensors are written in a streaming fashion (header first, then one tensor
at a time), so a checkpoint of any size needs only one tensor in memory; sharded checkpoints
get a ``model.safetensors.index.json``.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

__all__ = ["TensorSpec", "write_safetensors", "write_model", "llama_config", "wordlevel_tokenizer"]

_DTYPE_NAMES = {
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(ml_dtypes.bfloat16): "BF16",
    np.dtype(np.float64): "F64",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint8): "U8",
    np.dtype(np.int32): "I32",
    np.dtype(ml_dtypes.float8_e4m3fn): "F8_E4M3",
}

#: A tensor to write: name, shape, dtype and a function producing its values.
TensorSpec = tuple[str, tuple[int, ...], np.dtype, Callable[[], np.ndarray]]


def write_safetensors(path: str | os.PathLike, specs: Iterable[TensorSpec], metadata: Mapping[str, str] | None = None) -> None:
    """Writes a safetensors file, producing one tensor at a time.

    Args:
      path: output file.
      specs: ``(name, shape, dtype, make)`` per tensor; ``make()`` is called once, in order.
      metadata: optional ``__metadata__`` strings.
    """
    specs = list(specs)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, shape, dtype, _ in specs:
        size = math.prod(shape) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _DTYPE_NAMES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name, shape, dtype, make in specs:
            arr = np.require(np.asarray(make(), dtype=dtype), requirements="C")
            if arr.shape != tuple(shape):
                raise ValueError(f"{name}: produced shape {arr.shape}, declared {tuple(shape)}")
            f.write(arr.tobytes())
    os.replace(tmp, path)


def wordlevel_tokenizer(tokens: list[str]) -> dict:
    """A minimal ``tokenizer.json`` (WordLevel model) for the given tokens, id = position."""
    return {
        "version": "1.0",
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens)}, "unk_token": tokens[0]},
    }


def llama_config(vocab: int, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int | None = None,
                 intermediate: int | None = None, dtype: str = "bfloat16") -> dict:
    """A ``LlamaForCausalLM`` ``config.json``."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "head_dim": head_dim or hidden // heads, "intermediate_size": intermediate or 4 * hidden,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": dtype,
        "max_position_embeddings": 2048, "hidden_act": "silu",
    }


def write_model(
    folder: str | os.PathLike,
    specs: list[TensorSpec],
    config: Mapping,
    tokens: list[str] | None = None,
    shard_bytes: int | None = None,
) -> Path:
    """Writes a model folder: safetensors weights (sharded with an index above ``shard_bytes``),
    ``config.json`` and a WordLevel ``tokenizer.json``.

    Args:
      folder: output folder (created).
      specs: tensors, in file order.
      config: ``config.json`` contents.
      tokens: vocabulary strings (id = position); no tokenizer file when ``None``.
      shard_bytes: maximum bytes per shard; one ``model.safetensors`` when ``None``.

    Returns:
      The folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if shard_bytes is None:
        write_safetensors(folder / "model.safetensors", specs)
    else:
        shards: list[list[TensorSpec]] = [[]]
        size = 0
        for spec in specs:
            nbytes = math.prod(spec[1]) * np.dtype(spec[2]).itemsize
            if shards[-1] and size + nbytes > shard_bytes:
                shards.append([])
                size = 0
            shards[-1].append(spec)
            size += nbytes
        weight_map = {}
        for i, group in enumerate(shards):
            name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            write_safetensors(folder / name, group)
            weight_map.update({spec[0]: name for spec in group})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1))
    (folder / "config.json").write_text(json.dumps(dict(config), indent=1))
    if tokens is not None:
        (folder / "tokenizer.json").write_text(json.dumps(wordlevel_tokenizer(tokens)))
    return folder
