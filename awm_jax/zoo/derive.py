"""Derivations: real training runs that turn a parent checkpoint into a derived model.

Each function takes a parent :class:`~awm_jax.zoo.checkpoint.Checkpoint`, the text it trains
on and a :class:`~awm_jax.zoo.train.TrainConfig`, and returns a :class:`Derived` (the new
checkpoint and a JSON-ready record of what was done). The kinds mirror how public models are
derived from one another:

* :func:`supervised_finetune`: instruction tuning on question/answer pairs, loss on answers.
* :func:`continued_pretraining`: language-model training on a new domain.
* :func:`preference_tune`: DPO against the frozen parent on pairs whose rejected answer the
  parent itself generated.
* :func:`extend_vocabulary`: new merges from a new domain appended to the tokenizer, embedding
  and head resized (new rows = mean of the two pieces each new token merges), then training.
* :func:`add_multimodal`: LLaVA-style projector from image patches into the embedding space,
  trained alone and then jointly with the language model.
* :func:`prune_width` / :func:`prune_depth`: hidden channels, key/value groups and MLP channels
  (or whole layers) removed by activation-based importance, then healed by training.
* :func:`upcycle_moe`: every MLP copied into the experts of a Mixtral block with a new router,
  then trained.
* :func:`distill`: a freshly initialised smaller student trained on the parent's output
  distribution. The student shares no weights with the teacher; lineage tests are expected
  to treat it apart.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from tokenizers import AddedToken, Tokenizer

from awm_jax.zoo import tokenizer as zoo_tokenizer
from awm_jax.zoo.checkpoint import Checkpoint, from_state_dict
from awm_jax.zoo.corpus import format_instruction
from awm_jax.zoo.data import CaptionBatches, InstructionBatches, TokenWindows
from awm_jax.zoo.model import ModelConfig, build_module, init_params
from awm_jax.zoo.train import TrainConfig, causal_lm_loss, sequence_logprobs, train
from awm_jax.zoo.vision import FEATURE_SIZE

__all__ = [
    "Derived",
    "supervised_finetune",
    "continued_pretraining",
    "sample_continuations",
    "preference_tune",
    "extend_vocabulary",
    "add_multimodal",
    "activation_importance",
    "prune_width",
    "prune_depth",
    "upcycle_moe",
    "distill",
]

State = dict[str, np.ndarray]


@dataclasses.dataclass
class Derived:
    """A derived model and the record of its derivation.

    Attributes:
        checkpoint: the new model.
        info: JSON-ready details (training summary, what was added or removed).
    """

    checkpoint: Checkpoint
    info: dict[str, Any]


def _windows(tok: Tokenizer, docs: Sequence[str], tc: TrainConfig) -> TokenWindows:
    tokens = zoo_tokenizer.encode_documents(tok, docs)
    return TokenWindows(tokens, tc.batch_size, tc.seq_len, tc.data_seed)


def _lm_run(ckpt: Checkpoint, docs: Sequence[str], tc: TrainConfig) -> tuple[Checkpoint, dict]:
    windows = _windows(ckpt.tokenizer, docs, tc)
    res = train(ckpt.params, causal_lm_loss(ckpt.cfg), windows, tc)
    out = dataclasses.replace(ckpt, params=res.params)
    return out, {"train": res.summary(), "corpus_tokens": int(windows.tokens.size)}


def supervised_finetune(
    parent: Checkpoint, pairs: Sequence[tuple[str, str]], tc: TrainConfig
) -> Derived:
    """Instruction tuning: next-token loss on the answer tokens of question/answer pairs.

    Args:
        parent: model to tune (Llama architecture).
        pairs: ``[(question, answer), ...]`` formatted with
            :func:`~awm_jax.zoo.corpus.format_instruction`.
        tc: training settings (``seq_len`` bounds prompt plus answer).

    Returns:
        The tuned model; ``info`` has the training summary and the number of examples.
    """
    batches = InstructionBatches(parent.tokenizer, pairs, tc.batch_size, tc.seq_len, tc.data_seed)
    res = train(parent.params, causal_lm_loss(parent.cfg), batches, tc)
    return Derived(
        dataclasses.replace(parent, params=res.params),
        {"train": res.summary(), "examples": len(batches)},
    )


def continued_pretraining(parent: Checkpoint, docs: Sequence[str], tc: TrainConfig) -> Derived:
    """Language-model training of ``parent`` on new documents.

    Returns:
        The trained model; ``info["train"]["tokens"]`` is the number of target tokens seen.
    """
    ckpt, info = _lm_run(parent, docs, tc)
    return Derived(ckpt, info)


def sample_continuations(
    cfg: ModelConfig,
    params: Any,
    prompts: Sequence[Sequence[int]],
    max_new: int,
    seed: int,
    temperature: float = 1.0,
    batch_size: int = 64,
) -> list[list[int]]:
    """Samples continuations of token prompts (no cache: one full forward per new token).

    Args:
        cfg: model shapes (Llama or Mixtral).
        params: parameter tree.
        prompts: token id lists.
        max_new: tokens sampled per prompt; a continuation is cut after its first ``</s>``.
        seed: sampling seed.
        temperature: softmax temperature.
        batch_size: prompts per forward.

    Returns:
        One list of new token ids per prompt (``</s>`` included when sampled).
    """
    module = build_module(cfg)
    width = max(len(p) for p in prompts) + max_new

    @jax.jit
    def step(p, buf, pos, key):
        logits = module.apply({"params": p}, buf)  # [B, W, V]
        last = jnp.take_along_axis(logits, pos[:, None, None], axis=1)[:, 0]
        return jax.random.categorical(key, last / temperature, axis=-1).astype(jnp.int32)

    key = jax.random.key(seed)
    out: list[list[int]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start : start + batch_size])
        real = len(chunk)
        chunk += [chunk[-1]] * (batch_size - real)  # fixed shape: one compilation
        buf = np.full((batch_size, width), zoo_tokenizer.PAD_ID, np.int32)
        lens = np.array([len(p) for p in chunk])
        for i, p in enumerate(chunk):
            buf[i, : len(p)] = p
        for s in range(max_new):
            key, sub = jax.random.split(key)
            tok = np.asarray(step(params, buf, jnp.asarray(lens + s - 1), sub))
            buf[np.arange(batch_size), lens + s] = tok
        for i in range(real):
            new = buf[i, lens[i] : lens[i] + max_new].tolist()
            if zoo_tokenizer.EOS_ID in new:
                new = new[: new.index(zoo_tokenizer.EOS_ID) + 1]
            out.append(new)
    return out


def _response_rows(prompt: list[int], reply: list[int], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    ids = (prompt + reply)[: seq_len + 1]
    row = np.full(seq_len + 1, zoo_tokenizer.PAD_ID, np.int32)
    row[: len(ids)] = ids
    mask = np.zeros(seq_len, np.float32)
    mask[len(prompt) - 1 : len(ids) - 1] = 1.0
    return row, mask


def preference_tune(
    parent: Checkpoint,
    pairs: Sequence[tuple[str, str]],
    tc: TrainConfig,
    beta: float = 0.1,
    max_new: int = 24,
) -> Derived:
    """Direct preference optimisation on generated pairs.

    For each question the chosen answer is the reference answer and the rejected answer is a
    continuation sampled from ``parent``, which is also the frozen DPO reference. The loss is
    ``-log sigmoid(beta ((pi_c - ref_c) - (pi_r - ref_r)))`` over summed answer log-probs.

    Args:
        parent: policy at the start and frozen reference (usually an SFT model).
        pairs: ``[(question, answer), ...]``.
        tc: training settings (``seq_len`` bounds prompt plus answer).
        beta: DPO temperature.
        max_new: longest sampled rejected answer.

    Returns:
        The tuned model; ``info`` has the number of pairs and the final preference accuracy.
    """
    tok, cfg = parent.tokenizer, parent.cfg
    prompts, chosen = [], []
    for q, a in pairs:
        p = tok.encode(format_instruction(q), add_special_tokens=False).ids
        if len(p) + 4 > tc.seq_len:
            continue
        prompts.append(p)
        chosen.append(tok.encode(a, add_special_tokens=False).ids + [zoo_tokenizer.EOS_ID])
    if not prompts:
        raise ValueError("no preference prompt fits seq_len; raise seq_len")
    rejected = sample_continuations(cfg, parent.params, prompts, max_new, seed=tc.data_seed + 1)
    rows = [(_response_rows(p, c, tc.seq_len), _response_rows(p, r, tc.seq_len))
            for p, c, r in zip(prompts, chosen, rejected)]
    c_ids = np.stack([r[0][0] for r in rows]); c_mask = np.stack([r[0][1] for r in rows])
    r_ids = np.stack([r[1][0] for r in rows]); r_mask = np.stack([r[1][1] for r in rows])

    ref_fn = jax.jit(lambda p, i, m: sequence_logprobs(cfg, p, i, m))
    ref_c = np.concatenate([np.asarray(ref_fn(parent.params, c_ids[s:s + 64], c_mask[s:s + 64]))
                            for s in range(0, len(c_ids), 64)])
    ref_r = np.concatenate([np.asarray(ref_fn(parent.params, r_ids[s:s + 64], r_mask[s:s + 64]))
                            for s in range(0, len(r_ids), 64)])

    def batches() -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(tc.data_seed)
        while True:
            i = rng.integers(0, len(c_ids), size=tc.batch_size)
            yield {"chosen": c_ids[i], "chosen_mask": c_mask[i], "rejected": r_ids[i],
                   "rejected_mask": r_mask[i], "ref_chosen": ref_c[i], "ref_rejected": ref_r[i]}

    def loss_fn(params, b):
        ids = jnp.concatenate([b["chosen"], b["rejected"]])
        mask = jnp.concatenate([b["chosen_mask"], b["rejected_mask"]])
        lp = sequence_logprobs(cfg, params, ids, mask)
        pi_c, pi_r = jnp.split(lp, 2)
        margin = beta * ((pi_c - b["ref_chosen"]) - (pi_r - b["ref_rejected"]))
        return -jnp.mean(jax.nn.log_sigmoid(margin)), {"acc": jnp.mean(margin > 0)}

    res = train(parent.params, loss_fn, batches(), tc)
    final = jax.jit(loss_fn)(res.params, next(batches()))[1]
    return Derived(
        dataclasses.replace(parent, params=res.params),
        {"train": res.summary(), "pairs": len(c_ids), "beta": beta,
         "preference_accuracy": float(final["acc"])},
    )


def _append_vocab_rows(state: State, prefix: str, make_rows) -> State:
    """Appends rows to the embedding and the head: ``make_rows(w [V, n]) -> [k, n]``."""
    out = dict(state)
    for name in (f"{prefix}model.embed_tokens.weight", f"{prefix}lm_head.weight"):
        w = state[name]
        out[name] = np.concatenate([w, np.asarray(make_rows(w), np.float32)], axis=0)
    return out


def extend_vocabulary(
    parent: Checkpoint, donor: Tokenizer, num_new: int, docs: Sequence[str], tc: TrainConfig
) -> Derived:
    """Adds merges of ``donor`` to the tokenizer, resizes embedding and head, then trains.

    The row of a new token ``a + b`` (embedding and head) starts as the mean of the rows of
    ``a`` and ``b``; pieces that were themselves added earlier are already initialised.

    Args:
        parent: Llama-architecture model to extend.
        donor: tokenizer trained on the new domain.
        num_new: tokens to add (fewer if the donor runs out of applicable merges).
        docs: training documents (encoded with the extended tokenizer).
        tc: training settings.

    Returns:
        The extended model; ``info["added_tokens"]`` counts the new tokens.
    """
    tok, added = zoo_tokenizer.extend_vocabulary(parent.tokenizer, donor, num_new)
    vocab = tok.get_vocab()
    pieces = [(vocab[a], vocab[b]) for a, b in added]

    def merged_rows(w: np.ndarray) -> np.ndarray:
        rows = list(w)
        for ia, ib in pieces:
            rows.append((rows[ia] + rows[ib]) / 2.0)
        return np.stack(rows[len(w):]) if pieces else np.zeros((0, w.shape[1]), w.dtype)

    state = _append_vocab_rows(parent.state_dict(), "", merged_rows)
    cfg = parent.cfg.replace(vocab_size=tok.get_vocab_size())
    ckpt, info = _lm_run(Checkpoint(cfg, from_state_dict(state), tok), docs, tc)
    info.update({"added_tokens": len(added), "vocab_size": cfg.vocab_size})
    return Derived(ckpt, info)


def add_multimodal(
    parent: Checkpoint,
    lines: Sequence[str],
    tc: TrainConfig,
    projector_steps: int,
    num_patches: int = 20,
    seed: int = 0,
) -> Derived:
    """LLaVA-style extension: an ``<image>`` token, a projector, then two training stages.

    Stage 1 trains the projector alone for ``projector_steps`` steps; stage 2 trains projector
    and language model jointly for ``tc.steps`` steps. The task is reading: the image of a text
    line (``num_patches`` patches, see :mod:`awm_jax.zoo.vision`) followed by ``<s>`` must be
    continued with that line.

    Args:
        parent: Llama-architecture language model.
        lines: text lines to render and read.
        tc: joint-stage settings (``seq_len`` bounds the line's tokens).
        projector_steps: steps of stage 1.
        num_patches: patches per image.
        seed: projector initialisation seed.

    Returns:
        A ``"llava"`` checkpoint saved under LLaVA names.
    """
    if parent.cfg.architecture != "llama":
        raise ValueError(f"add_multimodal needs a llama parent, got {parent.cfg.architecture!r}")
    tok = Tokenizer.from_str(parent.tokenizer.to_str())
    tok.add_special_tokens([AddedToken("<image>", special=True)])
    image_id = tok.token_to_id("<image>")
    state = _append_vocab_rows(parent.state_dict(), "", lambda w: w.mean(axis=0, keepdims=True))
    cfg = parent.cfg.replace(architecture="llava", vision_feature_size=FEATURE_SIZE,
                             vocab_size=image_id + 1)
    fresh = init_params(cfg, seed)
    params = {"language_model": from_state_dict(state),
              "multi_modal_projector": fresh["multi_modal_projector"]}
    batches = CaptionBatches(tok, lines, tc.batch_size, tc.seq_len, num_patches, tc.data_seed)
    loss = causal_lm_loss(cfg)
    stage1 = train(params, loss, batches, tc.replace(steps=projector_steps),
                   trainable=lambda path: path.startswith("multi_modal_projector"))
    stage2 = train(stage1.params, loss, batches, tc)
    return Derived(
        Checkpoint(cfg, stage2.params, tok, image_id),
        {"projector_train": stage1.summary(), "train": stage2.summary(), "lines": len(lines),
         "num_patches": num_patches, "image_token_id": image_id},
    )


def activation_importance(ckpt: Checkpoint, ids: np.ndarray) -> dict[str, np.ndarray]:
    """Activation statistics used to rank prunable units (Minitron-style).

    Args:
        ckpt: a Llama-architecture model.
        ids: ``[B, T]`` calibration token ids.

    Returns:
        ``"hidden" [n]``: mean |normalised input| of every attention and MLP block, summed over
        layers; ``"kv_groups" [L, K]``: mean L2 norm of the attention heads' outputs, summed per
        key/value group; ``"mlp" [L, m]``: mean |SwiGLU activation|; ``"block_influence" [L]``:
        ``1 - mean cos(residual in, residual out)`` of each layer (ShortGPT).
    """
    cfg = ckpt.cfg
    module = build_module(cfg)
    _, state = jax.jit(lambda p, x: module.apply({"params": p}, x, mutable=["intermediates"]))(
        ckpt.params, jnp.asarray(ids)
    )
    sown = {k: np.asarray(v[0]) for k, v in traverse_util.flatten_dict(state["intermediates"]).items()}
    n_layers, k = cfg.num_hidden_layers, cfg.num_key_value_heads
    hidden = np.zeros(cfg.hidden_size)
    kv = np.zeros((n_layers, k))
    mlp = np.zeros((n_layers, cfg.intermediate_size))
    residuals = []
    for i in range(n_layers):
        lk = ("model", f"layers.{i}")
        hidden += np.abs(sown[lk + ("attn_in",)]).mean(axis=(0, 1))
        hidden += np.abs(sown[lk + ("mlp_in",)]).mean(axis=(0, 1))
        heads = np.linalg.norm(sown[lk + ("self_attn", "heads")], axis=-1).mean(axis=(0, 1))
        kv[i] = heads.reshape(k, -1).sum(axis=1)
        mlp[i] = np.abs(sown[lk + ("mlp", "act")]).mean(axis=(0, 1))
        residuals.append(sown[lk + ("residual_in",)])
    residuals.append(sown[("model", "residual_final")])
    bi = np.zeros(n_layers)
    for i in range(n_layers):
        a, b = residuals[i], residuals[i + 1]
        cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)
        bi[i] = 1.0 - cos.mean()
    return {"hidden": hidden, "kv_groups": kv, "mlp": mlp, "block_influence": bi}


def _calibration_ids(ckpt: Checkpoint, docs: Sequence[str], seed: int) -> np.ndarray:
    tokens = zoo_tokenizer.encode_documents(ckpt.tokenizer, docs)
    return next(TokenWindows(tokens, 16, 64, seed))["ids"][:, :-1]


def _top(scores: np.ndarray, keep: int) -> np.ndarray:
    return np.sort(np.argsort(-scores, kind="stable")[:keep])


def prune_width(
    parent: Checkpoint,
    calib_docs: Sequence[str],
    heal_docs: Sequence[str],
    tc: TrainConfig,
    hidden_size: int,
    num_kv_groups: int,
    intermediate_size: int,
) -> Derived:
    """Removes the least important hidden channels, key/value groups and MLP channels, then heals.

    Kept units keep their order. A removed key/value group takes its query heads with it.

    Args:
        parent: Llama-architecture model.
        calib_docs: text for the importance scores.
        heal_docs: text for the healing run.
        tc: healing settings.
        hidden_size: kept residual width ``n' <= n``.
        num_kv_groups: kept key/value heads ``K' <= K``.
        intermediate_size: kept MLP width ``m' <= m`` (per layer).

    Returns:
        The pruned, healed model; ``info["kept_hidden"]`` lists the kept residual channels.
    """
    cfg = parent.cfg
    if cfg.architecture != "llama":
        raise ValueError("prune_width needs a llama model")
    if not (0 < hidden_size <= cfg.hidden_size and 0 < num_kv_groups <= cfg.num_key_value_heads
            and 0 < intermediate_size <= cfg.intermediate_size):
        raise ValueError("pruned sizes must be positive and no larger than the parent's")
    imp = activation_importance(parent, _calibration_ids(parent, calib_docs, tc.data_seed))
    keep_h = _top(imp["hidden"], hidden_size)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    d = cfg.head_dim
    s = parent.state_dict()
    new: State = {
        "model.embed_tokens.weight": s["model.embed_tokens.weight"][:, keep_h],
        "lm_head.weight": s["lm_head.weight"][:, keep_h],
        "model.norm.weight": s["model.norm.weight"][keep_h],
    }
    kept_groups = []
    for i in range(cfg.num_hidden_layers):
        lp = f"model.layers.{i}."
        g = _top(imp["kv_groups"][i], num_kv_groups)
        kept_groups.append(g.tolist())
        q_rows = np.concatenate([np.arange(h * d, (h + 1) * d)
                                 for gg in g for h in range(gg * group, (gg + 1) * group)])
        k_rows = np.concatenate([np.arange(gg * d, (gg + 1) * d) for gg in g])
        m = _top(imp["mlp"][i], intermediate_size)
        new.update({
            lp + "input_layernorm.weight": s[lp + "input_layernorm.weight"][keep_h],
            lp + "post_attention_layernorm.weight": s[lp + "post_attention_layernorm.weight"][keep_h],
            lp + "self_attn.q_proj.weight": s[lp + "self_attn.q_proj.weight"][np.ix_(q_rows, keep_h)],
            lp + "self_attn.k_proj.weight": s[lp + "self_attn.k_proj.weight"][np.ix_(k_rows, keep_h)],
            lp + "self_attn.v_proj.weight": s[lp + "self_attn.v_proj.weight"][np.ix_(k_rows, keep_h)],
            lp + "self_attn.o_proj.weight": s[lp + "self_attn.o_proj.weight"][np.ix_(keep_h, q_rows)],
            lp + "mlp.gate_proj.weight": s[lp + "mlp.gate_proj.weight"][np.ix_(m, keep_h)],
            lp + "mlp.up_proj.weight": s[lp + "mlp.up_proj.weight"][np.ix_(m, keep_h)],
            lp + "mlp.down_proj.weight": s[lp + "mlp.down_proj.weight"][np.ix_(keep_h, m)],
        })
    new_cfg = cfg.replace(hidden_size=hidden_size, num_key_value_heads=num_kv_groups,
                          num_attention_heads=num_kv_groups * group,
                          intermediate_size=intermediate_size)
    ckpt, info = _lm_run(parent.with_state(new_cfg, new), heal_docs, tc)
    info.update({"kept_hidden": keep_h.tolist(), "kept_kv_groups": kept_groups})
    return Derived(ckpt, info)


def prune_depth(
    parent: Checkpoint,
    calib_docs: Sequence[str],
    heal_docs: Sequence[str],
    tc: TrainConfig,
    num_layers: int,
) -> Derived:
    """Removes the layers of lowest block influence, then heals.

    Args:
        parent: Llama-architecture model.
        calib_docs: text for the block-influence scores.
        heal_docs: text for the healing run.
        tc: healing settings.
        num_layers: kept depth ``L' < L``.

    Returns:
        The pruned, healed model; ``info["kept_layers"]`` lists the parent's kept layer indices.
    """
    cfg = parent.cfg
    if cfg.architecture != "llama" or not 0 < num_layers < cfg.num_hidden_layers:
        raise ValueError("prune_depth needs a llama model and 0 < num_layers < its depth")
    imp = activation_importance(parent, _calibration_ids(parent, calib_docs, tc.data_seed))
    kept = _top(imp["block_influence"], num_layers)
    s = parent.state_dict()
    new: State = {k: v for k, v in s.items() if not k.startswith("model.layers.")}
    for j, i in enumerate(kept):
        old, fresh = f"model.layers.{i}.", f"model.layers.{j}."
        new.update({fresh + k[len(old):]: v for k, v in s.items() if k.startswith(old)})
    ckpt, info = _lm_run(parent.with_state(cfg.replace(num_hidden_layers=num_layers), new),
                         heal_docs, tc)
    info.update({"kept_layers": kept.tolist(),
                 "block_influence": [round(float(x), 5) for x in imp["block_influence"]]})
    return Derived(ckpt, info)


def upcycle_moe(
    parent: Checkpoint,
    docs: Sequence[str],
    tc: TrainConfig,
    num_experts: int = 4,
    top_k: int = 2,
    seed: int = 0,
) -> Derived:
    """Sparse upcycling: each MLP copied into ``num_experts`` experts with a new router.

    At initialisation the Mixtral model computes exactly the parent's function (all experts
    are equal and the top-k weights sum to 1); training then lets the experts diverge.

    Args:
        parent: Llama-architecture model.
        docs: training documents.
        tc: training settings.
        num_experts: experts per layer.
        top_k: experts per token.
        seed: router initialisation seed.

    Returns:
        A ``"mixtral"`` checkpoint.
    """
    cfg = parent.cfg
    if cfg.architecture != "llama":
        raise ValueError("upcycle_moe needs a llama model")
    new_cfg = cfg.replace(architecture="mixtral", num_local_experts=num_experts,
                          num_experts_per_tok=top_k)
    s = parent.state_dict()
    rng = np.random.default_rng(seed)
    new: State = {k: v for k, v in s.items() if ".mlp." not in k}
    for i in range(cfg.num_hidden_layers):
        lp = f"model.layers.{i}."
        new[lp + "block_sparse_moe.gate.weight"] = rng.normal(
            0.0, cfg.init_std, (num_experts, cfg.hidden_size)).astype(np.float32)
        for e in range(num_experts):
            ep = lp + f"block_sparse_moe.experts.{e}."
            new[ep + "w1.weight"] = s[lp + "mlp.gate_proj.weight"].copy()
            new[ep + "w3.weight"] = s[lp + "mlp.up_proj.weight"].copy()
            new[ep + "w2.weight"] = s[lp + "mlp.down_proj.weight"].copy()
    ckpt, info = _lm_run(parent.with_state(new_cfg, new), docs, tc)
    info.update({"num_experts": num_experts, "top_k": top_k})
    return Derived(ckpt, info)


def distill(
    teacher: Checkpoint,
    student_cfg: ModelConfig,
    seed: int,
    docs: Sequence[str],
    tc: TrainConfig,
    temperature: float = 2.0,
    kd_weight: float = 0.9,
) -> Derived:
    """Knowledge distillation into a freshly initialised student with the teacher's tokenizer.

    Loss: ``kd_weight * T^2 KL(teacher_T || student_T) + (1 - kd_weight) * CE``.

    Args:
        teacher: model whose output distribution is matched (Llama or Mixtral).
        student_cfg: student shapes (``vocab_size`` must equal the teacher's).
        seed: student initialisation seed.
        docs: training documents.
        tc: training settings.
        temperature: distillation temperature ``T``.
        kd_weight: weight of the distillation term.

    Returns:
        The student; it shares no parameters with the teacher.
    """
    if student_cfg.vocab_size != teacher.cfg.vocab_size:
        raise ValueError("the student must use the teacher's vocabulary size")
    t_module, s_module = build_module(teacher.cfg), build_module(student_cfg)
    teacher_params = jax.tree_util.tree_map(jnp.asarray, teacher.params)

    def loss_fn(params, b):
        ids = b["ids"]
        inputs, targets = ids[:, :-1], ids[:, 1:]
        t_logits = jax.lax.stop_gradient(t_module.apply({"params": b["teacher"]}, inputs))
        s_logits = s_module.apply({"params": params}, inputs)
        t_logp = jax.nn.log_softmax(t_logits / temperature, axis=-1)
        s_logp = jax.nn.log_softmax(s_logits / temperature, axis=-1)
        kl = jnp.mean(jnp.sum(jnp.exp(t_logp) * (t_logp - s_logp), axis=-1)) * temperature**2
        logp = jax.nn.log_softmax(s_logits, axis=-1)
        ce = -jnp.mean(jnp.take_along_axis(logp, targets[..., None], axis=-1))
        return kd_weight * kl + (1.0 - kd_weight) * ce, {"kl": kl, "ce": ce}

    windows = _windows(teacher.tokenizer, docs, tc)
    batches = ({"ids": b["ids"], "teacher": teacher_params} for b in windows)
    res = train(init_params(student_cfg, seed), loss_fn, batches, tc)
    return Derived(
        Checkpoint(student_cfg, res.params, teacher.tokenizer),
        {"train": res.summary(), "temperature": temperature, "kd_weight": kd_weight,
         "corpus_tokens": int(windows.tokens.size)},
    )
