"""Architecture layouts: which tensors of a checkpoint are E, Wq_l and Wk_l (and the MLP inputs).

The registry maps layout names to :class:`Layout` descriptions; :func:`detect` picks one for a
checkpoint and binds it:

1. an override (the CLI's ``--layout``): a registry name, or the path of a TOML layout file
   describing a custom model (``docs/layouts.md``);
2. else ``config.json``: its ``architectures`` and ``model_type`` (the language model's
   ``text_config`` first, for wrapped multimodal checkpoints), taking the first named layout
   whose tensors are present;
3. else the tensor names: every layout whose exact templates are present is tried; if they
   disagree on layer 0's Q/K the checkpoint is ambiguous and an override is asked for.

Families live one (or a few closely related) per module; adding a family means adding a
module and registering it here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from awm_jax.io.checkpoint import Checkpoint
from awm_jax.errors import AWMError, LayoutError, UsageError
from awm_jax.layouts._base import LM_PREFIXES, Layout, ResolvedLayout
from awm_jax.layouts._dims import Dims, MLADims, config_scopes, config_value
from awm_jax.layouts._mlp import Experts, FusedGatedMLP, GatedMLP, MLPInput, PlainMLP
from awm_jax.layouts._norms import DEFAULT_NORM_GAINS, NORM_GAIN_MODES, NormGains, check_norm_gains, fold_gain
from awm_jax.layouts._projections import SPLIT_RULES, FusedSplit, Projection, Separate
from awm_jax.layouts._quant import QUANT_SIDE_SUFFIXES, WeightReader
from awm_jax.layouts._userfile import DOC, load_layout_file
from awm_jax.layouts.baichuan import BAICHUAN
from awm_jax.layouts.chatglm import CHATGLM
from awm_jax.layouts.deepseek import DEEPSEEK
from awm_jax.layouts.gpt2 import GPT2
from awm_jax.layouts.gpt_bigcode import GPT_BIGCODE
from awm_jax.layouts.gptj import GPTJ
from awm_jax.layouts.internlm2 import INTERNLM2
from awm_jax.layouts.llama import LLAMA_LIKE
from awm_jax.layouts.mpt import MPT
from awm_jax.layouts.neox import BLOOM, FALCON, GPT_NEOX
from awm_jax.layouts.opt import OPT
from awm_jax.layouts.persimmon import PERSIMMON
from awm_jax.layouts.phi3 import PHI3
from awm_jax.layouts.qwen1 import QWEN1

__all__ = [
    "DEFAULT_NORM_GAINS",
    "Dims",
    "Experts",
    "FusedGatedMLP",
    "FusedSplit",
    "GatedMLP",
    "LM_PREFIXES",
    "Layout",
    "MLADims",
    "MLPInput",
    "NORM_GAIN_MODES",
    "NormGains",
    "PlainMLP",
    "Projection",
    "QUANT_SIDE_SUFFIXES",
    "REGISTRY",
    "ResolvedLayout",
    "SPLIT_RULES",
    "Separate",
    "WeightReader",
    "check_norm_gains",
    "detect",
    "fold_gain",
    "load_layout_file",
    "register",
]

#: Layout name -> layout, in detection-fallback order.
REGISTRY: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    """Adds a layout to the registry (names are unique)."""
    if layout.name in REGISTRY:
        raise ValueError(f"layout {layout.name!r} is already registered")
    REGISTRY[layout.name] = layout
    return layout


for _layout in (*LLAMA_LIKE, PHI3, DEEPSEEK, GPT2, GPT_BIGCODE, QWEN1, GPT_NEOX, BLOOM, FALCON, MPT, BAICHUAN,
                CHATGLM, INTERNLM2, GPTJ, OPT, PERSIMMON):
    register(_layout)


def _config_candidates(config: dict) -> list[Layout]:
    """Registered layouts the config names, language-model config first."""
    out: list[Layout] = []
    for scope in config_scopes(config):
        archs = scope.get("architectures") or []
        for arch in archs if isinstance(archs, list) else []:
            out += [lay for lay in REGISTRY.values() if isinstance(arch, str) and arch in lay.architectures]
        mtype = scope.get("model_type")
        if isinstance(mtype, str):
            out += [lay for lay in REGISTRY.values() if mtype in lay.model_types]
    return list(dict.fromkeys(out))


def _name_patterns(names: list[str], limit: int = 24) -> str:
    """Distinct tensor-name patterns (layer and expert numbers as ``N``), for error messages."""
    patterns = sorted({re.sub(r"\.\d+(?=\.)", ".N", n) for n in names})
    shown = patterns[:limit]
    more = len(patterns) - len(shown)
    return ", ".join(shown) + (f", ... ({more} more patterns)" if more > 0 else "")


def _by_tensor_names(ckpt: Checkpoint) -> ResolvedLayout | None:
    """The layout the tensor names imply, if all layouts that fit read layer 0 alike."""
    fitting: list[ResolvedLayout] = []
    errors: list[AWMError] = []
    for layout in REGISTRY.values():
        try:
            if layout.find_prefix(ckpt) is not None:
                fitting.append(layout.resolve(ckpt))
        except AWMError as e:
            errors.append(e)
    if not fitting:
        if errors:
            raise errors[0]  # the names fit but the tensors or config do not: that is the problem to report
        return None
    # Layouts that differ only in their MLP or config keys read Q/K identically: compare one of each.
    readings: dict[tuple, ResolvedLayout] = {}
    for r in fitting:
        lay = r.layout
        readings.setdefault((lay.embedding, lay.query, lay.key, lay.dims, lay.embedding_projection, r.prefix), r)
    first, *others = readings.values()
    if others:
        q0, k0 = first.read_qk(0)
        for other in others:
            q, k = other.read_qk(0)
            if q.shape != q0.shape or k.shape != k0.shape or not (np.array_equal(q, q0) and np.array_equal(k, k0)):
                names = ", ".join(r.name for r in readings.values())
                raise LayoutError(
                    f"{ckpt.root}: the tensor names fit layouts that read layer 0 differently ({names}) and "
                    f"config.json does not say which; pass --layout with one of them"
                )
    # Same Q/K everywhere: prefer a layout whose MLP tensors are present too.
    reader = WeightReader(ckpt)
    for r in fitting:
        if any(spec.present(reader, r.prefix, 0) for spec in r.layout.mlp):
            return r
    return fitting[0]


def detect(ckpt: Checkpoint, override: str | os.PathLike | None = None) -> ResolvedLayout:
    """Chooses and binds the layout of a checkpoint.

    Args:
      ckpt: the checkpoint.
      override: a registry name, or the path of a TOML layout file (the CLI's ``--layout``).

    Returns:
      The layout bound to ``ckpt``.

    Raises:
      UsageError: ``override`` is neither a registered name nor a readable layout file.
      LayoutError: no layout fits the tensors (the message lists the tensor-name patterns and
        points to the layout-file documentation), or the tensors contradict the config.
    """
    if override is not None:
        text = os.fspath(override)
        if text in REGISTRY:
            return REGISTRY[text].resolve(ckpt)
        if text.endswith(".toml") or Path(text).is_file():
            if not Path(text).is_file():
                raise UsageError(f"{text}: layout file not found; check the path")
            return load_layout_file(text).resolve(ckpt)
        raise UsageError(
            f"unknown layout {text!r}; use one of {', '.join(REGISTRY)} or the path of a .toml layout file ({DOC})"
        )
    for layout in _config_candidates(ckpt.config):
        if layout.find_prefix(ckpt) is not None:
            return layout.resolve(ckpt)
    found = _by_tensor_names(ckpt)
    if found is not None:
        return found
    arch = config_value(ckpt.config, "architectures", default=None) or config_value(
        ckpt.config, "model_type", default="(none)")
    raise LayoutError(
        f"{ckpt.root}: no known layout fits (config architectures/model_type: {arch}; tensor names: "
        f"{_name_patterns(list(ckpt.tensors))}); pass --layout with one of {', '.join(REGISTRY)}, or describe the "
        f"model in a layout file ({DOC})"
    )
