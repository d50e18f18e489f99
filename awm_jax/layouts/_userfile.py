"""User layout files: describe a custom model's tensors in TOML (see ``docs/layouts.md``).

A layout file names the input embedding and each layer's query and key by exact templates
(``{i}`` is the layer index), either as two separate tensors or as one fused QKV tensor with a
split rule::

    name = "my-decoder"
    embedding = "tok_emb.weight"
    prefix = ""                     # optional: tensor names are taken as written

    [qkv]
    tensor = "blocks.{i}.attn.wqkv.weight"
    split = "per_group"             # "blocks", "per_head" or "per_group"
    transposed = false              # true for Conv1D-style [hidden, out] storage

    [dims]                          # optional; defaults come from config.json
    heads = 8
    kv_heads = 2
    head_dim = 64

    [mlp]                           # optional
    gate = "blocks.{i}.ffn.w1.weight"
    up = "blocks.{i}.ffn.w3.weight"

    [norms]                         # optional: pre-norm gains, folded in the canonical mode
    attention = "blocks.{i}.attn_norm.weight"
    mlp = "blocks.{i}.ffn_norm.weight"
    gain_offset = 0.0               # 1.0 when the stored weight is gain - 1 (Gemma)

Separate projections use ``[query] tensor = ...`` and ``[key] tensor = ...`` instead of
``[qkv]``. Unknown keys are errors, so a typo cannot silently change what is read.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from awm_jax.errors import UsageError
from awm_jax.layouts._base import Layout
from awm_jax.layouts._dims import Dims
from awm_jax.layouts._mlp import GatedMLP, MLPSpec, PlainMLP
from awm_jax.layouts._norms import NormGains
from awm_jax.layouts._projections import SPLIT_RULES, FusedSplit, Projection, Separate

__all__ = ["load_layout_file", "DOC"]

#: Where the format is documented, for messages.
DOC = "docs/layouts.md"

_TOP = {"name", "embedding", "prefix", "query", "key", "qkv", "dims", "mlp", "norms", "num_layers_key", "hidden_key"}
_SECTIONS = {
    "query": {"tensor", "transposed"},
    "key": {"tensor", "transposed"},
    "qkv": {"tensor", "split", "transposed"},
    "dims": {"heads", "kv_heads", "head_dim"},
    "mlp": {"gate", "up", "fc1", "transposed"},
    "norms": {"attention", "mlp", "gain_offset"},
}


def _fail(path: Path, what: str) -> UsageError:
    return UsageError(f"{path}: {what}; see {DOC} for the layout-file format")


def _template(path: Path, section: str, value: Any, layer: bool = True) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, f"{section} must be a tensor-name string")
    try:
        value.format(i=0)
    except (KeyError, IndexError, ValueError):
        raise _fail(path, f"{section} = {value!r} has a placeholder other than {{i}}") from None
    if layer and "{i}" not in value:
        raise _fail(path, f"{section} = {value!r} has no {{i}} (the layer index)")
    return "{p}" + value


def _section(path: Path, data: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    sec = data.get(key)
    if sec is None:
        return None
    if not isinstance(sec, Mapping):
        raise _fail(path, f"[{key}] must be a table")
    unknown = sorted(set(sec) - _SECTIONS[key])
    if unknown:
        known = ", ".join(sorted(_SECTIONS[key]))
        raise _fail(path, f"unknown key(s) {', '.join(unknown)} in [{key}] (known: {known})")
    return sec


def _bool(path: Path, where: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, f"{where} must be true or false")
    return value


def _dims_fn(path: Path, sec: Mapping[str, Any] | None, rule: str):
    overrides = {}
    for key in ("heads", "kv_heads", "head_dim"):
        if sec is not None and key in sec:
            v = sec[key]
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise _fail(path, f"[dims] {key} must be a positive integer")
            overrides[key] = v

    def dims(config: Mapping[str, Any], hidden: int) -> Dims:
        if "heads" in overrides:
            heads = overrides["heads"]
            base = Dims(hidden, heads, overrides.get("kv_heads", heads), overrides.get("head_dim", hidden // heads))
        else:
            base = Dims.from_config(config, hidden)
        return Dims(hidden, base.heads, overrides.get("kv_heads", base.kv_heads),
                    overrides.get("head_dim", base.head_dim), fused_rule=rule)

    return dims


def load_layout_file(path: str | os.PathLike) -> Layout:
    """Reads and validates a TOML layout file.

    Args:
      path: the ``.toml`` file.

    Returns:
      A :class:`Layout` whose templates are the file's, under the fixed ``prefix``.

    Raises:
      UsageError: the file is unreadable, not TOML, or does not describe a layout.
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"{path}: cannot read the layout file ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise _fail(path, f"not valid TOML ({' '.join(str(e).split())})") from None
    except RecursionError:  # arrays or inline tables nested thousands deep
        raise _fail(path, "not usable TOML (nested too deeply)") from None
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise _fail(path, f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_TOP))})")
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise _fail(path, "name must be a non-empty string")
    prefix = data.get("prefix", "")
    if not isinstance(prefix, str):
        raise _fail(path, "prefix must be a string")
    emb = data.get("embedding")
    emb_list = [emb] if isinstance(emb, str) else emb
    if not isinstance(emb_list, list) or not emb_list:
        raise _fail(path, "embedding must name the input-embedding tensor (a string or a list of candidates)")
    embedding = tuple(_template(path, "embedding", e, layer=False) for e in emb_list)

    qkv, q_sec, k_sec = (_section(path, data, k) for k in ("qkv", "query", "key"))
    rule = "blocks"
    query: Projection
    key: Projection
    if qkv is not None:
        if q_sec is not None or k_sec is not None:
            raise _fail(path, "give either [qkv] or [query] and [key], not both")
        tensor = _template(path, "[qkv] tensor", qkv.get("tensor"))
        rule = qkv.get("split", "blocks")
        if rule not in SPLIT_RULES:
            raise _fail(path, f"[qkv] split = {rule!r} is not one of {', '.join(SPLIT_RULES)}")
        transposed = _bool(path, "[qkv] transposed", qkv.get("transposed", False))
        query = FusedSplit(tensor, "q", rule, transposed)
        key = FusedSplit(tensor, "k", rule, transposed)
    elif q_sec is not None and k_sec is not None:
        query = Separate(_template(path, "[query] tensor", q_sec.get("tensor")),
                         _bool(path, "[query] transposed", q_sec.get("transposed", False)))
        key = Separate(_template(path, "[key] tensor", k_sec.get("tensor")),
                       _bool(path, "[key] transposed", k_sec.get("transposed", False)))
    else:
        raise _fail(path, "no projections: give [qkv] (fused) or both [query] and [key]")

    mlp: tuple[MLPSpec, ...] = ()
    m_sec = _section(path, data, "mlp")
    if m_sec is not None:
        if "fc1" in m_sec:
            if "gate" in m_sec or "up" in m_sec:
                raise _fail(path, "[mlp] takes either fc1 or gate and up")
            mlp = (PlainMLP(_template(path, "[mlp] fc1", m_sec["fc1"]),
                            _bool(path, "[mlp] transposed", m_sec.get("transposed", False))),)
        elif "gate" in m_sec and "up" in m_sec:
            mlp = (GatedMLP(_template(path, "[mlp] gate", m_sec["gate"]), _template(path, "[mlp] up", m_sec["up"])),)
        else:
            raise _fail(path, "[mlp] needs fc1, or gate and up")

    norms = None
    n_sec = _section(path, data, "norms")
    if n_sec is not None:
        if "attention" not in n_sec:
            raise _fail(path, "[norms] needs attention (the gain of the norm the query and key read)")
        offset = n_sec.get("gain_offset", 0.0)
        if not isinstance(offset, (int, float)) or isinstance(offset, bool):
            raise _fail(path, "[norms] gain_offset must be a number")
        attention = _template(path, "[norms] attention", n_sec["attention"])
        mlp_norm = _template(path, "[norms] mlp", n_sec["mlp"]) if "mlp" in n_sec else None
        norms = NormGains((attention,), (mlp_norm,) if mlp_norm else (), offset=float(offset))

    extra: dict[str, Any] = {}
    for file_key, field in (("num_layers_key", "layers_keys"), ("hidden_key", "hidden_keys")):
        if file_key in data:
            if not isinstance(data[file_key], str):
                raise _fail(path, f"{file_key} must be a config.json key (a string)")
            extra[field] = (data[file_key],)
    return Layout(
        name=name, architectures=(), model_types=(), embedding=embedding, query=query, key=key,
        bases=("",), prefixes=(prefix,), mlp=mlp, dims=_dims_fn(path, _section(path, data, "dims"), rule),
        source="layout file", norms=norms, **extra,
    )
