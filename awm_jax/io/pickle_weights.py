"""Pickle weights (``pytorch_model.bin``, ``*.pt``...): refused unless loading them is asked for
(:func:`pickle_loading`, the CLI's ``--allow-pickle``), and then read only through
``torch.load(weights_only=True)``, which refuses pickled code.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

__all__ = ["PICKLE_INDEX_FILE", "PICKLE_SINGLE_FILE", "PICKLE_SUFFIXES", "NOT_WEIGHTS", "pickle_allowed", "pickle_loading",
           "torch_dtype_names", "torch_reason"]

PICKLE_INDEX_FILE = "pytorch_model.bin.index.json"
PICKLE_SINGLE_FILE = "pytorch_model.bin"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
#: Pickles found beside weights that are not weights (trainer state).
NOT_WEIGHTS = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt")

_ALLOW_PICKLE: contextvars.ContextVar[bool] = contextvars.ContextVar("awm_jax_allow_pickle", default=False)


@contextlib.contextmanager
def pickle_loading(allowed: bool = True) -> Iterator[None]:
    """Sets whether checkpoints opened inside the block may load pickle weights.

    The default of :class:`Checkpoint`'s ``allow_pickle`` argument; the CLI's
    ``--allow-pickle`` uses it, since the pipeline opens the checkpoints.

    Args:
      allowed: load ``pytorch_model.bin`` and similar through ``torch.load(weights_only=True)``.
    """
    token = _ALLOW_PICKLE.set(bool(allowed))
    try:
        yield
    finally:
        _ALLOW_PICKLE.reset(token)


def pickle_allowed() -> bool:
    """Whether checkpoints opened now may load pickle weights (:func:`pickle_loading`)."""
    return _ALLOW_PICKLE.get()


def torch_reason(e: Exception) -> str:
    """The telling line of a ``torch.load`` error (its messages run over many lines)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    telling = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                                "Check the documentation"))]
    return f"{type(e).__name__}: {(telling or lines or [''])[0][:160]}"


def torch_dtype_names(torch: Any) -> dict[Any, str]:
    """torch dtype -> safetensors dtype name, for the dtypes this torch has."""
    pairs = [("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("bfloat16", "BF16"),
             ("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("int64", "I64"), ("int32", "I32"),
             ("int16", "I16"), ("int8", "I8"), ("uint8", "U8"), ("uint16", "U16"), ("uint32", "U32"),
             ("uint64", "U64"), ("bool", "BOOL")]
    return {getattr(torch, attr): name for attr, name in pairs if hasattr(torch, attr)}
