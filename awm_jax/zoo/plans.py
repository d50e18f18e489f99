"""Zoo plans: which tokenizers and models to build, and how.

A :class:`Plan` lists :class:`TokenizerRecipe` and :class:`ModelRecipe` entries in build order
(every parent before its children). A model recipe's ``kind`` says how it is made:

* ``"base"``: trained from a fresh initialisation (``seed``) on ``corpus`` with ``tokenizer``;
  ``options["arch"]`` holds the shapes.
* a derivation (:data:`DERIVATION_KINDS`): a training run from ``parent``, see
  :mod:`awm_jax.zoo.derive`.
* ``"distill"``: a fresh student (``seed``) trained on the outputs of ``parent`` (the teacher).
* a manipulation (:data:`MANIPULATION_KINDS`): a function-preserving rewrite of ``parent``'s
  weights, see :mod:`awm_jax.zoo.manipulate`.

Four plans ship: :func:`full_plan` (the evidence zoo, 2-4 layers), :func:`deep_plan` (bases of
8-16 layers with spread norm gains and every derivation and manipulation on top), :func:`micro_plan`
(four tiny models built in seconds, for tests) and :func:`examples_plan` (three small bf16
checkpoints shipped with the package).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from awm_jax.zoo.manipulate import MANIPULATIONS
from awm_jax.zoo.train import TrainConfig

__all__ = [
    "TokenizerRecipe",
    "ModelRecipe",
    "Plan",
    "BASE_KIND",
    "DISTILL_KIND",
    "DERIVATION_KINDS",
    "MANIPULATION_KINDS",
    "deep_plan",
    "full_plan",
    "micro_plan",
    "examples_plan",
    "PLANS",
]

BASE_KIND = "base"
DISTILL_KIND = "distill"
DERIVATION_KINDS = (
    "sft",
    "cpt",
    "dpo",
    "vocab-ext",
    "multimodal",
    "width-prune",
    "depth-prune",
    "moe-upcycle",
)
MANIPULATION_KINDS = tuple(MANIPULATIONS)


@dataclasses.dataclass(frozen=True)
class TokenizerRecipe:
    """A byte-level BPE tokenizer to train.

    Attributes:
        name: identifier used by model recipes.
        corpus: corpus spec (``"source[:split]"``, several joined with ``"+"``).
        vocab_size: target vocabulary size.
        chars: characters of training text.
        seed: document sampling seed.
    """

    name: str
    corpus: str
    vocab_size: int
    chars: int = 2_000_000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class ModelRecipe:
    """How to make one zoo model.

    Attributes:
        name: model (and folder) name.
        kind: ``"base"``, ``"distill"``, a derivation or a manipulation kind.
        parent: the model it is made from (the teacher for ``"distill"``); ``None`` for bases.
        seed: initialisation seed (base, student, new router or projector) or manipulation
            seed.
        corpus: training text (corpus spec), if the kind trains.
        tokenizer: tokenizer name (bases only; other kinds inherit or extend the parent's).
        train: training settings, if the kind trains.
        options: kind-specific settings (``arch`` for bases and students, pruned sizes, ...).
    """

    name: str
    kind: str
    parent: str | None = None
    seed: int = 0
    corpus: str | None = None
    tokenizer: str | None = None
    train: TrainConfig | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def category(self) -> str:
        """``"base"``, ``"derivation"``, ``"distilled"`` or ``"manipulation"``."""
        if self.kind == BASE_KIND:
            return "base"
        if self.kind == DISTILL_KIND:
            return "distilled"
        if self.kind in MANIPULATION_KINDS:
            return "manipulation"
        return "derivation"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the training settings as a dict)."""
        d = dataclasses.asdict(self)
        d["category"] = self.category
        return d


@dataclasses.dataclass(frozen=True)
class Plan:
    """Tokenizers and models of one zoo, in build order.

    Attributes:
        name: plan name (``"full"``, ``"micro"``, ``"examples"``).
        tokenizers: tokenizer recipes.
        models: model recipes, parents first.
        dtype: stored tensor dtype (``"float32"`` or ``"bfloat16"``).
    """

    name: str
    tokenizers: tuple[TokenizerRecipe, ...]
    models: tuple[ModelRecipe, ...]
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    def model(self, name: str) -> ModelRecipe:
        """The recipe called ``name``."""
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"plan {self.name!r} has no model {name!r}")

    def tokenizer(self, name: str) -> TokenizerRecipe:
        """The tokenizer recipe called ``name``."""
        for t in self.tokenizers:
            if t.name == name:
                return t
        raise KeyError(f"plan {self.name!r} has no tokenizer {name!r}")

    def root_base(self, name: str) -> ModelRecipe:
        """The base a model descends from by weights (a distilled student is its own root)."""
        m = self.model(name)
        while m.kind not in (BASE_KIND, DISTILL_KIND):
            m = self.model(m.parent)  # type: ignore[arg-type]
        return m

    def validate(self) -> None:
        """Checks names, build order, kinds and the continued-pretraining token ratio.

        Raises:
            ValueError: describing the first problem found.
        """
        tok_names = {t.name for t in self.tokenizers}
        seen: set[str] = set()
        known = {BASE_KIND, DISTILL_KIND, *DERIVATION_KINDS, *MANIPULATION_KINDS}
        for m in self.models:
            if m.name in seen:
                raise ValueError(f"duplicate model name {m.name!r}")
            if m.kind not in known:
                raise ValueError(f"{m.name}: unknown kind {m.kind!r}")
            if m.kind == BASE_KIND:
                if m.parent is not None or m.tokenizer not in tok_names or "arch" not in m.options:
                    raise ValueError(f"{m.name}: a base needs a known tokenizer, options['arch'] "
                                     "and no parent")
            elif m.parent not in seen:
                raise ValueError(f"{m.name}: parent {m.parent!r} must be listed before it")
            trains = m.kind not in MANIPULATION_KINDS
            if trains and (m.train is None or m.corpus is None and m.kind not in ("sft", "dpo")):
                raise ValueError(f"{m.name}: kind {m.kind!r} needs train settings and a corpus")
            if m.kind == "cpt":
                base = self.root_base(m.parent)  # type: ignore[arg-type]
                assert base.train is not None and m.train is not None
                if m.train.tokens < 3 * base.train.tokens:
                    raise ValueError(
                        f"{m.name}: continued pretraining sees {m.train.tokens} tokens, less "
                        f"than 3x the {base.train.tokens} of its base {base.name}"
                    )
                if m.corpus == base.corpus:
                    raise ValueError(f"{m.name}: continued pretraining needs a new domain")
            seen.add(m.name)


def _arch(n: int, layers: int, heads: int, kv: int, head_dim: int, inter: int) -> dict[str, int]:
    return {"hidden_size": n, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "head_dim": head_dim, "intermediate_size": inter}


def full_plan() -> Plan:
    """The evidence zoo: 8 bases, 16 trained derivatives (one distilled), 18 manipulations.

    Bases differ in seed, corpus, width, depth and tokenizer. ``py-a-s0`` and ``py-a-s1`` have
    identical architecture, tokenizer and data order and differ only in the initialisation
    seed (the hardest independent pair); ``doc-a-s0`` shares ``py-a-s0``'s initialisation
    (same seed and shapes) but is trained on different text (``shared-init``). Sized to build
    in about 30-45 minutes on two CPU cores.
    """
    base_tc = TrainConfig(steps=300, batch_size=16, seq_len=128, learning_rate=3e-3,
                          warmup_steps=30)
    ft_tc = TrainConfig(steps=100, batch_size=16, seq_len=96, learning_rate=1e-3, warmup_steps=10)
    heal_tc = TrainConfig(steps=100, batch_size=16, seq_len=128, learning_rate=1e-3,
                          warmup_steps=10)
    small_steps = 200  # bases other than the py-a/doc-a trio
    cpt_tc = base_tc.replace(steps=3 * small_steps, learning_rate=1.5e-3, warmup_steps=30)
    toks = (
        TokenizerRecipe("tok-py-1024", "python-stdlib", 1024, 3_000_000, 0),
        TokenizerRecipe("tok-py-512", "python-stdlib:b", 512, 2_000_000, 1),
        TokenizerRecipe("tok-doc-2048", "debian-doc", 2048, 3_000_000, 2),
        TokenizerRecipe("tok-man-1024", "man-pages", 1024, 2_000_000, 3),
        TokenizerRecipe("tok-man-2048", "man-pages", 2048, 3_000_000, 4),
        TokenizerRecipe("tok-mix-1024", "python-stdlib+debian-doc+man-pages", 1024, 3_000_000, 5),
    )
    a_arch = _arch(128, 4, 4, 2, 32, 256)

    def base(name, tok, corpus, seed, arch, data_seed=0, steps=300):
        return ModelRecipe(name, BASE_KIND, seed=seed, corpus=corpus, tokenizer=tok,
                           train=base_tc.replace(steps=steps, data_seed=data_seed),
                           options={"arch": arch})

    def man(name, parent, kind, seed):
        return ModelRecipe(name, kind, parent=parent, seed=seed)

    models = [
        base("py-a-s0", "tok-py-1024", "python-stdlib:a", 0, a_arch),
        base("py-a-s1", "tok-py-1024", "python-stdlib:a", 1, a_arch),
        base("doc-a-s0", "tok-py-1024", "debian-doc", 0, a_arch, data_seed=7),
        base("doc-b", "tok-doc-2048", "debian-doc", 2, _arch(96, 3, 4, 4, 24, 192), 2,
             small_steps),
        base("py-c", "tok-py-512", "python-stdlib:b", 3, _arch(64, 2, 4, 1, 16, 128), 3,
             small_steps),
        base("mix-d", "tok-mix-1024", "python-stdlib+debian-doc+man-pages", 4,
             _arch(128, 2, 8, 4, 16, 384), 4, small_steps),
        base("man-e", "tok-man-1024", "man-pages", 5, _arch(96, 4, 6, 2, 16, 256), 5,
             small_steps),
        base("doc-f", "tok-doc-2048", "debian-doc:b", 6, _arch(64, 3, 2, 2, 32, 192), 6,
             small_steps),
        # Derivations of py-a-s0.
        ModelRecipe("py-a-s0-sft", "sft", "py-a-s0", 10, train=ft_tc.replace(data_seed=10),
                    options={"pairs": 2000, "pairs_split": "a"}),
        ModelRecipe("py-a-s0-sft-dpo", "dpo", "py-a-s0-sft", 11,
                    train=ft_tc.replace(steps=40, learning_rate=5e-4, data_seed=11),
                    options={"pairs": 192, "pairs_split": "b", "beta": 0.1}),
        ModelRecipe("py-a-s0-vocab-man", "vocab-ext", "py-a-s0", 13, corpus="man-pages",
                    train=heal_tc.replace(data_seed=13),
                    options={"donor": "tok-man-2048", "num_new": 256}),
        ModelRecipe("py-a-s0-llava", "multimodal", "py-a-s0", 14, corpus="python-stdlib:b",
                    train=TrainConfig(steps=100, batch_size=32, seq_len=24, learning_rate=1e-3,
                                      warmup_steps=10, data_seed=14),
                    options={"projector_steps": 40, "lines": 3000, "num_patches": 20}),
        ModelRecipe("py-a-s0-width96", "width-prune", "py-a-s0", 15, corpus="python-stdlib:a",
                    train=heal_tc.replace(data_seed=15),
                    options={"hidden_size": 96, "num_kv_groups": 1, "intermediate_size": 192}),
        ModelRecipe("py-a-s0-depth3", "depth-prune", "py-a-s0", 16, corpus="python-stdlib:a",
                    train=heal_tc.replace(data_seed=16), options={"num_layers": 3}),
        ModelRecipe("py-a-s0-moe4", "moe-upcycle", "py-a-s0", 17, corpus="python-stdlib:a",
                    train=heal_tc.replace(steps=60, data_seed=17),
                    options={"num_experts": 4, "top_k": 2}),
        ModelRecipe("py-a-s0-distilled", DISTILL_KIND, "py-a-s0", 18, corpus="python-stdlib:a",
                    train=base_tc.replace(steps=150, data_seed=18),
                    options={"arch": _arch(64, 2, 4, 2, 16, 128)}),
        # Derivations of other bases.
        ModelRecipe("doc-b-sft", "sft", "doc-b", 20, train=ft_tc.replace(data_seed=20),
                    options={"pairs": 2000, "pairs_split": "a"}),
        ModelRecipe("doc-b-cpt-py", "cpt", "doc-b", 21, corpus="python-stdlib",
                    train=cpt_tc.replace(data_seed=21)),
        ModelRecipe("doc-b-depth2", "depth-prune", "doc-b", 22, corpus="debian-doc",
                    train=heal_tc.replace(data_seed=22), options={"num_layers": 2}),
        ModelRecipe("py-c-cpt-doc", "cpt", "py-c", 23, corpus="debian-doc",
                    train=cpt_tc.replace(data_seed=23)),
        ModelRecipe("py-c-moe4", "moe-upcycle", "py-c", 24, corpus="python-stdlib:b",
                    train=heal_tc.replace(data_seed=24), options={"num_experts": 4, "top_k": 2}),
        ModelRecipe("py-c-sft", "sft", "py-c", 25, train=ft_tc.replace(data_seed=25),
                    options={"pairs": 2000, "pairs_split": "b"}),
        ModelRecipe("mix-d-width96", "width-prune", "mix-d", 26,
                    corpus="python-stdlib+debian-doc+man-pages", train=heal_tc.replace(data_seed=26),
                    options={"hidden_size": 96, "num_kv_groups": 3, "intermediate_size": 288}),
        ModelRecipe("man-e-depth2", "depth-prune", "man-e", 28, corpus="man-pages",
                    train=heal_tc.replace(data_seed=28), options={"num_layers": 2}),
        # Function-preserving manipulations.
        *(man(f"py-a-s0-{k}", "py-a-s0", k, 40 + i) for i, k in enumerate(MANIPULATION_KINDS)),
        man("py-a-s1-combo", "py-a-s1", "combo", 50),
        man("py-a-s1-qk-scale-groups", "py-a-s1", "qk-scale-groups", 60),
        man("py-a-s0-sft-combo", "py-a-s0-sft", "combo", 51),
        man("py-a-s0-moe4-perm-sign", "py-a-s0-moe4", "perm-sign", 52),
        man("py-a-s0-llava-combo", "py-a-s0-llava", "combo", 53),
        man("py-a-s0-width96-perm-sign", "py-a-s0-width96", "perm-sign", 54),
        man("py-a-s0-distilled-combo", "py-a-s0-distilled", "combo", 55),
        man("doc-b-combo", "doc-b", "combo", 56),
        man("doc-b-dense-rotation", "doc-b", "dense-rotation", 57),
        man("doc-b-cpt-py-perm-sign", "doc-b-cpt-py", "perm-sign", 58),
        man("py-c-combo", "py-c", "combo", 59),
    ]
    return Plan("full", toks, tuple(models), dtype="float32")


def deep_plan() -> Plan:
    """The deep zoo: bases of 8, 12 and 16 layers whose RMSNorm gains start spread over
    ``[0.5, 1.5]`` (trained gains are never all 1), with every derivation and manipulation kind of
    the full zoo on top, plus norm folding, folding with a dense rotation, a fine-tune of the
    folded-and-rotated model, depth pruning at depth (16 -> 12, 12 -> 8) and a 4-bit round trip.

    ``deep-a-s0`` and ``deep-a-s1`` are trained alike (architecture, tokenizer, data and data
    order; other seed): the hardest independent pair at depth. Sized for a few hours on two CPU
    cores; resumable like every plan.
    """
    base_tc = TrainConfig(steps=300, batch_size=16, seq_len=128, learning_rate=2e-3, warmup_steps=30)
    ft_tc = TrainConfig(steps=100, batch_size=16, seq_len=96, learning_rate=1e-3, warmup_steps=10)
    heal_tc = TrainConfig(steps=100, batch_size=16, seq_len=128, learning_rate=1e-3, warmup_steps=10)
    toks = (
        TokenizerRecipe("tok-py-1024", "python-stdlib", 1024, 3_000_000, 0),
        TokenizerRecipe("tok-doc-2048", "debian-doc", 2048, 3_000_000, 2),
        TokenizerRecipe("tok-man-2048", "man-pages", 2048, 3_000_000, 4),
        TokenizerRecipe("tok-mix-1024", "python-stdlib+debian-doc+man-pages", 1024, 3_000_000, 5),
    )
    a_arch = _arch(96, 16, 4, 2, 24, 192)
    spread = {"gain_spread": 0.5}

    def base(name, tok, corpus, seed, arch, data_seed=0, steps=300):
        return ModelRecipe(name, BASE_KIND, seed=seed, corpus=corpus, tokenizer=tok,
                           train=base_tc.replace(steps=steps, data_seed=data_seed),
                           options={"arch": arch, **spread})

    def man(name, parent, kind, seed):
        return ModelRecipe(name, kind, parent=parent, seed=seed)

    models = [
        base("deep-a-s0", "tok-py-1024", "python-stdlib:a", 100, a_arch),
        base("deep-a-s1", "tok-py-1024", "python-stdlib:a", 101, a_arch),
        base("deep-b", "tok-doc-2048", "debian-doc", 102, _arch(64, 12, 4, 2, 16, 128), 2, 240),
        base("deep-c", "tok-mix-1024", "python-stdlib+debian-doc+man-pages", 103, _arch(80, 8, 4, 4, 20, 160), 3,
             200),
        # Derivations of deep-a-s0.
        ModelRecipe("deep-a-s0-sft", "sft", "deep-a-s0", 110, train=ft_tc.replace(data_seed=110),
                    options={"pairs": 2000, "pairs_split": "a"}),
        ModelRecipe("deep-a-s0-sft-dpo", "dpo", "deep-a-s0-sft", 111,
                    train=ft_tc.replace(steps=40, learning_rate=5e-4, data_seed=111),
                    options={"pairs": 192, "pairs_split": "b", "beta": 0.1}),
        ModelRecipe("deep-a-s0-vocab-man", "vocab-ext", "deep-a-s0", 113, corpus="man-pages",
                    train=heal_tc.replace(data_seed=113), options={"donor": "tok-man-2048", "num_new": 256}),
        ModelRecipe("deep-a-s0-llava", "multimodal", "deep-a-s0", 114, corpus="python-stdlib:b",
                    train=TrainConfig(steps=100, batch_size=32, seq_len=24, learning_rate=1e-3, warmup_steps=10,
                                      data_seed=114),
                    options={"projector_steps": 40, "lines": 3000, "num_patches": 20}),
        ModelRecipe("deep-a-s0-width64", "width-prune", "deep-a-s0", 115, corpus="python-stdlib:a",
                    train=heal_tc.replace(data_seed=115),
                    options={"hidden_size": 64, "num_kv_groups": 1, "intermediate_size": 128}),
        ModelRecipe("deep-a-s0-depth12", "depth-prune", "deep-a-s0", 116, corpus="python-stdlib:a",
                    train=heal_tc.replace(data_seed=116), options={"num_layers": 12}),
        ModelRecipe("deep-a-s0-moe4", "moe-upcycle", "deep-a-s0", 117, corpus="python-stdlib:a",
                    train=heal_tc.replace(steps=60, data_seed=117), options={"num_experts": 4, "top_k": 2}),
        ModelRecipe("deep-a-s0-distilled", DISTILL_KIND, "deep-a-s0", 118, corpus="python-stdlib:a",
                    train=base_tc.replace(steps=150, data_seed=118), options={"arch": _arch(64, 4, 4, 2, 16, 128)}),
        # Derivations of the other bases.
        ModelRecipe("deep-b-depth8", "depth-prune", "deep-b", 122, corpus="debian-doc",
                    train=heal_tc.replace(data_seed=122), options={"num_layers": 8}),
        ModelRecipe("deep-b-sft", "sft", "deep-b", 120, train=ft_tc.replace(data_seed=120),
                    options={"pairs": 2000, "pairs_split": "a"}),
        ModelRecipe("deep-c-cpt-py", "cpt", "deep-c", 123, corpus="python-stdlib",
                    train=base_tc.replace(steps=600, learning_rate=1.5e-3, data_seed=123)),
        # Function-preserving manipulations (and a 4-bit round trip), then a fine-tune of the
        # folded-and-rotated model.
        *(man(f"deep-a-s0-{k}", "deep-a-s0", k, 140 + i) for i, k in enumerate(MANIPULATION_KINDS)),
        ModelRecipe("deep-a-s0-dense-rotation-sft", "sft", "deep-a-s0-dense-rotation", 150,
                    train=ft_tc.replace(data_seed=150), options={"pairs": 2000, "pairs_split": "b"}),
        man("deep-a-s0-sft-norm-fold", "deep-a-s0-sft", "norm-fold", 151),
        man("deep-b-dense-rotation", "deep-b", "dense-rotation", 152),
        man("deep-b-depth8-combo", "deep-b-depth8", "combo", 153),
        man("deep-c-norm-fold", "deep-c", "norm-fold", 154),
    ]
    return Plan("deep", toks, tuple(models), dtype="float32")


def micro_plan() -> Plan:
    """Four tiny models for tests: a base, its SFT, an independent base, a manipulation."""
    tc = TrainConfig(steps=40, batch_size=8, seq_len=32, learning_rate=3e-3, warmup_steps=5)
    arch = _arch(32, 2, 2, 1, 16, 64)
    toks = (TokenizerRecipe("tok-micro", "python-stdlib:a", 320, 300_000, 0),)
    models = (
        ModelRecipe("micro-base", BASE_KIND, seed=0, corpus="python-stdlib:a",
                    tokenizer="tok-micro", train=tc, options={"arch": arch}),
        ModelRecipe("micro-base-sft", "sft", "micro-base", 1,
                    train=tc.replace(steps=20, seq_len=48, learning_rate=1e-3, data_seed=1),
                    options={"pairs": 200, "pairs_split": "a"}),
        ModelRecipe("micro-indep", BASE_KIND, seed=1, corpus="python-stdlib:a",
                    tokenizer="tok-micro", train=tc, options={"arch": arch}),
        ModelRecipe("micro-base-combo", "combo", "micro-base", 2),
    )
    return Plan("micro", toks, models, dtype="float32")


def examples_plan() -> Plan:
    """The three shipped example checkpoints (bf16): base, its SFT, an independent seed."""
    tc = TrainConfig(steps=400, batch_size=16, seq_len=64, learning_rate=3e-3, warmup_steps=30)
    arch = _arch(64, 4, 4, 2, 16, 128)
    toks = (TokenizerRecipe("tok-examples", "python-stdlib", 512, 2_000_000, 0),)
    models = (
        ModelRecipe("base", BASE_KIND, seed=0, corpus="python-stdlib", tokenizer="tok-examples",
                    train=tc, options={"arch": arch}),
        ModelRecipe("derived", "sft", "base", 1,
                    train=tc.replace(steps=200, seq_len=96, learning_rate=1e-3, warmup_steps=20,
                                     data_seed=1),
                    options={"pairs": 2000, "pairs_split": None}),
        ModelRecipe("independent", BASE_KIND, seed=1, corpus="python-stdlib",
                    tokenizer="tok-examples", train=tc, options={"arch": arch}),
    )
    return Plan("examples", toks, models, dtype="bfloat16")


#: Plan name -> constructor.
PLANS = {"full": full_plan, "deep": deep_plan, "micro": micro_plan, "examples": examples_plan}
