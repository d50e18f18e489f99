"""N-model audits: every pair of a set of models (or every new model against a set of bases).

Stages, each a progress bar, each resumable:

1. **Fingerprints.** Every model is opened and fingerprinted once (its per-layer Q/K Grams go to
   the fingerprint cache, :mod:`awm_jax.fingerprint`); only the models' descriptions stay in
   memory.
2. **Alignments.** For every pair: the shared-token rows, the embedding-column cosine and the
   linear assignment (ALGORITHM.md steps 1-5), exactly as :func:`awm_jax.engine.score_pair`
   computes them. Embeddings and vocabularies are read through a least-recently-used store
   bounded in bytes; pairs are visited in blocks of rows so a block's models stay in it while
   the other models stream past. On accelerators the cosine sums run batched over pairs on
   every device (:mod:`awm_jax.audit.sharding`); on the CPU the host BLAS computes them (about twice
   XLA:CPU's matmul throughput), as :func:`awm_jax.numerics.alignment.embedding_cross` does.
3. **Scores.** Base layer by base layer, the Q and K Grams that layer needs (matched and
   shifted target layers of the calibrated null) of the models of a tile (all models, or blocks
   of them when they exceed the memory budget) are read from the cache and put on every device
   once; every pair of the tile is then scored in batches sharded over the devices, rows
   addressing the Grams by index. Each Gram byte is read once per tile, not once per pair.
   Pairs of different depths are scored on their full layer grid as ``compare`` does, then
   paired (ALGORITHM.md step 7).
4. **Assembly.** Per-pair results, the score matrices, and the families
   (:mod:`awm_jax.audit.lineage_tree`).

Memory stays within ``memory_gb`` (plus one batch and the per-pair results, a few kB per pair)
whatever the number of models. Every finished unit (one pair's alignment, one layer's scores
for a tile of pairs) is appended to ``<out>/progress.jsonl`` (:mod:`awm_jax.audit.journal`); a
killed audit rerun with the same arguments skips that work and produces the same files byte
for byte. Scores equal :func:`awm_jax.engine.compare`'s on the same pair: each device runs
``compare``'s own batched kernels with ``compare``'s batch shape (bit-identical on the CPU;
tested to 1e-6). Not supported here: ``compare``'s ``orthogonal``/``auto`` alignments and MLP
evidence.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import functools
import hashlib
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from awm_jax.errors import AWMError, UsageError
from awm_jax.report import ModelInfo

__all__ = ["AuditModel", "PairScore", "AuditResult", "audit", "COSINE_MODES", "DEFAULT_MEMORY_GB"]

#: Where the embedding-column cosine sums run: ``auto`` (host BLAS on the CPU, the devices
#: elsewhere), ``host`` or ``device`` (batched over pairs on the mesh).
COSINE_MODES = ("auto", "host", "device")
#: Default memory budget for embeddings (alignment stage) and Grams (score stage).
DEFAULT_MEMORY_GB = 2.0
#: Bytes of a failed pair's message sent from the process that computed it to the others.
MESSAGE_BYTES = 1024


@dataclasses.dataclass(frozen=True)
class AuditModel(ModelInfo):
    """One audited model: :class:`~awm_jax.report.ModelInfo`, its unique ``name`` in the
    matrices, and the content key of its Gram fingerprint (``fingerprint``)."""

    name: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class PairScore:
    """The AWM result of one pair of an audit (the fields of a ``CompareResult`` that describe
    the pair; ``error`` is set, and the scores are NaN, when the pair could not be scored).

    Attributes:
      a: name of model A (the row model).
      b: name of model B (the column model).
      base: ``"a"`` or ``"b"``, the model whose dimensions were aligned.
      wq: mean Q score over paired layers.
      wk: mean K score.
      mean: ``(wq + wk) / 2``.
      z_reference: signed z-score against the published negative reference.
      reference_verdict: the verdict from ``z_reference`` alone.
      verdict: ``derived``, ``independent``, ``inconclusive`` (the calibrated test's when it has
        a p-value, else ``reference_verdict``), or ``unscored``.
      verdict_rule: how the verdict was decided.
      layer_match: ``equal-depth``, ``assignment`` or ``monotone``.
      layers: per-layer scores, by A's layer index.
      alignment: alignment diagnostics.
      vocabulary: shared-token counts.
      calibrated: the cross-layer test (p-value, z, verdict, method).
      warnings: caveats.
      error: why the pair could not be scored (empty when it was).
    """

    a: str
    b: str
    base: str
    wq: float
    wk: float
    mean: float
    z_reference: float
    reference_verdict: str
    verdict: str
    verdict_rule: str
    layer_match: str
    layers: tuple = ()
    alignment: dict = dataclasses.field(default_factory=dict)
    vocabulary: dict = dataclasses.field(default_factory=dict)
    calibrated: dict = dataclasses.field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    error: str = ""

    @property
    def p_value(self) -> float:
        """The calibrated p-value (NaN when there is none)."""
        p = self.calibrated.get("p_value")
        return float("nan") if p is None else float(p)

    def to_dict(self) -> dict:
        """Plain JSON (NaN scores of an unscored pair become ``None``)."""
        out = dataclasses.asdict(self)
        out["layers"] = [dict(dataclasses.asdict(l), mean=l.mean) for l in self.layers]
        out["warnings"] = list(self.warnings)
        for key in ("wq", "wk", "mean", "z_reference"):
            if not math.isfinite(out[key]):
                out[key] = None
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class AuditResult:
    """Everything an audit found.

    Attributes:
      models: every model (the rows, then in ``against`` mode the columns).
      rows: names of the matrices' rows.
      columns: names of the columns (``rows`` again for a full audit).
      against: whether the rows were scored against the columns only (``N x M``).
      pairs: every scored pair, in row-major order.
      mean: ``[R, C]`` mean scores (NaN on the diagonal of a full audit and for unscored pairs).
      wq: ``[R, C]`` Q scores.
      wk: ``[R, C]`` K scores.
      z: ``[R, C]`` signed reference z-scores.
      p: ``[R, C]`` calibrated p-values (NaN where the pair has none).
      verdict: ``[R, C]`` verdicts (``""`` where no pair).
      families: families of models (connected components of derived pairs), first-member order.
      family_rule: ``"fwer"``, ``"verdict"`` or a mean-score threshold (``lineage_tree``).
      layer_match: pairing mode for different depths.
      timings: seconds per stage and counters (``pairs_computed``, ``pairs_resumed``...).
      environment: versions and devices.
    """

    models: tuple[AuditModel, ...]
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    against: bool
    pairs: tuple[PairScore, ...]
    mean: np.ndarray
    wq: np.ndarray
    wk: np.ndarray
    z: np.ndarray
    p: np.ndarray
    verdict: np.ndarray
    families: tuple[tuple[str, ...], ...]
    family_rule: str | float
    layer_match: str
    timings: dict
    environment: dict

    def pair(self, a: str, b: str) -> PairScore:
        """The result of the pair of models named ``a`` and ``b`` (either order)."""
        for p in self.pairs:
            if (p.a, p.b) in ((a, b), (b, a)):
                return p
        raise KeyError(f"no audited pair {a!r} / {b!r}")

    def to_dict(self) -> dict:
        """Plain JSON of the results (no timings: identical for identical inputs)."""
        from awm_jax.audit.lineage_tree import describe_rule
        from awm_jax.numerics.statistics import VERDICT_RULE

        def matrix(m: np.ndarray) -> list:
            return [[None if not math.isfinite(v) else float(v) for v in row] for row in m.tolist()]

        return {
            "format": "awm_jax.audit/1",
            "alignment": "assignment",
            "models": [dataclasses.asdict(m) for m in self.models],
            "rows": list(self.rows),
            "columns": list(self.columns),
            "against": self.against,
            "layer_match": self.layer_match,
            "verdict_rule": VERDICT_RULE,
            "family_rule": self.family_rule,
            "family_rule_text": describe_rule(self.family_rule, sum(1 for p in self.pairs if not p.error)),
            "families": [list(f) for f in self.families],
            "matrices": {
                "mean": matrix(self.mean), "wq": matrix(self.wq), "wk": matrix(self.wk), "z": matrix(self.z),
                "p": matrix(self.p), "verdict": self.verdict.tolist(),
            },
            "pairs": [p.to_dict() for p in self.pairs],
        }


# --------------------------------------------------------------------------------------------
# Models


@dataclasses.dataclass
class _Model:
    """What the audit keeps of one model between stages (no weights, no vocabulary)."""

    name: str
    path: Path
    layout_arg: str | None
    resolved: object = None
    grams: object = None
    info: AuditModel | None = None
    emb_dtype: str = ""

    @property
    def n(self) -> int:
        return self.resolved.hidden_size

    @property
    def layers(self) -> int:
        return self.resolved.num_layers

    def emb_bytes(self) -> int:
        r = self.resolved
        info = r.ckpt.info(r.embedding_name)
        return int(info.nbytes * r.hidden_size // max(info.shape[-1], 1))  # an embedding projection widens it


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the folder name, with parent folders added where two folders collide
    (the same folder given twice is numbered: ``name#2``)."""
    depth = [1] * len(paths)
    while True:
        names = ["/".join(p.parts[-d:]).lstrip("/") for p, d in zip(paths, depth)]
        folders: dict[str, set] = collections.defaultdict(set)
        for nm, p in zip(names, paths):
            folders[nm].add(p)
        clash = [i for i, nm in enumerate(names) if len(folders[nm]) > 1 and depth[i] < len(paths[i].parts)]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    seen: collections.Counter = collections.Counter()
    out = []
    for nm in names:
        seen[nm] += 1
        out.append(nm if seen[nm] == 1 else f"{nm}#{seen[nm]}")
    return out


def _as_models(spec: Sequence | Mapping | None, layouts: Mapping[str, str] | None, resolve: Callable,
               taken: Sequence[Path] = ()) -> list[_Model]:
    """Models from a list of folders/hub ids or a mapping name -> folder; default names are unique
    together with the folders in ``taken`` (the other side of an ``against`` audit)."""
    if spec is None:
        return []
    if isinstance(spec, (str, os.PathLike)):
        raise UsageError("give the models as a list of folders or hub ids (or a mapping name -> folder)")
    if isinstance(spec, Mapping):
        items = [(str(k), v) for k, v in spec.items()]
    else:
        items = [(None, v) for v in spec]
    paths = [resolve(v) for _, v in items]
    auto = _unique_names(list(taken) + paths)[len(taken):]
    models = []
    for (name, raw), path, default in zip(items, paths, auto):
        name = name or default
        layout = (layouts or {}).get(name) or (layouts or {}).get(str(raw)) or (layouts or {}).get("*")
        models.append(_Model(name, path, layout))
    return models


def _resolver(download: bool) -> Callable:
    def resolve(spec) -> Path:
        path = Path(os.fspath(spec)).expanduser()
        if path.is_dir():
            return path.resolve()
        try:
            from awm_jax.io.hub import resolve_model
        except ImportError:  # pragma: no cover - hub support absent
            raise UsageError(f"{spec}: no such model folder") from None
        return Path(resolve_model(spec, download=download))

    return resolve


def _identity(m: _Model) -> dict:
    """What identifies a model's inputs: its files (path, size, mtime), its layout, its Grams."""
    r = m.resolved
    files = []
    for f in sorted(set(map(str, r.ckpt.files))):
        st = os.stat(f)
        files.append([f, st.st_size, st.st_mtime_ns])
    src = m.info.vocab_source
    try:
        st = os.stat(src)
        files.append([src, st.st_size, st.st_mtime_ns])
    except OSError:
        pass
    return {"name": m.name, "path": str(m.path), "layout": r.name, "files": files, "grams": m.grams.key}


# --------------------------------------------------------------------------------------------
# Bounded store of embeddings and vocabularies


class _EmbeddingStore:
    """Least-recently-used (vocabulary, embedding) per model, bounded in bytes."""

    def __init__(self, budget: int, timings: dict):
        self.budget = budget
        self.timings = timings
        self.items: collections.OrderedDict[int, tuple] = collections.OrderedDict()
        self.bytes = 0

    def get(self, idx: int, model: _Model):
        """``(vocab, embedding)``; re-raises the model's load error on every request."""
        if idx in self.items:
            self.items.move_to_end(idx)
            entry = self.items[idx]
        else:
            from awm_jax.engine import read_embedding
            from awm_jax.io.vocab import load_vocabulary

            t = time.perf_counter()
            try:
                entry = (load_vocabulary(model.resolved.ckpt.root), read_embedding(model.resolved), None)
            except AWMError as e:
                entry = (None, None, e)
            self.timings["embedding_read_s"] = self.timings.get("embedding_read_s", 0.0) + time.perf_counter() - t
            size = 0 if entry[1] is None else entry[1].nbytes + 64 * len(entry[0].tokens)
            while self.items and self.bytes + size > self.budget:
                _, old = self.items.popitem(last=False)
                self.bytes -= old[3]
            entry = entry + (size,)
            self.items[idx] = entry
            self.bytes += size
        if entry[2] is not None:
            raise entry[2]
        return entry[0], entry[1]


# --------------------------------------------------------------------------------------------
# Alignment records


@dataclasses.dataclass
class _Aligned:
    """One pair's alignment (kept for the score stage: 3 bytes a dimension) or its error."""

    perm: np.ndarray | None = None  # [n_t] int16 (int32 beyond 32767 dimensions)
    signs: np.ndarray | None = None  # [n_t] int8, +1/-1
    diagnostics: dict | None = None
    vocabulary: dict | None = None
    error: str = ""

    def __post_init__(self):
        if self.perm is not None:
            self.perm = self.perm.astype(np.int16 if self.perm.size and self.perm.max() < 2**15 else np.int32)
            self.signs = self.signs.astype(np.int8)


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode()


def _from_b64(s: str, dtype, count: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype, count=count).copy()


def _align_record(k: int, al: _Aligned) -> dict:
    if al.error:
        return {"kind": "align", "pair": k, "error": al.error}
    return {"kind": "align", "pair": k, "perm": _b64(al.perm.astype("<i4")),
            "signs": _b64(np.packbits(al.signs < 0)), "diagnostics": al.diagnostics, "vocabulary": al.vocabulary}


def _aligned_from_record(rec: dict, n_t: int) -> _Aligned:
    if rec.get("error"):
        return _Aligned(error=rec["error"])
    neg = np.unpackbits(_from_b64(rec["signs"], np.uint8, (n_t + 7) // 8))[:n_t].astype(bool)
    return _Aligned(_from_b64(rec["perm"], "<i4", n_t), np.where(neg, -1, 1), rec["diagnostics"], rec["vocabulary"])


# --------------------------------------------------------------------------------------------
# The audit


class _Auditor:
    def __init__(self, rows: list[_Model], cols: list[_Model], *, against: bool, layer_match: str, mesh,
                 memory: int, cosine: str, journal, progress: bool):
        self.models = rows + cols if against else rows
        self.against = against
        self.n_rows = len(rows)
        self.layer_match = layer_match
        self.mesh = mesh
        self.memory = memory
        self.cosine = cosine
        self.journal = journal
        self.progress = progress
        self.timings: dict = collections.defaultdict(float)
        if against:
            self.pairs = [(i, len(rows) + j) for i in range(len(rows)) for j in range(len(cols))]
        else:
            self.pairs = [(i, j) for i in range(len(rows)) for j in range(i + 1, len(rows))]
        self.aligned: dict[int, _Aligned] = {}
        self.layer_scores: dict[int, dict[int, tuple[float, float]]] = collections.defaultdict(dict)
        self.grids: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._dtypes: dict[tuple[int, int], np.dtype] = {}

    # -- helpers --------------------------------------------------------------------------

    def _bar(self, total: int, desc: str, unit: str):
        import jax
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                    disable=not self.progress or jax.process_index() != 0, leave=True)

    def base_target(self, k: int) -> tuple[int, int, bool]:
        i, j = self.pairs[k]
        base_is_a = self.models[i].n >= self.models[j].n
        return (i, j, True) if base_is_a else (j, i, False)

    def _resume(self) -> None:
        for rec in self.journal.records if self.journal is not None else ():
            kind = rec.get("kind")
            if kind == "align":
                k = rec["pair"]
                self.aligned[k] = _aligned_from_record(rec, self.models[self.base_target(k)[1]].n)
            elif kind == "scores":  # per pair: Q and K scores at each of the pair's shifts
                for k, q, kk in zip(rec["pairs"], rec["q"], rec["k"]):
                    self.layer_scores[k][rec["layer"]] = (q, kk)
            elif kind == "grid":
                self.grids[rec["pair"]] = (np.asarray(rec["q"], np.float64), np.asarray(rec["k"], np.float64))
        self.resumed = {"alignments": len(self.aligned), "grids": len(self.grids),
                        "layer_scores": sum(len(v) for v in self.layer_scores.values())}

    def _record(self, rec: dict) -> None:
        if self.journal is not None:
            self.journal.append(rec)

    # -- stage 2: alignments ----------------------------------------------------------------

    def _align_order(self) -> list[int]:
        """Pairs in blocks of row models that fit the embedding store together with one more."""
        biggest = max(m.emb_bytes() for m in self.models)
        block = max(1, self.memory // max(biggest, 1) - 1)
        return sorted(range(len(self.pairs)), key=lambda k: (self.pairs[k][0] // block, self.pairs[k][1], self.pairs[k][0]))

    def align_all(self) -> None:
        import jax

        todo = [k for k in self._align_order() if k not in self.aligned]
        groups: dict[tuple, list[int]] = collections.defaultdict(list)
        for k in todo:
            b, t, _ = self.base_target(k)
            groups[(self.models[b].n, self.models[t].n)].append(k)
        store = _EmbeddingStore(self.memory, self.timings)
        batch = self.mesh.batch_size(1)
        bar = self._bar(len(todo), "alignments", "pair")
        device = self.cosine == "device"
        with bar, jax.default_device(jax.local_devices()[0]):
            for shape, ks in groups.items():
                for start in range(0, len(ks), batch):
                    chunk = ks[start : start + batch]
                    results = self._align_batch(chunk, shape, batch, store, device)
                    for k, al in zip(chunk, results):
                        self.aligned[k] = al
                        self._record(_align_record(k, al))
                    bar.update(len(chunk))

    def _align_batch(self, chunk: list[int], shape: tuple[int, int], batch: int, store: _EmbeddingStore,
                     device: bool) -> list[_Aligned]:
        from awm_jax.numerics.alignment import assign_dimensions, embedding_cross
        from awm_jax.engine import check_embedding_sums
        from awm_jax.io.vocab import shared_rows

        n_b, n_t = shape
        local = self.mesh.local_rows(batch)
        mine = [chunk[r] if r < len(chunk) else None for r in local]
        errors: dict[int, str] = {}
        shared: dict[int, object] = {}
        for k in mine:
            if k is None:
                continue
            b, t, _ = self.base_target(k)
            try:
                vb, _ = store.get(b, self.models[b])
                vt, _ = store.get(t, self.models[t])
                shared[k] = shared_rows(vb, vt, self.models[b].resolved.vocab_rows, self.models[t].resolved.vocab_rows)
            except AWMError as e:
                errors[k] = str(e)
        cosines: dict[int, np.ndarray] = {}
        if device:
            cosines = self._device_cosines(mine, shared, shape, batch, store)
        t0 = time.perf_counter()
        packed = np.zeros((len(local), 5 + 3 * n_t), np.float64)
        for r, k in enumerate(mine):
            if k is None or k in errors:
                packed[r, 0] = 1 if k is not None else 2
                continue
            b, t, _ = self.base_target(k)
            s = shared[k]
            try:
                if device:
                    cos = cosines[k]
                    if isinstance(cos, AWMError):
                        raise cos
                else:
                    _, eb = store.get(b, self.models[b])
                    _, et = store.get(t, self.models[t])
                    tc = time.perf_counter()
                    cross = embedding_cross(eb, et, s.ids_a, s.ids_b)
                    check_embedding_sums(self.models[b].resolved, cross.sq_base)
                    check_embedding_sums(self.models[t].resolved, cross.sq_target)
                    cos = cross.cosine()
                    self.timings["cosine_s"] += time.perf_counter() - tc
                ta = time.perf_counter()
                al = assign_dimensions(cos)
                self.timings["assignment_s"] += time.perf_counter() - ta
            except AWMError as e:
                errors[k] = str(e)
                packed[r, 0] = 1
                continue
            packed[r, 1:5] = (s.shared_tokens, len(s), s.dropped_a, s.dropped_b)
            packed[r, 5:] = np.concatenate([al.perm, al.signs, al.matched_cos]).astype(np.float64)
        self.timings["align_host_s"] += time.perf_counter() - t0
        rows = self.mesh.all_rows(packed)
        messages = None
        if (rows[: len(chunk), 0] == 1).any():  # a failed pair: every process learns its message
            text = np.zeros((len(local), MESSAGE_BYTES), np.uint8)
            for r, k in enumerate(mine):
                raw = errors.get(k, "").encode()[:MESSAGE_BYTES]
                text[r, : len(raw)] = np.frombuffer(raw, np.uint8)
            messages = self.mesh.all_rows(text)
        out = []
        for r, k in enumerate(chunk):
            row = rows[r]
            if row[0]:
                message = bytes(messages[r]).rstrip(b"\0").decode(errors="replace") if messages is not None else ""
                out.append(_Aligned(error=errors.get(k) or message or "the pair could not be aligned"))
                continue
            from awm_jax.layouts import DEFAULT_NORM_GAINS
            from awm_jax.numerics.alignment import Alignment

            perm = row[5 : 5 + n_t].astype(np.int32)
            signs = row[5 + n_t : 5 + 2 * n_t].astype(np.float32)
            matched = row[5 + 2 * n_t :].astype(np.float32)
            diag = Alignment(perm=perm, signs=signs, matched_cos=matched, base_dims=n_b).diagnostics()
            diag.update(mode="assignment", used="assignment", reason="requested assignment", norm_gains=DEFAULT_NORM_GAINS)
            _, _, base_is_a = self.base_target(k)
            i, j = self.pairs[k]
            tokens, n_shared, drop_base, drop_target = (int(x) for x in row[1:5])
            dropped = (drop_base, drop_target) if base_is_a else (drop_target, drop_base)
            vocab = {"shared_tokens": tokens, "shared_rows": n_shared, "dropped_a": dropped[0], "dropped_b": dropped[1],
                     "vocab_a": self.models[i].info.vocab_size, "vocab_b": self.models[j].info.vocab_size}
            # Key order as a resumed record has it (the journal sorts keys): same output bytes either way.
            out.append(_Aligned(perm, signs, dict(sorted(diag.items())), dict(sorted(vocab.items()))))
        return out

    def _device_cosines(self, mine: list, shared: dict, shape: tuple[int, int], batch: int,
                        store: _EmbeddingStore) -> dict[int, np.ndarray]:
        """Column cosines of this process's pairs, their sums batched over the mesh."""
        from awm_jax.numerics.alignment import EmbeddingCross, block_rows
        from awm_jax.engine import check_embedding_sums

        n_b, n_t = shape
        t0 = time.perf_counter()
        most = self.mesh.all_rows(np.array([[max([len(shared[k]) for k in mine if k in shared] or [0])]]))
        block = block_rows(int(most.max()))
        blocks = max(1, -(-int(most.max()) // block))
        dtype = self._shape_dtype(shape)
        rows = len(mine)
        put = lambda a: self.mesh.put(a, batch)  # noqa: E731
        cross = put(np.zeros((rows, n_b, n_t), np.float32))
        sq_b, sq_t = put(np.zeros((rows, n_b), np.float32)), put(np.zeros((rows, n_t), np.float32))
        for blk in range(blocks):
            rb = np.zeros((rows, block, n_b), dtype)
            rt = np.zeros((rows, block, n_t), dtype)
            for r, k in enumerate(mine):
                if k not in shared:
                    continue
                b, t, _ = self.base_target(k)
                s = shared[k]
                ids_b, ids_t = s.ids_a[blk * block : (blk + 1) * block], s.ids_b[blk * block : (blk + 1) * block]
                rb[r, : ids_b.size] = store.get(b, self.models[b])[1][ids_b]
                rt[r, : ids_t.size] = store.get(t, self.models[t])[1][ids_t]
            cross, sq_b, sq_t = self.mesh.cosine_sums(cross, sq_b, sq_t, put(rb), put(rt))
        cross, sq_b, sq_t = (self.mesh.local_result(x) for x in (cross, sq_b, sq_t))
        self.timings["cosine_s"] += time.perf_counter() - t0

        out: dict[int, np.ndarray | AWMError] = {}
        for r, k in enumerate(mine):
            if k in shared:
                b, t, _ = self.base_target(k)
                try:
                    sums = EmbeddingCross.of(cross[r], sq_b[r], sq_t[r])
                    check_embedding_sums(self.models[b].resolved, sums.sq_base)
                    check_embedding_sums(self.models[t].resolved, sums.sq_target)
                    out[k] = sums.cosine()
                except AWMError as e:
                    out[k] = e
        return out

    def _shape_dtype(self, shape: tuple[int, int]) -> np.dtype:
        """Embedding dtype of the batches of one shape: the stored one if all its models share it,
        else float32 (every process derives the same from the models' metadata)."""
        if shape not in self._dtypes:
            dtypes = set()
            for k in range(len(self.pairs)):
                b, t, _ = self.base_target(k)
                if (self.models[b].n, self.models[t].n) == shape:
                    dtypes |= {self.models[b].emb_dtype, self.models[t].emb_dtype}
            self._dtypes[shape] = np.dtype(dtypes.pop()) if len(dtypes) == 1 else np.dtype(np.float32)
        return self._dtypes[shape]

    # -- stage 3: scores --------------------------------------------------------------------

    def _gram_bytes(self, m: int) -> int:
        return 2 * 4 * self.models[m].n ** 2

    def shifts(self, k: int) -> tuple[int, ...]:
        """Target-layer offsets scored against each base layer of an equal-depth pair: 0 (the
        matched layer) and the mismatched offsets of the calibrated null."""
        from awm_jax.engine import mismatch_shifts

        return (0,) + tuple(mismatch_shifts(self.models[self.pairs[k][0]].layers))

    def _tile_keys(self, layer: int, ks: list[int]) -> list[tuple[int, int]]:
        keys = set()
        for k in ks:
            b, t, _ = self.base_target(k)
            depth = self.models[b].layers
            keys.add((b, layer))
            keys.update((t, (layer + s) % depth) for s in self.shifts(k))
        return sorted(keys)

    def _plan_tiles(self) -> list[tuple[int, list[int]]]:
        """``(base layer, pairs)`` tiles of the equal-depth pairs still to score.

        The models are cut into blocks whose Grams (the layers one base layer needs: matched
        and shifted) fit a sixth of the budget; a tile pairs two blocks (a third) at one base
        layer. A tile is on the devices while the next one is read, and both while one is
        uploaded: the budget in all. Tiles of a block pair are consecutive in layer order, so
        the layers they share are read again from the page cache rather than the disk.
        """
        equal = [k for k, al in self.aligned.items() if not al.error
                 and self.models[self.pairs[k][0]].layers == self.models[self.pairs[k][1]].layers]
        todo = {k: [l for l in range(self.models[self.pairs[k][0]].layers) if l not in self.layer_scores[k]]
                for k in equal}
        todo = {k: ls for k, ls in todo.items() if ls}
        if not todo:
            return []
        window = max(len(self.shifts(k)) for k in todo)
        needed = sorted({m for k in todo for m in self.pairs[k]})
        blocks, current, size = [], [], 0
        for m in needed:
            cost = self._gram_bytes(m) * window
            if current and size + cost > self.memory // 6:
                blocks.append(current)
                current, size = [], 0
            current.append(m)
            size += cost
        blocks.append(current)
        where = {m: bi for bi, blk in enumerate(blocks) for m in blk}
        by_block: dict[tuple[int, int], list[int]] = collections.defaultdict(list)
        for k in sorted(todo):
            i, j = self.pairs[k]
            by_block[tuple(sorted((where[i], where[j])))].append(k)
        depth = max(self.models[self.pairs[k][0]].layers for k in todo)
        tiles = []
        for block_pair in sorted(by_block):
            for layer in range(depth):
                ks = [k for k in by_block[block_pair] if layer in todo[k]]
                if ks:
                    tiles.append((layer, ks))
        return tiles

    def _rows_by_shape(self, rows: list[tuple]) -> dict[tuple[int, int, int, int, int], list[tuple]]:
        """Base rows ``(pair, projection, base layer, target layers)`` grouped by
        ``(n_b, n_t, rows per device, target layers per row, projection)``.

        A device's rows are as many as ``pipeline.score_pair`` puts in one chunk of layers for
        that base model (``chunk_layers_for``): the compiled per-device program is then the one
        ``compare`` runs, and every score is bit-identical to ``compare``'s (XLA's float32
        reductions depend on the batch shape by a few 1e-7).
        """
        from awm_jax.fingerprint import chunk_layers_for

        groups: dict[tuple[int, int, int, int, int], list[tuple]] = collections.defaultdict(list)
        for row in rows:
            b, t, _ = self.base_target(row[0])
            n_b = self.models[b].n
            key = (n_b, self.models[t].n, chunk_layers_for(n_b, n_b, self.models[b].layers), len(row[3]), row[1])
            groups[key].append(row)
        return groups

    def _read_tile(self, keys: list[tuple[int, int]], capacity: dict[int, int]) -> dict:
        """A tile's Grams read from the cache into one stack per width and projection.

        Returns:
          ``n -> (Q stack [capacity[n], n, n], K stack, slot of each (model, layer))``. Stacks have
          a fixed number of slots per width (the largest tile's), so every tile reuses one
          compiled program.
        """
        from awm_jax.fingerprint import aligned_empty

        t = time.perf_counter()
        by_n: dict[int, list] = collections.defaultdict(list)
        for key in keys:
            by_n[self.models[key[0]].n].append(key)
        out = {}
        for n, group in by_n.items():
            slots = {key: i for i, key in enumerate(group)}
            stacks = []
            for proj in (0, 1):
                # An aligned buffer: on the CPU, device_put then takes it without a copy.
                stack = aligned_empty((capacity[n], n, n))
                stack[len(slots):] = 0
                for (m, layer), i in slots.items():
                    self.models[m].grams.read_into(proj, [(layer, layer + 1)], stack[i : i + 1])
                stacks.append(stack)
            out[n] = (stacks[0], stacks[1], slots)
        self.timings["gram_read_s"] += time.perf_counter() - t
        return out

    def _upload(self, tile: dict) -> dict:
        """The tile's stacks on every device (``n -> (Q, K, slots)``)."""
        t = time.perf_counter()
        out = {n: (self.mesh.replicate(q), self.mesh.replicate(k), slots) for n, (q, k, slots) in tile.items()}
        self.timings["upload_s"] += time.perf_counter() - t
        return out

    def _target_parts(self, stacks: dict, n: int, proj: int, per_device: int):
        """HSIC parts of every slot of a tile's stack (``HsicParts`` of ``[slots]`` host arrays),
        computed ``per_device`` rows a device, as ``compare`` computes its targets' parts."""
        from awm_jax.numerics.kernels import HsicParts

        cache = stacks.setdefault("parts", {})
        key = (n, proj, per_device)
        if key not in cache:
            stack = stacks[n][proj]
            slots = stack.shape[0]
            batch = self.mesh.batch_size(per_device)
            local = self.mesh.local_rows(batch)
            fields: list[list[np.ndarray]] = [[] for _ in HsicParts._fields]
            for start in range(0, slots, batch):
                idx = np.array([start + r if start + r < slots else 0 for r in local], np.int32)
                parts = self.mesh.parts(self.mesh.gather(stack, self.mesh.put(idx, batch)))
                for f, x in enumerate(parts):
                    fields[f].append(self.mesh.all_rows(self.mesh.local_result(x))[: slots - start])
            cache[key] = HsicParts(*(np.concatenate(f) for f in fields))
        return cache[key]

    def _score_rows(self, rows: list[tuple], stacks: dict, bar) -> dict[tuple, list[float]]:
        """Scores of base rows ``(pair, projection 0/1, base layer, target layers)``.

        Each row's base Gram is aligned once, its HSIC parts computed once, and it is scored
        against each of its target layers (the matched one and the shifted ones of the
        calibrated null), as ``compare`` does; the Grams come from the tile's stacks on the
        devices, so a batch moves only indices, alignments and the targets' parts.

        Returns:
          ``(pair, projection, base layer) -> [score per target layer]``.
        """
        from awm_jax.numerics.kernels import HsicParts

        scores: dict[tuple, list[float]] = {}
        for (n_b, n_t, per_device, width, proj), group in self._rows_by_shape(rows).items():
            batch = self.mesh.batch_size(per_device)
            local = self.mesh.local_rows(batch)
            base_stack, base_slot = stacks[n_b][proj], stacks[n_b][2]
            target_stack, target_slot = stacks[n_t][proj], stacks[n_t][2]
            target_parts = self._target_parts(stacks, n_t, proj, per_device)
            put = functools.partial(self.mesh.put, batch=batch)
            for start in range(0, len(group), batch):
                chunk = group[start : start + batch]
                t0 = time.perf_counter()
                base_idx = np.zeros(len(local), np.int32)
                target_idx = np.zeros((width, len(local)), np.int32)
                perm = np.zeros((len(local), n_t), np.int32)
                signs = np.ones((len(local), n_t), np.float32)
                for r, row in enumerate(local):
                    if row >= len(chunk):
                        continue  # padding: slot 0 under the identity alignment, result dropped
                    k, _, lb, targets = chunk[row]
                    b, t, _ = self.base_target(k)
                    base_idx[r] = base_slot[(b, lb)]
                    target_idx[:, r] = [target_slot[(t, lt)] for lt in targets]
                    perm[r], signs[r] = self.aligned[k].perm, self.aligned[k].signs
                aligned = self.mesh.gather_align(base_stack, put(base_idx), put(perm), put(signs))
                aligned_parts = self.mesh.parts(aligned)
                columns = []
                for w in range(width):
                    targets_w = self.mesh.gather(target_stack, put(target_idx[w]))
                    parts_w = HsicParts(*(x[target_idx[w]] for x in target_parts))
                    out = self.mesh.cka(aligned, aligned_parts, targets_w, self.mesh.put_parts(parts_w, batch))
                    columns.append(self.mesh.all_rows(self.mesh.local_result(out)))
                self.timings["cka_s"] += time.perf_counter() - t0
                for i, row in enumerate(chunk):
                    scores[row[:3]] = [float(col[i]) for col in columns]
                bar.update(len(chunk) * width)
        return scores

    def score_all(self) -> None:
        tiles = self._plan_tiles()
        grid_pairs = [k for k, al in sorted(self.aligned.items()) if not al.error and k not in self.grids
                      and self.models[self.pairs[k][0]].layers != self.models[self.pairs[k][1]].layers]
        total = sum(2 * len(self.shifts(k)) for _, ks in tiles for k in ks)
        total += sum(2 * self.models[self.pairs[k][0]].layers * self.models[self.pairs[k][1]].layers for k in grid_pairs)
        bar = self._bar(total, "layer scores", "item")
        with bar, ThreadPoolExecutor(max_workers=1, thread_name_prefix="awm-grams") as reader:
            keys = [self._tile_keys(layer, ks) for layer, ks in tiles]
            capacity: dict[int, int] = collections.defaultdict(int)
            for tile_keys in keys:
                for n, count in collections.Counter(self.models[m].n for m, _ in tile_keys).items():
                    capacity[n] = max(capacity[n], count)
            pending = reader.submit(self._read_tile, keys[0], capacity) if tiles else None
            for ti, (layer, ks) in enumerate(tiles):
                host = pending.result()
                if ti + 1 < len(tiles):  # read the next tile while this one is scored
                    pending = reader.submit(self._read_tile, keys[ti + 1], capacity)
                stacks = self._upload(host)
                del host
                rows = []
                for k in ks:
                    depth = self.models[self.pairs[k][0]].layers
                    targets = tuple((layer + s) % depth for s in self.shifts(k))
                    rows += [(k, proj, layer, targets) for proj in (0, 1)]
                values = self._score_rows(rows, stacks, bar)
                del stacks
                q_rows = [values[(k, 0, layer)] for k in ks]
                k_rows = [values[(k, 1, layer)] for k in ks]
                for k, q, kk in zip(ks, q_rows, k_rows):
                    self.layer_scores[k][layer] = (q, kk)
                self._record({"kind": "scores", "layer": layer, "pairs": ks, "q": q_rows, "k": k_rows})
            for k in grid_pairs:
                self._score_grid(k, bar)

    def _score_grid(self, k: int, bar) -> None:
        """A different-depth pair's full layer grid, computed as ``compare`` computes it (one
        pair at a time on this process's first device; such pairs are few)."""
        import jax
        import jax.numpy as jnp

        from awm_jax.numerics.kernels import align_grams
        from awm_jax.engine import score_grid

        b, t, _ = self.base_target(k)
        t0 = time.perf_counter()
        with jax.default_device(jax.local_devices()[0]):
            al = self.aligned[k]  # the dtypes compare passes: int32 perm, float32 signs
            perm, signs = jnp.asarray(al.perm.astype(np.int32)), jnp.asarray(al.signs.astype(np.float32))
            gq, gk = score_grid(self.models[b].grams, self.models[t].grams, lambda g: align_grams(g, perm, signs))
        self.timings["grid_s"] += time.perf_counter() - t0
        bar.update(2 * gq.size)
        self.grids[k] = (gq, gk)
        self._record({"kind": "grid", "pair": k, "q": gq.tolist(), "k": gk.tolist()})

    # -- stage 4: assembly ------------------------------------------------------------------

    def pair_score(self, k: int) -> PairScore:
        """The pair's result, assembled as ``pipeline.score_pair`` assembles it."""
        from awm_jax.engine import assemble, layer_pairing

        i, j = self.pairs[k]
        a, b = self.models[i], self.models[j]
        _, _, base_is_a = self.base_target(k)
        al = self.aligned[k]
        nan = float("nan")
        if al.error:
            return PairScore(a.name, b.name, "a" if base_is_a else "b", nan, nan, nan, nan, "unscored", "unscored",
                             "", "", error=al.error)
        if a.layers == b.layers:
            scores = [self.layer_scores[k][l] for l in range(a.layers)]
            wq = np.array([q[0] for q, _ in scores])
            wk = np.array([kk[0] for _, kk in scores])
            off = {s: np.array([(np.float32(q[si]) + np.float32(kk[si])) / np.float32(2) for q, kk in scores])
                   for si, s in enumerate(self.shifts(k)) if s != 0}
            pairing = layer_pairing(self.layer_match, matched=(wq, wk, off))
        else:
            pairing = layer_pairing(self.layer_match, grids=self.grids[k])
        diag = al.diagnostics
        pv = assemble(pairing, base_is_a, min(a.n, b.n), diag["base_dims"], diag["matched_dims"])
        return PairScore(
            a.name, b.name, "a" if base_is_a else "b", pv.wq, pv.wk, pv.mean, pv.z, pv.reference_verdict, pv.verdict, pv.rule,
            pv.layer_match, pv.layers, dict(diag), dict(al.vocabulary), pv.calibrated.to_dict(), pv.warnings,
        )


def _environment(mesh) -> dict:
    import jax
    import jaxlib
    import scipy

    from awm_jax._version import __version__

    dev = mesh.mesh.devices.flat[0]
    return {"awm_jax": __version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "device": f"{dev.platform}:{dev.device_kind}", "devices": mesh.num_devices,
            "processes": jax.process_count(), "dtype": "float32", "precision": "HIGHEST"}


def _audit_key(models: list[_Model], against: bool, n_rows: int, layer_match: str, cosine: str) -> str:
    from awm_jax._version import ALGORITHM_VERSION
    from awm_jax.layouts import DEFAULT_NORM_GAINS

    payload = {"algorithm": ALGORITHM_VERSION, "against": against, "rows": n_rows, "layer_match": layer_match,
               "cosine": cosine, "norm_gains": DEFAULT_NORM_GAINS, "models": [_identity(m) for m in models]}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def audit(
    models: Sequence | Mapping,
    *,
    against: Sequence | Mapping | None = None,
    out_dir: str | os.PathLike | None = None,
    layer_match: str = "assignment",
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    layouts: Mapping[str, str] | None = None,
    family_rule: str | float = "fwer",
    memory_gb: float = DEFAULT_MEMORY_GB,
    cosine: str = "auto",
    fresh: bool = False,
    progress: bool = False,
    download: bool = True,
    devices: list | None = None,
    log: Callable[[str], None] | None = None,
) -> AuditResult:
    """Audits a set of models: every pair, or every model against a set of references.

    Args:
      models: model folders or hub ids (a list, or a mapping name -> folder). Names default to
        the folder names (with parent folders added where two collide).
      against: references; when given, only ``models x against`` pairs are scored (``N x M``).
      out_dir: output folder: progress file (resumable), CSV/JSON/PNG/summary outputs. ``None``
        keeps everything in memory (no resuming, no files).
      layer_match: pairing for different depths, ``"assignment"`` or ``"monotone"``.
      device: ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"tpu"``: the platform whose devices (all
        of them, of every process) form the mesh.
      cache_dir: fingerprint cache (default ``$AWM_JAX_CACHE`` or the XDG cache folder).
      layouts: forced layouts by model name or spec (``"*"`` for all).
      family_rule: which pairs join families: ``"fwer"`` (calibrated p-value significant over
        the whole audit), ``"verdict"``, or a mean-score threshold (``lineage_tree``).
      memory_gb: budget for embeddings (alignment stage) and Grams (score stage).
      cosine: where the embedding-column cosine sums run (``COSINE_MODES``).
      fresh: discard the progress of an earlier run in ``out_dir``.
      progress: show progress bars on stderr.
      download: fetch hub ids that are not in the hub cache.
      devices: the mesh's devices (overrides ``device``).
      log: called with one line per stage (default: nothing).

    Returns:
      A frozen :class:`AuditResult`.

    Raises:
      AWMError: a model cannot be read or fingerprinted, or the arguments are invalid. A pair
        that cannot be scored (no shared tokens, a damaged embedding) is reported in the
        result as ``unscored`` instead.
    """
    import jax

    from awm_jax.audit.journal import Journal
    from awm_jax.fingerprint import FingerprintCache
    from awm_jax.numerics.layer_match import LAYER_MATCH_MODES
    from awm_jax.engine import DEVICES, prepare_model
    from awm_jax.audit.sharding import pair_mesh

    log = log or (lambda s: None)
    if layer_match not in LAYER_MATCH_MODES:
        raise UsageError(f"unknown layer match {layer_match!r}; choose one of {', '.join(LAYER_MATCH_MODES)}")
    if cosine not in COSINE_MODES:
        raise UsageError(f"unknown cosine mode {cosine!r}; choose one of {', '.join(COSINE_MODES)}")
    if device not in DEVICES:
        raise UsageError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if not memory_gb > 0:
        raise UsageError(f"memory budget must be positive, got {memory_gb}")
    from awm_jax.audit.lineage_tree import FAMILY_RULES

    if isinstance(family_rule, str):
        if family_rule not in FAMILY_RULES:
            raise UsageError(f"unknown family rule {family_rule!r}; choose one of {', '.join(FAMILY_RULES)} or a threshold")
    elif not -1.0 <= float(family_rule) <= 1.0:
        raise UsageError(f"family threshold must lie in [-1, 1], got {family_rule}")
    t_start = time.perf_counter()
    timings: dict = {}
    resolve = _resolver(download)
    rows = _as_models(models, layouts, resolve)
    cols = _as_models(against, layouts, resolve, taken=[m.path for m in rows])
    is_against = against is not None
    if is_against and (not rows or not cols):
        raise UsageError("--against needs at least one model and one reference")
    if not is_against and len(rows) < 2:
        raise UsageError(f"an audit needs at least two models, got {len(rows)}")
    everyone = rows + cols
    names = [m.name for m in everyone]
    dup = [n for n, c in collections.Counter(names).items() if c > 1]
    if dup:
        raise UsageError(f"model name {dup[0]!r} is used twice; give unique names")
    if devices is None:
        try:
            devices = jax.devices() if device == "auto" else jax.devices(device)
        except RuntimeError:
            raise UsageError(f"--device {device}: JAX sees no {device} device here") from None
    mesh = pair_mesh(devices)
    if cosine == "auto":
        cosine = "host" if mesh.platform == "cpu" else "device"
    timings["resolve_s"] = time.perf_counter() - t_start

    # Stage 1: fingerprints (each process fingerprints its share first; the rest are cache hits).
    t = time.perf_counter()
    store = FingerprintCache(cache_dir)
    order = list(range(len(everyone)))
    share = len(order)
    if jax.process_count() > 1:
        me, count = jax.process_index(), jax.process_count()
        mine = order[me::count]
        order, share = mine + [i for i in order if i % count != me], len(mine)
    from tqdm import tqdm

    bar = tqdm(total=len(everyone), desc="fingerprints", unit="model", file=sys.stderr, mininterval=1.0,
               dynamic_ncols=True, disable=not progress or jax.process_index() != 0)
    cached = 0
    with bar, jax.default_device(jax.local_devices()[0]):
        for pos, idx in enumerate(order):
            if pos == share and jax.process_count() > 1:  # the others' fingerprints are in the cache now
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("awm_jax audit fingerprints")
            m = everyone[idx]
            prepared = prepare_model(m.path, layout=m.layout_arg, cache=store)
            cached += prepared.cached
            r = prepared.resolved
            m.resolved, m.grams = r, prepared.grams
            m.emb_dtype = str(np.dtype(r.read_embedding(slice(0, 1)).dtype))
            m.info = AuditModel(**dataclasses.asdict(prepared.info()), name=m.name, fingerprint=prepared.grams.key)
            del prepared
            bar.update(1)
    timings["fingerprint_s"] = time.perf_counter() - t
    timings["fingerprints_cached"] = cached
    log(f"fingerprints: {len(everyone)} models ({cached} cached) in {timings['fingerprint_s']:.1f}s")

    journal = None
    if out_dir is not None:
        key = _audit_key(everyone, is_against, len(rows), layer_match, cosine)
        if jax.process_count() == 1:
            journal = Journal(out_dir, key, fresh=fresh)
        else:  # process 0 prepares the file (fresh, torn line) before the others read it
            from jax.experimental import multihost_utils

            if jax.process_index() == 0:
                journal = Journal(out_dir, key, fresh=fresh)
            multihost_utils.sync_global_devices("awm_jax audit journal")
            if jax.process_index() != 0:
                journal = Journal(out_dir, key, writer=False)
    try:
        auditor = _Auditor(rows, cols, against=is_against, layer_match=layer_match, mesh=mesh,
                           memory=int(memory_gb * 2**30), cosine=cosine, journal=journal, progress=progress)
        auditor._resume()
        t = time.perf_counter()
        auditor.align_all()
        timings["align_s"] = time.perf_counter() - t
        t = time.perf_counter()
        auditor.score_all()
        timings["score_s"] = time.perf_counter() - t
    finally:
        if journal is not None:
            journal.close()
    for key in ("embedding_read_s", "cosine_s", "assignment_s", "align_host_s", "gram_read_s", "upload_s", "cka_s",
                "grid_s"):
        timings[key] = auditor.timings.get(key, 0.0)
    timings["pair_phase_s"] = timings["align_s"] + timings["score_s"]
    timings["pairs"] = len(auditor.pairs)
    timings["resumed"] = auditor.resumed
    log(f"pairs: {len(auditor.pairs)} in {timings['pair_phase_s']:.1f}s")

    t = time.perf_counter()
    result = _assemble(auditor, rows, cols, is_against, family_rule, layer_match, timings, _environment(mesh))
    timings["assemble_s"] = time.perf_counter() - t
    if out_dir is not None and jax.process_index() == 0:
        from awm_jax.audit.outputs import write_outputs

        t = time.perf_counter()
        write_outputs(result, out_dir)
        timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    if out_dir is not None and jax.process_index() == 0:
        from awm_jax.audit.outputs import write_run_info

        write_run_info(result, out_dir)
    if jax.process_count() > 1:  # the others wait while process 0 writes: all leave together
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("awm_jax audit written")
    return result


def _assemble(auditor: _Auditor, rows: list[_Model], cols: list[_Model], against: bool,
              family_rule: str | float, layer_match: str, timings: dict, environment: dict) -> AuditResult:
    from awm_jax.audit.lineage_tree import derived_edges, families

    n_r = len(rows)
    n_c = len(cols) if against else n_r
    mats = {key: np.full((n_r, n_c), np.nan) for key in ("mean", "wq", "wk", "z", "p")}
    verdicts = np.full((n_r, n_c), "", dtype=object)
    pair_scores = []
    for k, (i, j) in enumerate(auditor.pairs):
        ps = auditor.pair_score(k)
        pair_scores.append(ps)
        c = j - n_r if against else j
        cells = [(i, c)] if against else [(i, c), (c, i)]
        for r, cc in cells:
            mats["mean"][r, cc], mats["wq"][r, cc], mats["wk"][r, cc] = ps.mean, ps.wq, ps.wk
            mats["z"][r, cc], mats["p"][r, cc] = ps.z_reference, ps.p_value
            verdicts[r, cc] = ps.verdict
    if not against:
        np.fill_diagonal(verdicts, "self")
    edges = [pair for pair, edge in zip(auditor.pairs, derived_edges(pair_scores, family_rule)) if edge]
    everyone = rows + cols if against else rows
    fams = families([m.name for m in everyone], edges)
    return AuditResult(
        models=tuple(m.info for m in everyone), rows=tuple(m.name for m in rows),
        columns=tuple(m.name for m in (cols if against else rows)), against=against, pairs=tuple(pair_scores),
        mean=mats["mean"], wq=mats["wq"], wk=mats["wk"], z=mats["z"], p=mats["p"], verdict=verdicts.astype(str),
        families=fams, family_rule=family_rule, layer_match=layer_match, timings=timings,
        environment=environment,
    )
