"""Builds a zoo plan into a cache directory: resumable, atomic, with a manifest.

Layout of a built zoo::

    <cache>/MANIFEST.json          every model, every labelled pair, label counts
    <cache>/tokenizers/NAME-FP.json
    <cache>/models/NAME/           model.safetensors, config.json, tokenizer.json,
                                   zoo_record.json (recipe, fingerprint, training summary)

Each model folder is written to a temporary sibling and moved into place when complete. A
model whose folder holds a record with the current *fingerprint* (a hash of its recipe, its
parent's fingerprint and its tokenizer recipe) is skipped, so an interrupted build resumes where
it stopped and a finished build does no work. Changing a recipe rebuilds that model and
everything below it.

The cache directory defaults to ``$AWM_ZOO_DIR``, else ``$XDG_CACHE_HOME/awm_jax/zoo``, else
``~/.cache/awm_jax/zoo`` (with ``-micro`` / ``-examples`` appended for those plans).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from tokenizers import Tokenizer

from awm_jax.zoo import derive, lineage
from awm_jax.zoo.checkpoint import CHECKPOINT_FILES, Checkpoint, atomic_directory, write_checkpoint
from awm_jax.zoo.corpus import instruction_pairs
from awm_jax.zoo.data import TokenWindows, corpus_documents, text_lines
from awm_jax.zoo.manipulate import RECIPE_VERSION, manipulate
from awm_jax.zoo.model import ModelConfig, init_params, num_parameters
from awm_jax.zoo.plans import (
    BASE_KIND,
    DERIVATION_KINDS,
    DISTILL_KIND,
    MANIPULATION_KINDS,
    ModelRecipe,
    Plan,
    TokenizerRecipe,
)
from awm_jax.zoo.tokenizer import encode_documents, train_bpe
from awm_jax.zoo.train import TrainConfig, causal_lm_loss, report_progress, train

__all__ = [
    "ZOO_FORMAT",
    "RECORD_FILE",
    "default_cache_dir",
    "BuildReport",
    "build_plan",
    "write_manifest",
    "write_examples",
]

#: Version of the folder layout and record format; part of every fingerprint.
ZOO_FORMAT = 1
#: Per-model record file inside each model folder.
RECORD_FILE = "zoo_record.json"
#: Characters of text sampled per training token (byte-level BPE on this text: 2.5-4).
_CHARS_PER_TOKEN = 3.2


def default_cache_dir(plan: str = "full") -> Path:
    """The zoo cache directory for ``plan`` (see the module docstring)."""
    if os.environ.get("AWM_ZOO_DIR"):
        root = Path(os.environ["AWM_ZOO_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        root = Path(os.environ["XDG_CACHE_HOME"]) / "awm_jax" / "zoo"
    else:
        root = Path.home() / ".cache" / "awm_jax" / "zoo"
    return root if plan == "full" else root.with_name(f"{root.name}-{plan}")


@dataclasses.dataclass
class BuildReport:
    """What a build did.

    Attributes:
        cache: the zoo directory.
        built: models trained or written by this run.
        skipped: models found finished.
        seconds: wall time of the run.
        manifest: path of the manifest written.
    """

    cache: Path
    built: list[str]
    skipped: list[str]
    seconds: float
    manifest: Path

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {"cache": str(self.cache), "built": self.built, "skipped": self.skipped,
                "seconds": round(self.seconds, 2), "manifest": str(self.manifest)}


def _fingerprint(payload: dict[str, Any]) -> str:
    blob = json.dumps({"format": ZOO_FORMAT, **payload}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _chars_for(tc: TrainConfig) -> int:
    return int(min(12_000_000, max(300_000, _CHARS_PER_TOKEN * tc.tokens)))


class _Builder:
    """Builds the models of one plan in order, keeping loaded parents and tokenizers."""

    def __init__(self, plan: Plan, cache: Path) -> None:
        self.plan = plan
        self.cache = cache
        self.fingerprints: dict[str, str] = {}
        self._tokenizers: dict[str, Tokenizer] = {}
        self._loaded: dict[str, Checkpoint] = {}

    # Tokenizers -------------------------------------------------------------------------
    def tokenizer_fp(self, name: str) -> str:
        return _fingerprint({"tokenizer": self.plan.tokenizer(name).to_dict()})

    def tokenizer_path(self, name: str) -> Path:
        return self.cache / "tokenizers" / f"{name}-{self.tokenizer_fp(name)}.json"

    def tokenizer(self, name: str) -> Tokenizer:
        if name not in self._tokenizers:
            path = self.tokenizer_path(name)
            if not path.is_file():
                r: TokenizerRecipe = self.plan.tokenizer(name)
                tok = train_bpe(corpus_documents(r.corpus, r.chars, r.seed), r.vocab_size)
                _atomic_write_text(path, tok.to_str())
            self._tokenizers[name] = Tokenizer.from_file(str(path))
        return self._tokenizers[name]

    # Models -----------------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.cache / "models" / name

    def fingerprint(self, r: ModelRecipe) -> str:
        if r.name not in self.fingerprints:
            payload: dict[str, Any] = {"recipe": r.to_dict(), "dtype": self.plan.dtype}
            if r.parent is not None:
                payload["parent"] = self.fingerprint(self.plan.model(r.parent))
            if r.kind in MANIPULATION_KINDS:
                payload["manipulation_recipes"] = RECIPE_VERSION
            for key in ("tokenizer", "donor"):
                tname = r.tokenizer if key == "tokenizer" else r.options.get("donor")
                if tname:
                    payload[key] = self.plan.tokenizer(tname).to_dict()
            self.fingerprints[r.name] = _fingerprint(payload)
        return self.fingerprints[r.name]

    def record(self, name: str) -> dict[str, Any] | None:
        path = self.folder(name) / RECORD_FILE
        if not path.is_file() or not all((self.folder(name) / f).is_file() for f in CHECKPOINT_FILES):
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def is_finished(self, r: ModelRecipe) -> bool:
        rec = self.record(r.name)
        return rec is not None and rec.get("fingerprint") == self.fingerprint(r)

    def load(self, name: str) -> Checkpoint:
        if name not in self._loaded:
            if len(self._loaded) >= 4:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[name] = Checkpoint.load(self.folder(name))
        return self._loaded[name]

    def tokenizer_label(self, r: ModelRecipe) -> str:
        if r.kind == BASE_KIND:
            return str(r.tokenizer)
        parent = self.record(str(r.parent)) or {}
        label = parent.get("tokenizer", "?")
        if r.kind == "vocab-ext":
            return f"{label}+{r.options['donor']}[{r.options['num_new']}]"
        if r.kind == "multimodal":
            return f"{label}+<image>"
        return label

    def make(self, r: ModelRecipe) -> tuple[Checkpoint, dict[str, Any]]:
        """Trains or rewrites one model. Returns the checkpoint and the derivation info."""
        tc = r.train
        o = r.options
        if r.kind == BASE_KIND:
            assert tc is not None and r.corpus is not None
            tok = self.tokenizer(str(r.tokenizer))
            cfg = ModelConfig(vocab_size=tok.get_vocab_size(), **o["arch"])
            tokens = encode_documents(tok, corpus_documents(r.corpus, _chars_for(tc), tc.data_seed))
            windows = TokenWindows(tokens, tc.batch_size, tc.seq_len, tc.data_seed)
            params = init_params(cfg, r.seed)
            if o.get("gain_spread"):
                params = spread_norm_gains(params, o["gain_spread"], r.seed)
            res = train(params, causal_lm_loss(cfg), windows, tc)
            return Checkpoint(cfg, res.params, tok), {"train": res.summary(),
                                                      "corpus_tokens": int(tokens.size)}
        parent = self.load(str(r.parent))
        if r.kind in (*DERIVATION_KINDS, DISTILL_KIND):
            assert tc is not None
            docs = (lambda: corpus_documents(str(r.corpus), _chars_for(tc), tc.data_seed))
            if r.kind == "sft":
                d = derive.supervised_finetune(
                    parent, instruction_pairs(o["pairs"], r.seed, o.get("pairs_split")), tc)
            elif r.kind == "dpo":
                d = derive.preference_tune(
                    parent, instruction_pairs(o["pairs"], r.seed, o.get("pairs_split")), tc,
                    beta=o.get("beta", 0.1))
            elif r.kind == "cpt":
                d = derive.continued_pretraining(parent, docs(), tc)
            elif r.kind == "vocab-ext":
                d = derive.extend_vocabulary(parent, self.tokenizer(o["donor"]), o["num_new"],
                                             docs(), tc)
            elif r.kind == "multimodal":
                d = derive.add_multimodal(parent, text_lines(str(r.corpus), o["lines"], r.seed), tc,
                                          o["projector_steps"], o.get("num_patches", 20), r.seed)
            elif r.kind == "width-prune":
                calib = corpus_documents(str(r.corpus), 200_000, r.seed)
                d = derive.prune_width(parent, calib, docs(), tc, o["hidden_size"],
                                       o["num_kv_groups"], o["intermediate_size"])
            elif r.kind == "depth-prune":
                calib = corpus_documents(str(r.corpus), 200_000, r.seed)
                d = derive.prune_depth(parent, calib, docs(), tc, o["num_layers"])
            elif r.kind == "moe-upcycle":
                d = derive.upcycle_moe(parent, docs(), tc, o.get("num_experts", 4),
                                       o.get("top_k", 2), r.seed)
            elif r.kind == DISTILL_KIND:
                student = ModelConfig(vocab_size=parent.cfg.vocab_size, **o["arch"])
                d = derive.distill(parent, student, r.seed, docs(), tc)
            else:  # pragma: no cover - guarded by Plan.validate
                raise ValueError(f"unknown kind {r.kind!r}")
            return d.checkpoint, d.info
        state = manipulate(r.kind, parent.cfg, parent.state_dict(), r.seed)
        return parent.with_state(parent.cfg, state), {"manipulation": r.kind}

    def build_one(self, r: ModelRecipe) -> dict[str, Any]:
        start = time.perf_counter()
        ckpt, info = self.make(r)
        cfg = ckpt.cfg
        pre = "language_model." if cfg.architecture == "llava" else ""
        state = ckpt.state_dict()
        record = {
            "name": r.name,
            "folder": f"models/{r.name}",
            "kind": r.kind,
            "category": r.category,
            "parent": r.parent,
            "seed": r.seed,
            "corpus": r.corpus if r.corpus is not None else (
                "instructions:python-stdlib" if r.kind in ("sft", "dpo") else None),
            "tokenizer": self.tokenizer_label(r),
            "architecture": {"llama": "LlamaForCausalLM", "mixtral": "MixtralForCausalLM",
                             "llava": "LlavaForConditionalGeneration"}[cfg.architecture],
            "config": cfg.to_dict(),
            "shapes": {
                "embed_tokens": list(state[f"{pre}model.embed_tokens.weight"].shape),
                "q_proj": list(state[f"{pre}model.layers.0.self_attn.q_proj.weight"].shape),
                "k_proj": list(state[f"{pre}model.layers.0.self_attn.k_proj.weight"].shape),
                "layers": cfg.num_hidden_layers,
            },
            "parameters": num_parameters(ckpt.params),
            "dtype": self.plan.dtype,
            "recipe": r.to_dict(),
            "fingerprint": self.fingerprint(r),
            "info": info,
            "seconds": round(time.perf_counter() - start, 2),
        }
        with atomic_directory(self.folder(r.name)) as tmp:
            write_checkpoint(tmp, cfg, state, ckpt.tokenizer, dtype=self.plan.dtype,
                             image_token_id=ckpt.image_token_id,
                             metadata={"zoo_name": r.name, "zoo_kind": r.kind})
            (tmp / RECORD_FILE).write_text(json.dumps(record, indent=1, default=_json_default))
        self._loaded.pop(r.name, None)
        return record


def spread_norm_gains(params: dict, spread: float, seed: int) -> dict:
    """Every RMSNorm gain drawn uniformly from ``[1 - spread, 1 + spread]`` before training, so a
    base's gains are far from 1 as a real model's are (a fresh gain of 1 barely moves in the
    zoo's short training, which would hide what norm folding does to a fingerprint)."""
    rng = np.random.default_rng(10_000 + seed)

    def draw(path, leaf):
        names = [str(getattr(k, "key", k)) for k in path]
        if leaf.ndim == 1 and any("norm" in n for n in names) and names[-1] == "weight":
            return jnp.asarray(rng.uniform(1 - spread, 1 + spread, leaf.shape), leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(draw, params)


def _json_default(x: Any) -> Any:
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def write_manifest(plan: Plan, cache: Path, records: list[dict[str, Any]]) -> Path:
    """Writes ``<cache>/MANIFEST.json`` for the finished ``records`` (in plan order)."""
    pairs = lineage.label_pairs(records)
    same = [p for p in pairs if p["same_hidden_size"]]
    relations: dict[str, int] = {}
    for p in pairs:
        if p["label"] == "derived" and not p["relation"].startswith("sibling"):
            relations[p["relation"]] = relations.get(p["relation"], 0) + 1
    builder = _Builder(plan, cache)
    manifest = {
        "format": ZOO_FORMAT,
        "plan": plan.name,
        "description": "Language models trained from scratch on local text with known lineage: "
        "bases, derivatives made by real training runs, function-preserving weight rewrites and "
        "distilled students, with a ground-truth label for every pair.",
        "label_definitions": lineage.LABELS,
        "comparable_pairs": "all pairs: every model has an input embedding, query/key "
        "projections and a byte-level BPE tokenizer (any two share the 256 byte tokens)",
        "complete": len(records) == len(plan.models),
        "dtype": plan.dtype,
        "tokenizers": [{**t.to_dict(), "file": str(builder.tokenizer_path(t.name).relative_to(cache))}
                       for t in plan.tokenizers],
        "counts": lineage.count_labels(pairs),
        "counts_same_hidden_size": lineage.count_labels(same),
        "derived_ancestor_relations": dict(sorted(relations.items())),
        "models": records,
        "pairs": pairs,
    }
    path = cache / "MANIFEST.json"
    _atomic_write_text(path, json.dumps(manifest, indent=1, default=_json_default) + "\n")
    return path


def build_plan(
    plan: Plan,
    cache: str | os.PathLike | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> BuildReport:
    """Builds every model of ``plan`` that is not finished, then writes the manifest.

    Args:
        plan: the plan.
        cache: zoo directory (default :func:`default_cache_dir`).
        progress: show a tqdm bar on stderr.
        log: called with one line per model built or skipped (default: through tqdm).

    Returns:
        A :class:`BuildReport`.
    """
    from tqdm import tqdm

    cache = Path(cache) if cache is not None else default_cache_dir(plan.name)
    cache.mkdir(parents=True, exist_ok=True)
    b = _Builder(plan, cache)
    start = time.perf_counter()
    built, skipped, records = [], [], []
    bar = tqdm(total=len(plan.models), desc=f"zoo[{plan.name}]", unit="model",
               disable=not progress, file=sys.stderr, mininterval=1.0, dynamic_ncols=False)
    say = log or (lambda s: tqdm.write(s, file=sys.stderr))
    try:
        for i, r in enumerate(plan.models):
            if b.is_finished(r):
                skipped.append(r.name)
                records.append(b.record(r.name))
                bar.update(1)
                continue
            bar.set_postfix_str(f"{r.name}: preparing")

            def on_step(step: int, steps: int, loss: float, name: str = r.name) -> None:
                if step == 1 or step % 10 == 0 or step == steps:
                    bar.set_postfix_str(f"{name}: step {step}/{steps} loss {loss:.3f}")

            with report_progress(on_step):
                rec = b.build_one(r)
            records.append(rec)
            built.append(r.name)
            tr = rec["info"].get("train")
            loss = f" loss {tr['loss_first']:.3f} -> {tr['loss_last']:.3f}" if tr else ""
            say(f"[{i + 1}/{len(plan.models)}] built {r.name} ({r.kind}) in "
                f"{rec['seconds']:.1f}s{loss} (elapsed {time.perf_counter() - start:.0f}s)")
            bar.update(1)
            write_manifest(plan, cache, records)  # partial manifest after every model
    finally:
        bar.close()
    manifest = write_manifest(plan, cache, records)
    return BuildReport(cache, built, skipped, time.perf_counter() - start, manifest)


def write_examples(
    out_dir: str | os.PathLike, cache: str | os.PathLike | None = None, progress: bool = True
) -> BuildReport:
    """Builds the examples plan and copies its three checkpoints to ``out_dir``.

    ``out_dir/{base,derived,independent}`` each receive ``model.safetensors``, ``config.json``
    and ``tokenizer.json`` (replacing what was there); ``out_dir/MANIFEST.json`` lists the
    models and labelled pairs.

    Args:
        out_dir: destination (e.g. the package's ``examples`` folder).
        cache: build directory (default :func:`default_cache_dir` of ``"examples"``).
        progress: show a progress bar.

    Returns:
        The report of the underlying build.
    """
    from awm_jax.zoo.plans import examples_plan

    plan = examples_plan()
    report = build_plan(plan, cache, progress=progress)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = json.loads(report.manifest.read_text())
    for m in plan.models:
        with atomic_directory(out / m.name) as tmp:
            for f in CHECKPOINT_FILES:
                shutil.copy2(report.cache / "models" / m.name / f, tmp / f)
    for rec in manifest["models"]:
        rec["folder"] = rec["name"]
    manifest.pop("tokenizers", None)
    _atomic_write_text(out / "MANIFEST.json", json.dumps(manifest, indent=1) + "\n")
    return report
