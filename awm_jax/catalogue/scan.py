"""Scanning one model against a catalogue: which known base is it derived from, if any?

Candidates that cannot match are set aside first, from the manifest alone (hidden sizes further
apart than width pruning goes: ratio above ``MAX_WIDTH_RATIO``), then from the sketch (no token
of the sketch's subset in the model's vocabulary). Every other entry is scored with
:func:`awm_jax.engine.sketch.score_against_sketch` (the engine's calibrated verdict) and the
matches are ranked: ``derived`` first, then by AWM mean score.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import math
import time
from concurrent.futures import ThreadPoolExecutor

import jax
from threadpoolctl import threadpool_limits

from awm_jax.catalogue.store import Catalogue, CatalogueEntry
from awm_jax.engine.models import PreparedModel
from awm_jax.engine.sketch import ModelSide, score_against_sketch, sketch_rows
from awm_jax.numerics.alignment import DegenerateAlignment
from awm_jax.options import PairOptions
from awm_jax.report import ModelSummary, PairResult

__all__ = ["MAX_WIDTH_RATIO", "SCAN_FORMAT", "ScanMatch", "ScanResult", "scan_model"]

#: Entries whose hidden size differs from the model's by more than this factor are not scored
#: (width pruning keeps at least a quarter of the dimensions in every recipe known to us).
MAX_WIDTH_RATIO = 4.0
SCAN_FORMAT = "awm_jax.scan/1"
#: Entries scored at once, each with one BLAS thread (on two cores, 7B-shaped sketches: 0.44 s an
#: entry, against 0.69 s one entry at a time with two BLAS threads; ``benchmarks.scan --workers``).
SCAN_WORKERS = 2
_VERDICT_RANK = {"derived": 0, "inconclusive": 1, "independent": 2}


@dataclasses.dataclass(frozen=True)
class ScanMatch:
    """One catalogue entry scored against the model.

    Attributes:
      entry: the catalogue entry (model B).
      result: the pair's result (model A = the scanned model).
    """

    entry: CatalogueEntry
    result: PairResult

    def to_dict(self) -> dict:
        r = self.result
        return {"id": self.entry.id, "source": self.entry.source, "commit": self.entry.commit,
                "mean": r.mean, "wq": r.wq, "wk": r.wk, "p_value": None if math.isnan(r.p_value) else r.p_value,
                "verdict": r.verdict, "verdict_rule": r.verdict_rule, "layer_match": r.layer_match,
                "matched_layers": [[l.a_layer, l.b_layer] for l in r.layers], "result": r.to_dict()}


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """A scan: the model, the ranked matches and the entries set aside (with the reason).

    Attributes:
      model: the scanned model.
      catalogue: where the catalogue came from.
      matches: scored entries, best first.
      skipped: ``(entry id, reason)`` of entries that could not match.
      options: the pair options used.
      timings: seconds per stage (``prepare_s``, ``sketch_read_s``, ``score_s``, ``total_s``).
    """

    model: ModelSummary
    catalogue: str
    matches: tuple[ScanMatch, ...]
    skipped: tuple[tuple[str, str], ...]
    options: PairOptions
    timings: dict

    def derived(self) -> tuple[ScanMatch, ...]:
        return tuple(m for m in self.matches if m.result.verdict == "derived")

    def to_dict(self, top_k: int | None = None) -> dict:
        """Plain JSON (``top_k`` keeps the best matches only)."""
        matches = self.matches if top_k is None else self.matches[:top_k]
        return {"format": SCAN_FORMAT, "model": dataclasses.asdict(self.model), "catalogue": self.catalogue,
                "options": dataclasses.asdict(self.options), "scored": len(self.matches),
                "matches": [m.to_dict() for m in matches],
                "skipped": [{"id": i, "reason": why} for i, why in self.skipped], "timings": self.timings}

    def render_text(self, top_k: int | None = None) -> str:
        """The human report: one line per match, best first."""
        lines = [f"scan of {self.model.path} ({self.model.layout}, hidden {self.model.hidden_size}, "
                 f"{self.model.num_layers} layers) against {self.catalogue}",
                 f"{len(self.matches)} entries scored, {len(self.skipped)} set aside"]
        derived = self.derived()
        lines.append(f"derived from: {', '.join(m.entry.id for m in derived)}" if derived
                     else "derived from: no catalogue entry")
        lines.append(f"  {'rank':>4}  {'verdict':<12} {'mean':>8} {'p-value':>9}  {'layers':>6}  entry")
        for rank, m in enumerate(self.matches if top_k is None else self.matches[:top_k], 1):
            r = m.result
            p = "-" if math.isnan(r.p_value) else f"{r.p_value:.2g}"
            lines.append(f"  {rank:>4}  {r.verdict:<12} {r.mean:>8.4f} {p:>9}  {len(r.layers):>6}  {m.entry.id}")
        for entry_id, why in self.skipped:
            lines.append(f"  set aside: {entry_id}: {why}")
        return "\n".join(lines)


def _rank(m: ScanMatch) -> tuple:
    mean = m.result.mean
    return (_VERDICT_RANK.get(m.result.verdict, 3), -(mean if math.isfinite(mean) else -math.inf), m.entry.id)


def _width_apart(model: PreparedModel, entry: CatalogueEntry) -> str | None:
    wide, narrow = max(model.hidden_size, entry.hidden_size), min(model.hidden_size, entry.hidden_size)
    if wide > MAX_WIDTH_RATIO * narrow:
        return (f"hidden sizes {model.hidden_size} and {entry.hidden_size} are more than {MAX_WIDTH_RATIO:g}x apart "
                "(beyond width pruning)")
    return None


def scan_model(model: PreparedModel, catalogue: Catalogue, options: PairOptions = PairOptions(),
               progress=None) -> ScanResult:
    """Scores a prepared model against every entry of a catalogue that could match; run under
    ``jax.default_device``.

    Args:
      model: the scanned model (its fingerprint cached as usual by ``prepare_model``).
      catalogue: the loaded catalogue.
      options: alignment and layer matching (``mlp`` is ignored: sketches hold no MLP Grams).
      progress: called with ``(entry, result_or_None)`` after each entry.

    Raises:
      CacheError: a damaged catalogue entry (refused, never scored).
      AWMError: the model itself cannot be read.
    """
    t_start = time.perf_counter()
    read_s = score_s = 0.0
    side = ModelSide.of(model)  # the embedding read once, the model's token Grams kept
    matches, skipped, candidates = [], [], []
    for entry in catalogue.entries:
        why = _width_apart(model, entry)
        if why is None:
            candidates.append(entry)
            continue
        skipped.append((entry.id, why))
        if progress is not None:
            progress(entry, None)
    device = jax.config.jax_default_device  # the caller's choice, for the worker threads

    def score(entry: CatalogueEntry):
        """Reads (hashes, decodes) and scores one entry: ``(result or None, why skipped, read_s, score_s)``."""
        t = time.perf_counter()
        sketch = catalogue.sketch(entry)
        read = time.perf_counter() - t
        if sketch_rows(model, sketch, side).model.size == 0:
            return None, "no shared tokens with the sketch's token subset", read, 0.0
        t = time.perf_counter()
        try:
            with jax.default_device(device):
                return score_against_sketch(model, sketch, options, side=side), None, read, time.perf_counter() - t
        except DegenerateAlignment as e:  # too little evidence to align with this entry: set aside
            return None, str(e), read, time.perf_counter() - t

    # SCAN_WORKERS entries at once, each with one BLAS thread (one worker: the BLAS's own threads):
    # every step of an entry (the products, the assignment, the reads) keeps a core busy; results
    # are taken in catalogue order
    with threadpool_limits(limits=1 if SCAN_WORKERS > 1 else None, user_api="blas"), \
            ThreadPoolExecutor(max_workers=SCAN_WORKERS, thread_name_prefix="awm-scan") as pool:
        pending: collections.deque = collections.deque()
        queue = iter(candidates)
        for entry in itertools.islice(queue, SCAN_WORKERS):
            pending.append((entry, pool.submit(score, entry)))
        while pending:
            entry, future = pending.popleft()
            result, why, read, seconds = future.result()
            for nxt in itertools.islice(queue, 1):
                pending.append((nxt, pool.submit(score, nxt)))
            read_s, score_s = read_s + read, score_s + seconds
            if result is None:
                skipped.append((entry.id, why))
            else:
                matches.append(ScanMatch(entry, result))
            if progress is not None:
                progress(entry, result)
    matches.sort(key=_rank)
    order = {e.id: i for i, e in enumerate(catalogue.entries)}
    skipped.sort(key=lambda s: order[s[0]])
    timings = {"sketch_read_s": read_s, "score_s": score_s, "total_s": time.perf_counter() - t_start}
    return ScanResult(model.summary(), catalogue.origin, tuple(matches), tuple(skipped), options, timings)
