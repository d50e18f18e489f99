"""Ground-truth lineage labels for every pair of zoo models.

Every model record names its ``parent`` and ``kind`` (see :mod:`awm_jax.zoo.plans`). Following
parents through derivations and manipulations leads to the model's *weight root*: the base it
was initialised as, or, for a distilled student, the student itself (distillation copies no
weights). A pair is labelled:

* ``derived``: both models have the same weight root (one descends from the other, or both
  from a common ancestor, by training runs and weight rewrites);
* ``distilled``: one model's weight root is a student distilled from a model whose weight root
  is the other's (related by function, not by weights);
* ``shared-init``: different weight roots that are bases with the same initialisation (seed and
  shapes) trained on different data;
* ``independent``: anything else.

All pairs are comparable: every zoo model has an input embedding, query/key projections and a
byte-level BPE tokenizer, so any two share at least the 256 byte tokens.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

__all__ = ["LABELS", "weight_root", "lineage_path", "label_pair", "label_pairs", "count_labels"]

#: Label -> definition, as written into the manifest.
LABELS = {
    "derived": "same weight root: one model descends from the other, or both from a common "
    "ancestor, by training runs (SFT, continued pretraining, DPO, vocabulary extension, "
    "multimodal extension, pruning, MoE upcycling) and function-preserving weight rewrites",
    "distilled": "a student trained from a fresh initialisation on the outputs of a model of "
    "the other's lineage (no weights shared)",
    "shared-init": "trained separately, not one from the other, from the same seeded "
    "initialisation (same seed and shapes) on different data",
    "independent": "trained separately from different initialisations",
}

Record = dict[str, Any]


def _index(models: Sequence[Record]) -> dict[str, Record]:
    return {m["name"]: m for m in models}


def weight_root(name: str, models: dict[str, Record]) -> str:
    """The base (or distilled student) whose initial weights ``name`` descends from."""
    m = models[name]
    while m["kind"] not in ("base", "distill"):
        m = models[m["parent"]]
    return m["name"]


def lineage_path(name: str, models: dict[str, Record]) -> list[str]:
    """Names from the weight root down to ``name`` (inclusive)."""
    path = [name]
    m = models[name]
    while m["kind"] not in ("base", "distill"):
        m = models[m["parent"]]
        path.append(m["name"])
    return path[::-1]


def _init_key(m: Record) -> tuple:
    c = m["config"]
    shapes = tuple(c[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                  "num_hidden_layers", "num_attention_heads",
                                  "num_key_value_heads", "head_dim"))
    return (m["seed"], shapes)


def _relation(a: str, b: str, models: dict[str, Record]) -> str:
    """How two models of one weight family are related, e.g. ``"sft+dpo"`` or
    ``"sibling: cpt | sft"``."""
    pa, pb = lineage_path(a, models), lineage_path(b, models)
    common = 0
    while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
        common += 1
    down_a = [models[n]["kind"] for n in pa[common:]]
    down_b = [models[n]["kind"] for n in pb[common:]]
    if not down_a or not down_b:
        return "+".join(down_a or down_b)
    return f"sibling: {'+'.join(down_a)} | {'+'.join(down_b)}"


def label_pair(a: str, b: str, models: dict[str, Record]) -> tuple[str, str]:
    """``(label, relation)`` of two models (see the module docstring).

    Args:
        a, b: model names.
        models: name -> record with ``name``, ``kind``, ``parent``, ``seed`` and ``config``.

    Returns:
        The label and a short description of the relation.
    """
    ra, rb = weight_root(a, models), weight_root(b, models)
    if ra == rb:
        return "derived", _relation(a, b, models)
    for student, other in ((ra, rb), (rb, ra)):
        s = models[student]
        if s["kind"] == "distill" and weight_root(s["parent"], models) == other:
            return "distilled", f"student {student} of {s['parent']}"
    ma, mb = models[ra], models[rb]
    if ma["kind"] == mb["kind"] == "base" and _init_key(ma) == _init_key(mb):
        return "shared-init", f"{ra} and {rb} share seed {ma['seed']} and shapes"
    return "independent", f"{ra} vs {rb}"


def label_pairs(models: Sequence[Record]) -> list[Record]:
    """Labels every unordered pair of ``models`` (in listing order).

    Returns:
        Records ``{"a", "b", "label", "relation", "same_hidden_size"}``.
    """
    idx = _index(models)
    out = []
    for ma, mb in itertools.combinations(models, 2):
        label, relation = label_pair(ma["name"], mb["name"], idx)
        out.append({
            "a": ma["name"],
            "b": mb["name"],
            "label": label,
            "relation": relation,
            "same_hidden_size": ma["config"]["hidden_size"] == mb["config"]["hidden_size"],
        })
    return out


def count_labels(pairs: Sequence[Record]) -> dict[str, int]:
    """Number of pairs per label (every label present, possibly 0)."""
    counts = {k: 0 for k in LABELS}
    for p in pairs:
        counts[p["label"]] += 1
    return counts
