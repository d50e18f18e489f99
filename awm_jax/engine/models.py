"""Prepared models: one model opened, its vocabulary read and its Gram fingerprint in hand.

Everything a pair needs from one model, and nothing that depends on the other model; the
audit prepares each model once and pairs them many times.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path

import numpy as np

from awm_jax.errors import NumericalError
from awm_jax.fingerprint import FingerprintCache, GramSet, model_grams
from awm_jax.fingerprint.grams import layer_matrices
from awm_jax.io.checkpoint import Checkpoint, tracing
from awm_jax.io.adapters import AdapterCheckpoint, find_adapter, open_adapter
from awm_jax.io.gguf import GGUFCheckpoint, find_gguf
from awm_jax.io.vocab import Vocabulary, load_vocabulary
from awm_jax.layouts import ResolvedLayout, check_norm_gains, detect
from awm_jax.options import DEFAULT_NORM_GAINS
from awm_jax.report import ModelInfo, ModelSummary

__all__ = ["PreparedModel", "check_embedding_sums", "fetch_needed", "locate_model", "needed_tensors", "open_checkpoint",
           "prepare_model", "read_embedding"]


@dataclasses.dataclass(frozen=True)
class PreparedModel:
    """One model ready to be compared: its layout, vocabulary and per-layer Grams.

    Attributes:
      resolved: the bound layout (reads the embedding on demand).
      vocab: the vocabulary.
      grams: the Q/K Gram fingerprint (from the cache or computed).
      cached: whether the Grams came from the cache.
      timings: seconds spent preparing (``open_s``, ``weights_read_s``, ``gram_s``).
      mlp_grams: the MLP-input Gram fingerprint, when asked for.
    """

    resolved: ResolvedLayout
    vocab: Vocabulary
    grams: GramSet
    cached: bool
    timings: dict
    mlp_grams: GramSet | None = None

    @property
    def path(self) -> str:
        return str(self.resolved.ckpt.root)

    @property
    def hidden_size(self) -> int:
        return self.resolved.hidden_size

    def info(self) -> ModelInfo:
        """What was read of the model, for reports."""
        from awm_jax.io.origin import model_origin

        r = self.resolved
        root = Path(r.ckpt.root)
        read = [*r.ckpt.files, root / "config.json", root / "model.safetensors.index.json", self.vocab.source]
        return ModelInfo(
            path=self.path, layout=r.name, hidden_size=r.hidden_size, num_layers=r.num_layers, q_dim=r.q_dim,
            k_dim=r.k_dim, vocab_size=len(self.vocab), vocab_source=self.vocab.source, embedding_rows=r.vocab_rows,
            dtype=r.ckpt.info(r.embedding_name).dtype.lower(), form=getattr(r.ckpt, "form", "safetensors"),
            origin=model_origin(root, read),
        )

    def summary(self) -> ModelSummary:
        """:meth:`info` and whether the fingerprint came from the cache."""
        return ModelSummary(**self.info().fields(), fingerprint_cached=self.cached)


def locate_model(spec: str | os.PathLike, fetch: str = "partial") -> Path:
    """A local model folder for ``spec``: a path as given (the checkpoint reader reports any problem
    with it), or, when nothing exists at that path and it reads as ``owner/name[@revision]``, the
    hub snapshot (downloaded as needed by :func:`awm_jax.io.hub.resolve_model`; ``fetch``:
    ``"partial"`` or ``"full"``)."""
    from awm_jax.io.hub import parse_hub_id, resolve_model

    if os.path.lexists(spec) or parse_hub_id(os.fspath(spec)) is None:
        return Path(spec)
    return resolve_model(spec, fetch=fetch)


def open_checkpoint(path: str | os.PathLike, fetch: str = "partial") -> Checkpoint | GGUFCheckpoint | AdapterCheckpoint:
    """Opens a model: a GGUF file (or ``FOLDER:QUANT``), a LoRA adapter folder over its base, or a
    safetensors folder, or a hub id of any of these (``owner/name:QUANT`` for a GGUF model; ``fetch``
    as in :func:`locate_model`)."""
    gguf = find_gguf(path)
    if gguf is not None:
        return GGUFCheckpoint(gguf)
    adapter = find_adapter(path)
    if adapter is not None:
        return open_adapter(adapter, open_checkpoint)
    located = locate_model(path, fetch)
    if located != Path(path):  # a hub id: its snapshot folder, GGUF file or adapter folder, opened as local
        return open_checkpoint(located, fetch)
    return Checkpoint(located)


_LAYER = "\0"  # stands for the layer index in a name template (never in a tensor name that is read)


def _layer_template(name: str, layer: int) -> str:
    """``name`` with its layer index (the first ``.N.`` segment equal to ``layer``) made a placeholder."""
    return re.sub(rf"(?<=\.){layer}(?=\.)", _LAYER, name, count=1)


def needed_tensors(resolved: ResolvedLayout, mlp: bool, norm_gains: str) -> set[str]:
    """The tensors a fingerprint and a pair read of this model: found by a dry run of the read path
    (:func:`~awm_jax.io.checkpoint.tracing`, no byte read), so every layout and storage
    format is covered; every tensor of the checkpoint when the dry run cannot complete (a format
    whose reading depends on the values it reads).

    The first and last layers are traced; when they read the same tensors (up to the layer
    index), every layer's names follow from them (all must exist), else every layer is traced.
    """
    ckpt = resolved.ckpt

    def trace(layers) -> set[str]:
        with tracing() as names:
            for layer in layers:
                layer_matrices(resolved, layer, "qk", norm_gains)
                if mlp:
                    layer_matrices(resolved, layer, "mlp", norm_gains)
        return names

    last = resolved.num_layers - 1
    try:
        with tracing() as names:
            resolved.read_embedding()
        first, final = trace([0]), trace([last]) if last > 0 else set()
        shared = {n for n in first | final if _layer_template(n, 0) == n and _layer_template(n, last) == n}
        templates = {_layer_template(n, 0) for n in first - shared}
        if last > 0 and templates == {_layer_template(n, last) for n in final - shared}:
            layers = {t.replace(_LAYER, str(i)) for t in templates for i in range(resolved.num_layers)}
            if layers <= ckpt.tensors.keys():
                return names | shared | layers
        return names | trace(range(resolved.num_layers))
    except Exception:  # noqa: BLE001 - zeros are not valid values for every format: fetch everything
        return set(ckpt.tensors)


def fetch_needed(resolved: ResolvedLayout, mlp: bool = False, norm_gains: str = DEFAULT_NORM_GAINS):
    """Fetches the tensors :func:`needed_tensors` names that a partially downloaded checkpoint (or
    the base of an adapter) lacks (no request when it has them all); ``None`` for a checkpoint with
    no partial files.

    Returns:
      The :class:`~awm_jax.io.hub_partial.FetchStats`, or ``None``.
    """
    ckpt = getattr(resolved.ckpt, "base", resolved.ckpt)  # an adapter reads its base's tensors
    if not getattr(ckpt, "sparse", None):
        return None
    from awm_jax.io.hub_partial import fetch_tensors

    return fetch_tensors(ckpt, needed_tensors(resolved, mlp, norm_gains) & ckpt.tensors.keys())


def prepare_model(
    path: str | os.PathLike, *, layout: str | None = None, cache: FingerprintCache | None = None, mlp: bool = False,
    norm_gains: str = DEFAULT_NORM_GAINS, fetch: str = "partial",
) -> PreparedModel:
    """Opens a model (folder or hub id), reads its vocabulary and gets its Gram fingerprint (cached or computed).

    ``norm_gains``: ``"fold"`` (pre-norm gains folded into the matrices reading them) or ``"ignore"``
    (the paper's computation). ``fetch``: how a hub id's weights are fetched, ``"partial"`` (only
    the tensors read, before anything is computed) or ``"full"``. Run under
    ``jax.default_device(...)`` to choose where the Grams are computed.
    """
    check_norm_gains(norm_gains)
    t = time.perf_counter()
    ckpt = open_checkpoint(path, fetch)
    resolved = detect(ckpt, layout)
    fetch_needed(resolved, mlp, norm_gains)  # before the fingerprint's file key is taken
    vocab = load_vocabulary(getattr(ckpt, "vocabulary_folder", ckpt.root))  # an adapter may use its base's
    timings: dict = {"open_s": time.perf_counter() - t}
    grams = model_grams(resolved, cache, timings, norm_gains=norm_gains)
    cached = bool(timings.pop("cache_hit"))
    mlp_grams = model_grams(resolved, cache, timings, kind="mlp", norm_gains=norm_gains) if mlp else None
    timings.pop("cache_hit", None)
    timings["weights_read_s"] = timings.pop("read_s", 0.0)  # waiting on the reader thread
    return PreparedModel(resolved, vocab, grams, cached, timings, mlp_grams)


#: Rows of the embedding checked for a nonzero value at a time (a trained one is found nonzero in
#: the first block; only an all-zero embedding is read whole).
EMPTY_CHECK_ROWS = 1024


def read_embedding(r: ResolvedLayout) -> np.ndarray:
    """The input embedding in its stored dtype, memory-mapped where it can be (only the shared
    rows are ever copied, a block at a time); NaN/Inf in the rows used are caught by
    :func:`check_embedding_sums`, without a full float32 copy here."""
    emb = r.read_embedding(mapped=True)
    if not np.issubdtype(emb.dtype, np.floating) and "float" not in emb.dtype.name:
        raise NumericalError(f"{r.ckpt.root}: embedding {r.embedding_name} is stored as {emb.dtype}; dequantise it first")
    if not any(np.any(emb[i : i + EMPTY_CHECK_ROWS]) for i in range(0, emb.shape[0], EMPTY_CHECK_ROWS)):
        raise NumericalError(f"{r.ckpt.root}: embedding {r.embedding_name} is all zeros; nothing to align")
    return emb


def check_embedding_sums(r: ResolvedLayout, squares: np.ndarray) -> None:
    """Refuses an embedding whose shared rows hold NaN/Inf (``NumericalError``), seen in its
    column sums of squares (``squares``, from ``embedding_cross``): a non-finite value in any
    shared row makes its column's sum non-finite."""
    bad = int((~np.isfinite(squares)).sum())
    if bad:
        raise NumericalError(
            f"{r.ckpt.root}: embedding {r.embedding_name} holds NaN/Inf values in the shared-token rows "
            f"({bad} of {squares.size} columns affected); the weights are damaged: fetch them again"
        )
