"""LoRA / PEFT adapters read as the model they make: the base with ``scale * B A`` added.

An adapter folder holds ``adapter_config.json`` (``peft_type: LORA``, ``r``, ``lora_alpha``,
``use_rslora``, ``fan_in_fan_out``, ``alpha_pattern``, ``base_model_name_or_path``) and
``adapter_model.safetensors`` with, for every adapted module ``M`` of the base,
``base_model.model.M.lora_A.weight`` ``[r, in]`` and ``base_model.model.M.lora_B.weight``
``[out, r]`` (embeddings: ``M.lora_embedding_A`` ``[r, vocab]`` and ``M.lora_embedding_B``
``[hidden, r]``). :class:`AdapterCheckpoint` presents the base checkpoint with every adapted
weight merged as PEFT merges it:

* ``W' = W + scale * B @ A`` (``(B @ A)^T`` for ``fan_in_fan_out`` ``Conv1D`` weights and for
  embeddings), computed in float32 when the weight (or a block of its rows) is read;
* ``scale = alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``; ``alpha`` is the
  ``alpha_pattern`` entry whose key ends the module name (PEFT's ``.*\\.{key}$`` match), else
  ``lora_alpha``; ``r`` is ``rank_pattern``'s likewise, else ``r``, and must equal the rows of ``A``;
* full weights the adapter saves (``modules_to_save``, resized embeddings) replace the base's;
  a LoRA-targeted layer's own weight, saved as ``M.base_layer.weight`` (PEFT's
  ``save_embedding_layers``, on by default when ``embed_tokens`` is a target), replaces ``M.weight``
  and the delta is added to it, as PEFT loads it.

DoRA (``use_dora``) and other PEFT types are refused by name. The base is the folder or hub id
given to :func:`adapter_base` (the CLI's ``--adapter-base``), else the config's
``base_model_name_or_path`` (a path relative to the adapter folder or the current folder, or a
hub id), opened like any model.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from awm_jax.errors import CheckpointError
from awm_jax.io.checkpoint import Checkpoint, TensorInfo, TensorTable, read_json

__all__ = ["ADAPTER_CONFIG", "AdapterCheckpoint", "LoraDelta", "adapter_base", "find_adapter", "open_adapter"]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."
_LORA = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<kind>A|B|embedding_A|embedding_B)(?:\.default)?(?:\.weight)?$")
_BASE_LAYER = re.compile(r"\.base_layer\.(?P<param>weight|bias)$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")

_BASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("awm_jax_adapter_base", default=None)


@contextlib.contextmanager
def adapter_base(base: str | os.PathLike | None) -> Iterator[None]:
    """Sets the base model of adapters opened inside the block (the CLI's ``--adapter-base``);
    ``None`` keeps each adapter's ``base_model_name_or_path``."""
    token = _BASE.set(None if base is None else os.fspath(base))
    try:
        yield
    finally:
        _BASE.reset(token)


def find_adapter(spec: str | os.PathLike) -> Path | None:
    """The adapter folder ``spec`` names: a folder with ``adapter_config.json`` and no model weights; else ``None``."""
    path = Path(spec)
    if not (path / ADAPTER_CONFIG).is_file():
        return None
    if (path / "model.safetensors").exists() or (path / "model.safetensors.index.json").exists():
        return None
    return path


@dataclasses.dataclass(frozen=True)
class LoraDelta:
    """One adapted weight.

    Attributes:
      weight: the base tensor it changes (``<module>.weight``).
      a: tensor name of ``A`` (``[r, in]``; embeddings ``[r, vocab]``).
      b: tensor name of ``B`` (``[out, r]``; embeddings ``[hidden, r]``).
      scale: ``alpha / r`` (or ``alpha / sqrt(r)``).
      transposed: the delta is ``(B @ A)^T`` (``fan_in_fan_out`` weights, embeddings).
    """

    weight: str
    a: str
    b: str
    scale: float
    transposed: bool


def _pattern(patterns: Any, module: str, default: Any) -> Any:
    """PEFT's ``rank_pattern``/``alpha_pattern`` lookup: the first key that ends the module name."""
    if isinstance(patterns, dict):
        for key, value in patterns.items():
            if module == key or re.match(rf".*\.{key}$", module):
                return value
    return default


class AdapterCheckpoint(TensorTable):
    """A base checkpoint with a LoRA adapter merged into the weights it targets.

    Args:
      folder: the adapter folder.
      base: the opened base checkpoint (:class:`~awm_jax.io.checkpoint.Checkpoint` or a GGUF one).

    Raises:
      CheckpointError: the adapter config or weights are unreadable, of a type other than LoRA,
        inconsistent with each other, or target weights the base does not hold as float tensors.
    """

    def __init__(self, folder: Path, base: Any):
        self.root = folder.resolve()
        self.base = base
        config = _read_config(self.root)
        weights = self.root / ADAPTER_WEIGHTS
        if not os.path.lexists(weights):
            raise CheckpointError(f"{weights}: is missing (the adapter's weights); fetch the adapter again")
        self.adapter = Checkpoint(self.root)  # the folder's one safetensors file: headers checked, read lazily
        self.files = [*base.files, weights]
        self.config = {**base.config, "adapter": {k: config.get(k) for k in (
            "peft_type", "r", "lora_alpha", "use_rslora", "fan_in_fan_out", "alpha_pattern", "rank_pattern",
            "target_modules") if k in config}}
        self.deltas: dict[str, LoraDelta] = {}
        self.replaced: dict[str, str] = {}
        self._scan(config)
        self.tensors: dict[str, TensorInfo] = dict(base.tensors)
        for name in self.replaced:
            self.tensors[name] = self.adapter.info(self.replaced[name])
        for name, delta in self.deltas.items():
            info = self.tensors[name]
            self.tensors[name] = dataclasses.replace(info, dtype="F32", nbytes=math.prod(info.shape) * 4)
        folder_names = set(os.listdir(self.root))
        self.vocabulary_folder = self.root if folder_names & set(_TOKENIZER_FILES) else Path(base.root)

    def _scan(self, config: dict[str, Any]) -> None:
        parts: dict[str, dict[str, str]] = {}
        for name in self.adapter.tensors:
            m = _LORA.match(name)
            if m is not None:
                parts.setdefault(m["module"], {})[m["kind"]] = name
            elif name.startswith(_PREFIX):
                target = name[len(_PREFIX):]
                target = target.replace(".modules_to_save.default.", ".")
                # a LoRA-wrapped layer's own weight (PEFT's save_embedding_layers): M.base_layer.weight is M.weight
                target = _BASE_LAYER.sub(r".\g<param>", target)
                if target not in self.base.tensors:
                    raise CheckpointError(
                        f"{self.root / ADAPTER_WEIGHTS}: saves {target!r}, which the base {self.base.root} does not hold; "
                        "the adapter belongs to another base model: pass its base with --adapter-base"
                    )
                self.replaced[target] = name
        r_default = config.get("r")
        alpha_default = config.get("lora_alpha", r_default)
        fan_in_fan_out = bool(config.get("fan_in_fan_out", False))
        for module, found in parts.items():
            embedding = "embedding_A" in found or "embedding_B" in found
            a, b = (found.get("embedding_A"), found.get("embedding_B")) if embedding else (found.get("A"), found.get("B"))
            where = f"{self.root / ADAPTER_WEIGHTS}: {module}"
            if a is None or b is None:
                raise CheckpointError(f"{where} has only one of lora_A/lora_B; the adapter is incomplete: fetch it again")
            weight = f"{module}.weight"
            # the weight the delta is added to: the adapter's saved copy (resized embeddings) or the base's
            holder = self.adapter if weight in self.replaced else self.base
            held = self.replaced.get(weight, weight)
            if held not in holder.tensors or holder.info(held).dtype not in ("F64", "F32", "F16", "BF16"):
                raise CheckpointError(
                    f"{where} adapts {weight}, which the base {self.base.root} does not hold as a float tensor; pass the "
                    "float base model with --adapter-base"
                )
            a_shape, b_shape = self.adapter.info(a).shape, self.adapter.info(b).shape
            out_in = holder.info(held).shape
            transposed = embedding or fan_in_fan_out
            product = (b_shape[0], a_shape[1]) if len(a_shape) == 2 and len(b_shape) == 2 else None
            expected = tuple(reversed(out_in)) if transposed else tuple(out_in)
            if product is None or a_shape[0] != b_shape[1] or product != expected:
                raise CheckpointError(
                    f"{where}: lora A {a_shape} and B {b_shape} do not make a delta of the base weight's shape "
                    f"{tuple(out_in)}; the adapter belongs to another base model: pass its base with --adapter-base"
                )
            rank = a_shape[0]
            r = _pattern(config.get("rank_pattern"), module, r_default)
            alpha = _pattern(config.get("alpha_pattern"), module, alpha_default)
            if not isinstance(r, (int, float)) or isinstance(r, bool) or r != rank or not isinstance(alpha, (int, float)):
                raise CheckpointError(
                    f"{self.root / ADAPTER_CONFIG}: r {r!r} / lora_alpha {alpha!r} for {module} do not fit its lora_A of "
                    f"rank {rank}; fix adapter_config.json"
                )
            scale = float(alpha) / (math.sqrt(rank) if config.get("use_rslora") else rank)
            self.deltas[weight] = LoraDelta(weight, a, b, scale, transposed)

    @property
    def form(self) -> str:
        """What was scored, for reports: ``"LoRA adapter (N weights, rank r) merged into BASE"``."""
        ranks = sorted({self.adapter.info(d.a).shape[0] for d in self.deltas.values()})
        return (f"LoRA adapter ({len(self.deltas)} weights, rank {'/'.join(map(str, ranks)) or '-'}) merged into "
                f"{self.base.root}")

    def __repr__(self) -> str:
        return f"AdapterCheckpoint({str(self.root)!r}, {len(self.deltas)} merged weights on {self.base!r})"

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Reads one tensor (or a block of rows): merged weights as float32 ``W + scale * delta``."""
        delta = self.deltas.get(name)
        if name in self.replaced:
            w = self.adapter.read(self.replaced[name], rows)
        else:
            w = self.base.read(name, rows)
        if delta is None:
            return w
        w = np.asarray(w, np.float32)
        a = np.asarray(self.adapter.read(delta.a), np.float32)
        b = np.asarray(self.adapter.read(delta.b), np.float32)
        r0, r1 = (0, w.shape[0] + 0) if rows is None else rows.indices(self.tensors[name].shape[0])[:2]
        if delta.transposed:
            d = a[:, r0:r0 + w.shape[0]].T @ b.T  # rows of (B A)^T
        else:
            d = b[r0:r0 + w.shape[0]] @ a
        return (w + np.float32(delta.scale) * d).astype(np.float32)

    def map(self, name: str) -> np.ndarray:
        """The whole tensor: the base's memory map when the adapter leaves it unchanged."""
        if name in self.deltas or name in self.replaced:
            return self.read(name)
        return self.base.map(name)


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    config = read_json(path, CheckpointError, "fix or replace adapter_config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a JSON object; fix or replace adapter_config.json")
    kind = config.get("peft_type", "LORA")
    if kind != "LORA":
        raise CheckpointError(f"{path}: peft_type {str(kind)[:40]!r} is not LoRA; awm_jax merges LoRA adapters only: "
                              "merge the adapter into its base (peft merge_and_unload) and compare the result")
    if config.get("use_dora"):
        raise CheckpointError(f"{path}: a DoRA adapter (use_dora), which awm_jax does not merge; merge it into its base "
                              "(peft merge_and_unload) and compare the result")
    return config


def open_adapter(folder: Path, open_base: Callable[[str], Any]) -> AdapterCheckpoint:
    """Opens an adapter folder over its base.

    Args:
      folder: the adapter folder (:func:`find_adapter`).
      open_base: opens a model spec (folder, ``.gguf`` file or hub id) as a checkpoint.

    Raises:
      CheckpointError: no base is given and the config names none, or it cannot be found.
    """
    config = _read_config(folder)
    base = _BASE.get()
    if base is None:
        named = config.get("base_model_name_or_path")
        if not isinstance(named, str) or not named:
            raise CheckpointError(
                f"{folder / ADAPTER_CONFIG}: names no base_model_name_or_path; pass the base model with --adapter-base"
            )
        local = folder / named
        base = os.fspath(local) if not os.path.isabs(named) and local.exists() else named
    if find_adapter(base) is not None:
        raise CheckpointError(
            f"{folder / ADAPTER_CONFIG}: its base {base} is itself an adapter folder; pass the base model with "
            "--adapter-base"
        )
    return AdapterCheckpoint(folder, open_base(base))
