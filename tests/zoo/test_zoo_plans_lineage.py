"""Plans validate and yield enough labelled pairs; lineage labels follow the definitions."""

from __future__ import annotations

import dataclasses

import pytest

from . import require_zoo_extra

require_zoo_extra()

from awm_jax.zoo.lineage import LABELS, count_labels, label_pair, label_pairs, lineage_path
from awm_jax.zoo.plans import (
    BASE_KIND,
    DERIVATION_KINDS,
    MANIPULATION_KINDS,
    ModelRecipe,
    Plan,
    deep_plan,
    examples_plan,
    full_plan,
    micro_plan,
)
from awm_jax.zoo.train import TrainConfig


def _dry_records(plan: Plan) -> list[dict]:
    """Manifest-like records computed from the recipes alone (no training)."""
    recs: dict[str, dict] = {}
    for m in plan.models:
        if m.kind in (BASE_KIND, "distill"):
            cfg = {"vocab_size": plan.tokenizer(m.tokenizer).vocab_size if m.tokenizer else 0,
                   **m.options["arch"]}
        else:
            cfg = dict(recs[m.parent]["config"])
            cfg.update({k: v for k, v in m.options.items() if k in cfg})
        recs[m.name] = {"name": m.name, "kind": m.kind, "parent": m.parent, "seed": m.seed,
                        "config": cfg}
    return list(recs.values())


def test_full_plan_meets_the_evidence_targets():
    plan = full_plan()
    bases = [m for m in plan.models if m.kind == BASE_KIND]
    assert len(bases) >= 8
    kinds = {m.kind for m in plan.models}
    assert set(DERIVATION_KINDS) <= kinds and "distill" in kinds
    assert set(MANIPULATION_KINDS) <= kinds
    counts = count_labels(label_pairs(_dry_records(plan)))
    assert counts["derived"] >= 60 and counts["independent"] >= 90
    assert counts["shared-init"] >= 1 and counts["distilled"] >= 1
    # The hardest negative: identical architecture, tokenizer and data; only the seed differs.
    a, b = plan.model("py-a-s0"), plan.model("py-a-s1")
    assert a.seed != b.seed and dataclasses.replace(a, name="x", seed=0) == dataclasses.replace(
        b, name="x", seed=0)
    # Continued pretraining sees at least three times its base's tokens.
    for m in plan.models:
        if m.kind == "cpt":
            assert m.train.tokens >= 3 * plan.root_base(m.parent).train.tokens


def test_deep_plan_covers_every_kind_at_depth():
    plan = deep_plan()
    bases = [m for m in plan.models if m.kind == BASE_KIND]
    depths = sorted(b.options["arch"]["num_hidden_layers"] for b in bases)
    assert depths[0] >= 8 and depths[-1] >= 16
    assert all(b.options.get("gain_spread", 0) >= 0.5 for b in bases), "trained gains start far from 1"
    kinds = {m.kind for m in plan.models}
    assert set(DERIVATION_KINDS) <= kinds and "distill" in kinds and set(MANIPULATION_KINDS) <= kinds
    pruned = {(plan.model(m.parent).options["arch"]["num_hidden_layers"], m.options["num_layers"])
              for m in plan.models if m.kind == "depth-prune"}
    assert {(16, 12), (12, 8)} <= pruned
    # A fine-tune of the folded-and-rotated model, and two bases trained alike at depth 16.
    assert plan.model("deep-a-s0-dense-rotation-sft").parent == "deep-a-s0-dense-rotation"
    a, b = plan.model("deep-a-s0"), plan.model("deep-a-s1")
    assert a.seed != b.seed and dataclasses.replace(a, name="x", seed=0) == dataclasses.replace(b, name="x", seed=0)
    counts = count_labels(label_pairs(_dry_records(plan)))
    assert counts["derived"] >= 30 and counts["independent"] >= 60


def test_spread_gains_touch_only_norm_gains():
    import numpy as np

    from awm_jax.zoo.build import spread_norm_gains
    from awm_jax.zoo.model import ModelConfig, init_params

    cfg = ModelConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=8)
    before = init_params(cfg, 0)
    after = spread_norm_gains(before, 0.5, 0)
    changed = []
    import jax

    for (path, x), (_, y) in zip(jax.tree_util.tree_leaves_with_path(before), jax.tree_util.tree_leaves_with_path(after)):
        if not np.array_equal(np.asarray(x), np.asarray(y)):
            changed.append(jax.tree_util.keystr(path))
            assert np.all((np.asarray(y) >= 0.5) & (np.asarray(y) <= 1.5))
    assert changed and all("norm" in c for c in changed)
    assert len(changed) == 2 * cfg.num_hidden_layers + 1  # two per layer and the final norm


@pytest.mark.parametrize("make", [micro_plan, examples_plan])
def test_small_plans(make):
    plan = make()
    counts = count_labels(label_pairs(_dry_records(plan)))
    assert counts["derived"] >= 1 and counts["independent"] >= 1


def test_plan_validation_errors():
    tc = TrainConfig(steps=10)
    tok = micro_plan().tokenizers
    arch = {"arch": dict(micro_plan().models[0].options["arch"])}
    base = ModelRecipe("b", BASE_KIND, corpus="python-stdlib", tokenizer=tok[0].name, train=tc,
                       options=arch)
    with pytest.raises(ValueError, match="listed before"):
        Plan("x", tok, (ModelRecipe("m", "combo", parent="b"), base))
    with pytest.raises(ValueError, match="3x"):
        Plan("x", tok, (base, ModelRecipe("c", "cpt", "b", corpus="man-pages", train=tc)))
    with pytest.raises(ValueError, match="new domain"):
        Plan("x", tok, (base, ModelRecipe("c", "cpt", "b", corpus="python-stdlib",
                                          train=tc.replace(steps=30))))
    with pytest.raises(ValueError, match="unknown kind"):
        Plan("x", tok, (base, ModelRecipe("c", "merge", "b")))
    with pytest.raises(ValueError, match="duplicate"):
        Plan("x", tok, (base, base))


def _rec(name, kind, parent=None, seed=0, hidden=8):
    return {"name": name, "kind": kind, "parent": parent, "seed": seed,
            "config": {"vocab_size": 10, "hidden_size": hidden, "intermediate_size": 16,
                       "num_hidden_layers": 2, "num_attention_heads": 2,
                       "num_key_value_heads": 1, "head_dim": 4}}


def test_labels():
    recs = [
        _rec("A", "base", seed=0), _rec("A-sft", "sft", "A"), _rec("A-sft-dpo", "dpo", "A-sft"),
        _rec("A-cpt", "cpt", "A"), _rec("A-perm", "perm-sign", "A"),
        _rec("A2", "base", seed=0),  # same seed and shapes as A: shared-init
        _rec("B", "base", seed=1), _rec("B-wide", "base", seed=0, hidden=16),
        _rec("S", "distill", "A-sft", seed=5), _rec("S-combo", "combo", "S"),
    ]
    idx = {r["name"]: r for r in recs}
    assert label_pair("A", "A-sft-dpo", idx) == ("derived", "sft+dpo")
    assert label_pair("A-sft-dpo", "A-cpt", idx) == ("derived", "sibling: sft+dpo | cpt")
    assert label_pair("A-perm", "A", idx)[0] == "derived"
    assert label_pair("A", "A2", idx)[0] == "shared-init"
    assert label_pair("A-cpt", "A2", idx)[0] == "shared-init"
    assert label_pair("A", "B", idx)[0] == "independent"
    assert label_pair("A", "B-wide", idx)[0] == "independent"  # same seed, other shapes
    assert label_pair("S-combo", "A-cpt", idx)[0] == "distilled"
    assert label_pair("S", "S-combo", idx)[0] == "derived"
    assert label_pair("S", "B", idx)[0] == "independent"
    assert lineage_path("A-sft-dpo", idx) == ["A", "A-sft", "A-sft-dpo"]
    pairs = label_pairs(recs)
    assert len(pairs) == len(recs) * (len(recs) - 1) // 2
    counts = count_labels(pairs)
    assert set(counts) == set(LABELS) and sum(counts.values()) == len(pairs)
