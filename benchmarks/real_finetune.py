"""Short real fine-tunes of SmolLM2-135M-Instruct with the zoo's flax training stack.

The converted SmolLM2 (a Hugging Face Llama state dict, see :mod:`benchmarks.real_models`) is
loaded into :class:`awm_jax.zoo.model.CausalLM` and trained on English text of the zoo corpus
(``man-pages``, tokenised with the model's own byte-level BPE, rebuilt from the GGUF's vocabulary
and merges) by :func:`awm_jax.zoo.train.train` (AdamW, warm-up and cosine decay, clipping).
SmolLM2 ties ``lm_head`` to the embedding; the zoo model has an untied head, so the loss fills the
head from the embedding on every call and the tie survives training (one matrix, trained by both
uses, as in the original).

Before training, :func:`finetune` checks the forward pass: the pretrained model's next-token loss
on held-out text (split ``b`` of the corpus; training reads split ``a``) must be far below
``ln V`` (10.8 nats for 49,152 tokens): below :data:`MAX_PRETRAINED_LOSS`, a bound that a wrong
rotary row order (5.3 nats) already fails, so a broken load raises instead of training.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FinetuneSpec",
    "FinetuneRecord",
    "MAX_PRETRAINED_LOSS",
    "gguf_tokenizer",
    "zoo_config",
    "finetune",
    "write_tokenizer",
    "write_record",
]

#: The pretrained model's held-out loss must be below this (nats) or the load is wrong. On the
#: manual pages SmolLM2-135M scores 3.98; with its ``q``/``k`` rows left in llama.cpp's rotary order
#: (the one mistake that still leaves a working language model) 5.30; scrambled weights ~ln V.
MAX_PRETRAINED_LOSS = 4.5
#: English prose of the zoo corpus: manual pages (split ``a`` trains, ``b`` evaluates).
TRAIN_CORPUS, EVAL_CORPUS = "man-pages:a", "man-pages:b"
EVAL_BATCHES = 4

State = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class FinetuneSpec:
    """One fine-tune of the pretrained model.

    Attributes:
        steps: AdamW steps.
        learning_rate: peak learning rate (warm-up then cosine decay to a tenth).
        batch_size: sequences per step ``B``.
        seq_len: target tokens per sequence ``T``.
        seed: seed of the training batches and of the sampled text.
    """

    steps: int
    learning_rate: float
    batch_size: int = 4
    seq_len: int = 64
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class FinetuneRecord:
    """What one fine-tune did (JSON-ready through :meth:`to_dict`).

    Attributes:
        spec: the settings.
        eval_loss_before: held-out next-token loss of the pretrained model (nats/token).
        eval_loss_after: the same of the fine-tuned model.
        train_loss_first: mean training loss of the first steps.
        train_loss_last: mean training loss of the last steps.
        relative_change: ``||W' - W|| / ||W||`` over all matrices.
        tokens: training target tokens.
        seconds: wall time of the training loop (compilation included).
    """

    spec: FinetuneSpec
    eval_loss_before: float
    eval_loss_after: float
    train_loss_first: float
    train_loss_last: float
    relative_change: float
    tokens: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the spec nested)."""
        return dataclasses.asdict(self)


def gguf_tokenizer(gguf_path: Path):
    """The model's byte-level BPE (``tokenizers.Tokenizer``) from the GGUF's vocabulary and merges.

    Control tokens (``<|endoftext|>``, ``<|im_start|>``, ...) become special added tokens; digits
    are split one by one before the byte-level split, as SmolLM2's own pre-tokenizer does.
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from benchmarks.real_models import _field_strings

    reader = GGUFReader(str(gguf_path))
    tokens = _field_strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _field_strings(reader, "tokenizer.ggml.merges")]
    field = reader.fields["tokenizer.ggml.token_type"]
    control = [tokens[j] for j, i in enumerate(field.data) if int(field.parts[i][0]) == 3]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


def zoo_config(config: dict):
    """The zoo :class:`~awm_jax.zoo.model.ModelConfig` of a Hugging Face Llama ``config.json``."""
    from awm_jax.zoo.model import ModelConfig

    return ModelConfig(
        vocab_size=config["vocab_size"], hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"], num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"], num_key_value_heads=config["num_key_value_heads"],
        head_dim=config["head_dim"], rms_norm_eps=config["rms_norm_eps"], rope_theta=config["rope_theta"],
        max_position_embeddings=config.get("max_position_embeddings", 2048), bos_token_id=1, eos_token_id=2,
        pad_token_id=2)


def _tied_loss(cfg):
    """The zoo's next-token loss with ``lm_head`` filled from the embedding (parameters hold no head)."""
    from awm_jax.zoo.train import causal_lm_loss

    base = causal_lm_loss(cfg)

    def loss_fn(params, batch):
        head = {"weight": params["model"]["embed_tokens"]["weight"]}
        return base(dict(params, lm_head=head), batch)

    return loss_fn


def _eval_loss(loss_fn, params, batches: list[dict]) -> float:
    import jax

    step = jax.jit(lambda p, b: loss_fn(p, b)[0])
    return float(np.mean([float(step(params, b)) for b in batches]))


def _tokens(tok, spec: str, max_chars: int, seed: int) -> np.ndarray:
    from awm_jax.zoo.data import corpus_documents
    from awm_jax.zoo.tokenizer import encode_documents

    eos = tok.token_to_id("<|endoftext|>")
    return encode_documents(tok, corpus_documents(spec, max_chars, seed), eos_id=eos)


def finetune(config: dict, state: State, tok, spec: FinetuneSpec, log=print) -> tuple[State, FinetuneRecord]:
    """Fine-tunes every weight of a tied-embedding Llama state dict on English text.

    Args:
        config: the Hugging Face ``config.json`` content (``tie_word_embeddings`` true).
        state: float32 tensors with Hugging Face names, ``lm_head.weight`` absent.
        tok: the model's tokenizer (:func:`gguf_tokenizer`).
        spec: steps, learning rate, batch shape and seed.
        log: progress printer.

    Returns:
        The fine-tuned state dict (same names and shapes, head still tied) and its record.

    Raises:
        ValueError: the pretrained model's held-out loss is not below
            :data:`MAX_PRETRAINED_LOSS` (the weights were loaded wrongly).
    """
    from awm_jax.zoo.checkpoint import from_state_dict, to_state_dict
    from awm_jax.zoo.data import TokenWindows
    from awm_jax.zoo.train import TrainConfig, report_progress, train

    if "lm_head.weight" in state or not config.get("tie_word_embeddings"):
        raise ValueError("finetune expects a tied-embedding model without lm_head.weight")
    cfg = zoo_config(config)
    loss_fn = _tied_loss(cfg)
    params = from_state_dict(state)
    chars = 8 * spec.steps * spec.batch_size * spec.seq_len  # about 2x the tokens the run reads
    windows = TokenWindows(_tokens(tok, EVAL_CORPUS, 200_000, 1), spec.batch_size, spec.seq_len, 1)
    held_out = [next(windows) for _ in range(EVAL_BATCHES)]
    before = _eval_loss(loss_fn, params, held_out)
    log(f"pretrained held-out loss {before:.3f} nats/token (ln V = {math.log(cfg.vocab_size):.2f})")
    if not before < MAX_PRETRAINED_LOSS:
        raise ValueError(f"the pretrained model's held-out loss is {before:.2f} nats, not below "
                         f"{MAX_PRETRAINED_LOSS}: the weights were not loaded as the model was trained")
    tc = TrainConfig(steps=spec.steps, batch_size=spec.batch_size, seq_len=spec.seq_len,
                     learning_rate=spec.learning_rate, warmup_steps=max(1, spec.steps // 10),
                     weight_decay=0.0, data_seed=spec.seed)
    batches = TokenWindows(_tokens(tok, TRAIN_CORPUS, max(chars, 200_000), spec.seed), spec.batch_size,
                           spec.seq_len, spec.seed)
    t0 = time.perf_counter()

    def progress(i: int, n: int, loss: float) -> None:
        if i == 1 or i % 10 == 0 or i == n:
            log(f"  step {i}/{n} loss {loss:.3f} ({time.perf_counter() - t0:.0f} s)")

    with report_progress(progress):
        result = train(params, loss_fn, batches, tc)
    after = _eval_loss(loss_fn, result.params, held_out)
    log(f"fine-tuned held-out loss {after:.3f} nats/token")
    new = to_state_dict(result.params)
    mats = [k for k, v in state.items() if v.ndim == 2]
    change = math.sqrt(sum(float(np.sum((new[k] - state[k]) ** 2)) for k in mats)
                       / sum(float(np.sum(state[k] ** 2)) for k in mats))
    s = result.summary()
    record = FinetuneRecord(spec, before, after, s["loss_first"], s["loss_last"], change, s["tokens"],
                            s["seconds"])
    return new, record


def write_tokenizer(folder: Path, tok) -> None:
    """Replaces a folder's ``tokenizer.json`` with the model's own BPE (same ids and strings)."""
    tok.save(str(Path(folder) / "tokenizer.json"))


def write_record(folder: Path, record: FinetuneRecord) -> None:
    """Writes the record as ``finetune.json`` in the model folder (its presence marks the folder done)."""
    (Path(folder) / "finetune.json").write_text(json.dumps(record.to_dict(), indent=2) + "\n")
