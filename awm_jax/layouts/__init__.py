"""Architecture layouts: which tensors of a checkpoint are E, Wq_l and Wk_l.

The registry maps layout names to :class:`Layout` descriptions; :func:`detect` picks one for a
checkpoint from ``config.json`` (``architectures``, ``model_type``, also inside ``text_config``
for wrapped multimodal models), falling back to the tensor names, and binds it.
Families live one per module; adding a family means adding a module and registering it here.
"""

from __future__ import annotations

from awm_jax.checkpoint import Checkpoint
from awm_jax.errors import LayoutError, UsageError
from awm_jax.layouts._base import Dims, FusedSplit, Layout, Projection, ResolvedLayout, Separate, config_value
from awm_jax.layouts.gpt2 import GPT2
from awm_jax.layouts.llama import LLAMA

__all__ = [
    "Dims",
    "FusedSplit",
    "Layout",
    "Projection",
    "REGISTRY",
    "ResolvedLayout",
    "Separate",
    "detect",
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


for _layout in (LLAMA, GPT2):
    register(_layout)


def _config_candidates(config: dict) -> list[Layout]:
    archs: list[str] = []
    types: list[str] = []
    for scope in (config, config.get("text_config") or {}, config.get("llm_config") or {}):
        if isinstance(scope, dict):
            archs += [a for a in scope.get("architectures") or [] if isinstance(a, str)]
            if isinstance(scope.get("model_type"), str):
                types.append(scope["model_type"])
    out = [lay for a in archs for lay in REGISTRY.values() if a in lay.architectures]
    out += [lay for t in types for lay in REGISTRY.values() if t in lay.model_types]
    return list(dict.fromkeys(out))


def detect(ckpt: Checkpoint, override: str | None = None) -> ResolvedLayout:
    """Chooses and binds the layout of a checkpoint.

    Args:
      ckpt: the checkpoint.
      override: a registry name forcing the layout (the CLI's ``--layout``).

    Raises:
      UsageError: ``override`` names no registered layout.
      LayoutError: no layout fits the tensors; the message lists some tensor names.
    """
    if override is not None:
        if override not in REGISTRY:
            raise UsageError(f"unknown layout {override!r}; known layouts: {', '.join(REGISTRY)}")
        return REGISTRY[override].resolve(ckpt)
    for layout in _config_candidates(ckpt.config):
        if layout.find_prefix(ckpt) is not None:
            return layout.resolve(ckpt)
    for layout in REGISTRY.values():
        if layout.find_prefix(ckpt) is not None:
            return layout.resolve(ckpt)
    names = sorted(ckpt.tensors)
    shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
    arch = config_value(ckpt.config, "architectures", "model_type", default="(none)")
    raise LayoutError(
        f"{ckpt.root}: no known layout fits (config architectures/model_type: {arch}; tensors: {shown}); "
        f"pass --layout with one of {', '.join(REGISTRY)} or describe the model in a layout file (docs/layouts.md)"
    )
