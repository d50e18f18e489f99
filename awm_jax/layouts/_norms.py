"""Normalisation gains: where a layer's pre-attention and pre-MLP norm gains are, and folding them.

A pre-norm decoder layer reads its residual stream ``x`` through a normalisation
``norm(x) = g * x_hat`` (RMSNorm: ``x_hat = x / rms(x)``; LayerNorm: ``x_hat = (x - mean) / std``,
plus a bias that only adds to the projections' biases): the query is ``Wq (g * x_hat)``. Writing
``Wq' = Wq diag(g)`` and ``g' = 1`` computes the same function, so a model's Q/K Grams change
under this *norm folding* (``K = W^T W`` becomes ``diag(g) K diag(g)``) although the model does
not; a folded model can then have its residual basis densely rotated (SliceGPT / QuaRot). The
canonical form folds every gain first: then a model and any folded copy of it read the same
matrices, the effective maps from the normalised residual to the query, key and MLP inputs.

:class:`NormGains` names a layout's gain tensors by exact templates (``{p}`` prefix, ``{i}``
layer), first present candidate used, so one layout covers the variants of a family (Falcon's
``ln_attn``/``ln_mlp`` or one shared ``input_layernorm``; parallel blocks whose attention and MLP
read one norm). A layout without :class:`NormGains` has no per-dimension gain in front of its
attention (``docs/layouts.md`` says why, per layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from awm_jax.errors import LayoutError, UsageError
from awm_jax.layouts._quant import WeightReader

__all__ = ["NormGains", "NORM_GAIN_MODES", "DEFAULT_NORM_GAINS", "check_norm_gains", "fold_gain"]

from awm_jax.options import DEFAULT_NORM_GAINS, NORM_GAIN_MODES, check_choice  # noqa: E402  (one definition)


def check_norm_gains(mode: str) -> str:
    """``mode`` if it is one of :data:`NORM_GAIN_MODES`, else a ``UsageError`` naming them."""
    return check_choice("norm-gain mode", mode, NORM_GAIN_MODES)


@dataclasses.dataclass(frozen=True)
class NormGains:
    """Where a layout's per-layer normalisation gains are.

    Attributes:
      attention: candidate templates of the norm whose output ``Wq``/``Wk`` read (the first
        present at layer 0 is used for every layer).
      mlp: candidate templates of the norm whose output the MLP inputs read (parallel blocks:
        the attention's norm).
      offset: added to the stored weight to give the gain (Gemma stores ``gain - 1``: 1.0).
      applies: ``config -> bool``; when false the configuration is post-norm (OPT-350m's
        ``do_layer_norm_before = false``) and nothing is folded. ``None``: always.
    """

    attention: tuple[str, ...]
    mlp: tuple[str, ...] = ()
    offset: float = 0.0
    applies: Callable[[Mapping[str, Any]], bool] | None = None

    def _first(self, reader: WeightReader, prefix: str, candidates: tuple[str, ...]) -> str | None:
        return next((t for t in candidates if t.format(p=prefix, i=0) in reader.ckpt), None)

    def bind(self, reader: WeightReader, prefix: str, hidden: int) -> tuple[str | None, str | None]:
        """The attention and MLP gain templates this checkpoint has (``None``: no such gain).

        Only headers are read. A config for which :attr:`applies` is false gives ``(None, None)``.

        Raises:
          LayoutError: a gain tensor is not a ``[hidden]`` vector.
        """
        if self.applies is not None and not self.applies(reader.ckpt.config):
            return None, None
        found = (self._first(reader, prefix, self.attention), self._first(reader, prefix, self.mlp))
        for template in found:
            if template is None:
                continue
            name = template.format(p=prefix, i=0)
            shape = tuple(reader.ckpt.info(name).shape)
            if shape != (hidden,):
                raise LayoutError(
                    f"{reader.ckpt.root}: normalisation gain {name} has shape {shape}, expected ({hidden},); "
                    "the checkpoint does not follow this layout (pass --norm-gains ignore to score the stored "
                    "projections as they are)"
                )
        return found

    def read(self, reader: WeightReader, template: str, prefix: str, layer: int) -> np.ndarray:
        """Layer ``layer``'s gain ``[hidden]`` float32 (stored weight plus :attr:`offset`).

        Raises:
          LayoutError: the tensor is missing (layer 0 has it) or not finite.
        """
        name = template.format(p=prefix, i=layer)
        if name not in reader.ckpt:
            raise LayoutError(
                f"{reader.ckpt.root}: layer {layer} has no normalisation gain {name} but layer 0 has one; "
                "the checkpoint is incomplete (or pass --norm-gains ignore)"
            )
        gain = reader.vector(name)
        if self.offset:
            gain = (gain.astype(np.float64) + self.offset).astype(np.float32)
        if not np.isfinite(gain).all():
            raise LayoutError(f"{reader.ckpt.root}: normalisation gain {name} holds NaN/Inf; the weights are damaged")
        return gain


def fold_gain(w: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """``W diag(g)``: ``[rows, n]`` float32 times ``[n]`` float32 gains, per column (each product
    correctly rounded, so folding here and folding a checkpoint in float32 give the same bits)."""
    return np.ascontiguousarray(w * gain.astype(np.float32)[None, :], dtype=np.float32)
