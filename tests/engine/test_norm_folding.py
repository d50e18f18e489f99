"""Norm folding on every architecture: a model and its norm-folded copy score 1.0000 (within 1e-5)
in the default (``fold``) mode, and so does its folded and densely rotated copy with ``--alignment
auto``; the paper's mode (``ignore``) is not invariant, which is what the canonical form fixes.

Each fixture of ``tests/fixtures/architectures`` is given trained-like gains (drawn from
[-0.3, 1.5], as a real model's run) on its pre-attention and pre-MLP norms; its folded copy
multiplies every matrix reading a norm (fused QKV tensors whole, MLA's ``q_a_proj`` and
``kv_a_proj_with_mqa``, the MLP inputs of every expert) by the gain and sets the gain to 1.
"""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from scipy.stats import ortho_group

import awm_jax
from awm_jax.io.checkpoint import Checkpoint
from awm_jax.layouts import REGISTRY, detect
from awm_jax.layouts._mlp import Experts
from awm_jax.options import PAPER
from layouts._fixtures import CASES, case_dir, rewrite


#: Fixtures without a per-dimension gain in front of the attention (docs/layouts.md says why).
NO_GAINS = {"olmo": "parameter-free LayerNorm", "olmo2": "norms after the sublayers",
            "opt_project": "OPT-350m post-norm (do_layer_norm_before = false)",
            "qwen3_fp8": "FP8 weights: a folded copy would be requantised"}
FOLDED = [c for c in CASES if c not in NO_GAINS]


def _rng(case: str, salt: str) -> np.random.Generator:
    return np.random.default_rng(int(hashlib.sha256(f"{case}/{salt}".encode()).hexdigest()[:8], 16))


def _pattern(template: str, prefix: str, layer: int) -> re.Pattern:
    text = template.format(p=prefix, i=layer, e="\0")
    return re.compile("^" + re.escape(text).replace("\0", r"\d+") + "$")


class Plan:
    """Which tensors of a fixture read which norm, along which axis (``[out, hidden]``: 1)."""

    def __init__(self, case: str):
        ckpt = Checkpoint(case_dir(case))
        r = detect(ckpt)
        assert r.attention_gain is not None, f"{case}: no pre-attention gain found"
        self.offset = r.layout.norms.offset
        self.hidden = r.hidden_size
        self.embedding = r.embedding_name
        self.readers: dict[str, tuple[str, int]] = {}  # tensor -> (gain tensor, hidden axis)
        self.gains: list[str] = []
        shapes = {n: tuple(ckpt.info(n).shape) for n in ckpt.tensors}
        for i in range(r.num_layers):
            attn = r.attention_gain.format(p=r.prefix, i=i)
            mlp = r.mlp_gain.format(p=r.prefix, i=i) if r.mlp_gain else None
            self.gains += [g for g in (attn, mlp) if g is not None and g not in self.gains]
            for proj in (r.layout.query, r.layout.key):
                axis = 0 if getattr(proj, "transposed", False) else 1
                for name in (t.format(p=r.prefix, i=i) for t in proj.tensor_names(r.dims)):
                    if len(shapes[name]) == 2 and shapes[name][axis] == self.hidden:  # MLA: the residual side
                        self.readers[name] = (attn, axis)
            for spec in r.layout.mlp if mlp is not None else ():
                parts = [spec.expert, *spec.shared] if isinstance(spec, Experts) else [spec]
                for part in parts:
                    axis = 0 if getattr(part, "transposed", False) else 1
                    for template in part.templates():
                        pattern = _pattern(template, r.prefix, i)
                        for name in shapes:
                            if pattern.match(name):
                                self.readers[name] = (mlp, axis)
        assert len(self.readers) >= 2 * r.num_layers, f"{case}: found {sorted(self.readers)}"

    def draw_gains(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {g: rng.uniform(-0.3, 1.5, self.hidden).astype(np.float32) for g in self.gains}

    def with_gains(self, gains: dict[str, np.ndarray]):
        """The transform giving the model these gains (stored minus the layout's offset)."""
        return lambda name, a: gains[name] - np.float32(self.offset) if name in gains else a

    def folded(self, gains: dict[str, np.ndarray], rotation: np.ndarray | None = None):
        """The transform giving the folded (and, with ``rotation``, rotated) copy of that model."""

        def transform(name, a):
            if name in gains:
                return np.full_like(a, 1.0 - self.offset)
            if name in self.readers:
                gain, axis = self.readers[name]
                shape = [1, 1]
                shape[axis] = self.hidden
                a = a * gains[gain].reshape(shape)
                if rotation is not None:
                    a = a @ rotation if axis == 1 else rotation.T @ a
            elif name == self.embedding and rotation is not None:
                a = a @ rotation
            return a

        return transform


@pytest.fixture(scope="module")
def plans():
    return {}


def _models(case, tmp_path, plans, rotate: bool):
    plan = plans.setdefault(case, Plan(case))
    gains = plan.draw_gains(_rng(case, "gains"))
    base = rewrite(case, tmp_path / "base", plan.with_gains(gains))
    rotation = ortho_group.rvs(plan.hidden, random_state=_rng(case, "rotation")).astype(np.float32) if rotate else None
    other = rewrite(case, tmp_path / "folded", plan.folded(gains, rotation))
    return base, other


def _compare(a, b, **kw):
    return awm_jax.compare(a, b, cache=False, device="cpu", mlp=True, **kw)


@pytest.mark.parametrize("case", FOLDED)
def test_norm_folded_copy_scores_one(case, tmp_path, plans):
    base, folded = _models(case, tmp_path, plans, rotate=False)
    r = _compare(base, folded)
    assert r.alignment["norm_gains"] == "fold"
    np.testing.assert_allclose([r.wq, r.wk, r.mean, r.mlp], 1.0, atol=1e-5)
    paper = _compare(base, folded, **PAPER)
    assert paper.mean < 1.0 - 1e-3, "the folded copy should defeat the paper's computation"


@pytest.mark.parametrize("case", FOLDED)
def test_norm_folded_and_rotated_copy_scores_one_by_default(case, tmp_path, plans):
    base, rotated = _models(case, tmp_path, plans, rotate=True)
    r = _compare(base, rotated)  # the default alignment, auto
    assert r.alignment["mode"] == "auto" and r.alignment["used"] == "orthogonal", r.alignment["reason"]
    np.testing.assert_allclose([r.wq, r.wk, r.mean, r.mlp], 1.0, atol=1e-5)
    assert _compare(base, rotated, alignment="assignment").mean < 0.5  # the paper's alignment is defeated


@pytest.mark.parametrize("case", sorted(NO_GAINS))
def test_layouts_without_foldable_gains_read_the_stored_matrices(case):
    r = detect(Checkpoint(case_dir(case)))
    if case == "qwen3_fp8":
        assert r.attention_gain is not None  # it has gains; only the folded copy is not built
        return
    assert r.attention_gain is None and r.mlp_gain is None
    for layer in range(r.num_layers):
        q, k = r.read_qk(layer)
        fq, fk = r.fold_gains(layer, "attention", q, k)
        assert fq is q and fk is k


def test_every_registered_layout_says_where_its_gains_are():
    without = {name for name, layout in REGISTRY.items() if layout.norms is None}
    assert without == {"olmo", "olmo2"}
    assert REGISTRY["gemma"].norms.offset == REGISTRY["gemma2"].norms.offset == 1.0
    assert REGISTRY["phi"].norms.mlp == REGISTRY["phi"].norms.attention  # parallel block: one norm


@pytest.mark.parametrize("case", FOLDED)
def test_the_fixtures_initial_gains_read_as_one(case):
    """transformers initialises every gain to 1 in effect (Gemma stores 0 for its ``1 + w``): the
    gains read, offset included, are exactly 1, so folding leaves the fixtures' matrices as they are."""
    r = detect(Checkpoint(case_dir(case)))
    for layer in range(r.num_layers):
        for which in ("attention", "mlp"):
            gain = r.gain(layer, which)
            if gain is not None:
                np.testing.assert_array_equal(gain, np.ones(r.hidden_size, np.float32))


def test_a_layout_file_names_its_gains(tmp_path):
    from awm_jax.errors import UsageError
    from awm_jax.layouts import load_layout_file

    text = '''
name = "my-llama"
embedding = "model.embed_tokens.weight"
[query]
tensor = "model.layers.{i}.self_attn.q_proj.weight"
[key]
tensor = "model.layers.{i}.self_attn.k_proj.weight"
[norms]
attention = "model.layers.{i}.input_layernorm.weight"
gain_offset = 1.0
'''
    (tmp_path / "my.toml").write_text(text)
    r = detect(Checkpoint(case_dir("llama")), tmp_path / "my.toml")
    assert r.attention_gain is not None and r.mlp_gain is None
    np.testing.assert_array_equal(r.gain(0, "attention"), np.full(r.hidden_size, 2.0, np.float32))  # 1 + offset
    (tmp_path / "bad.toml").write_text(text.replace("gain_offset", "offset"))
    with pytest.raises(UsageError, match="unknown key"):
        load_layout_file(tmp_path / "bad.toml")


def test_the_cache_keeps_the_modes_apart(tmp_path, plans):
    """A fingerprint cached in one mode is never served for the other: cold and warm runs of both
    modes through one cache equal the uncached scores, and both modes end up cached."""
    base, folded = _models("llama_gqa", tmp_path, plans, rotate=False)
    want = {mode: awm_jax.compare(base, folded, cache=False, norm_gains=mode).mean for mode in ("fold", "ignore")}
    assert abs(want["fold"] - want["ignore"]) > 1e-3
    for _ in range(2):
        for mode in ("fold", "ignore"):
            r = awm_jax.compare(base, folded, cache_dir=tmp_path / "cache", norm_gains=mode)
            assert r.mean == want[mode] and r.alignment["norm_gains"] == mode
    assert r.model_a.fingerprint_cached and r.model_b.fingerprint_cached
    index = sorted(p.name.rsplit("-", 2)[-2:][1] for p in (tmp_path / "cache" / "index").iterdir())
    assert index == ["fold.json"] * 2 + ["ignore.json"] * 2


def test_the_command_line_offers_the_library_modes(tmp_path, plans):
    from awm_jax.cli.compare import build_parser, main
    from awm_jax.layouts import DEFAULT_NORM_GAINS, NORM_GAIN_MODES

    action = next(a for a in build_parser()._actions if a.dest == "norm_gains")
    assert tuple(action.choices) == NORM_GAIN_MODES and action.default == DEFAULT_NORM_GAINS
    base, folded = _models("llama", tmp_path, plans, rotate=False)
    for mode in NORM_GAIN_MODES:
        out = tmp_path / f"{mode}.json"
        assert main([str(base), str(folded), "--no-cache", "--quiet", "--norm-gains", mode, "--json", str(out)]) == 0
        assert json.loads(out.read_text())["alignment"]["norm_gains"] == mode
