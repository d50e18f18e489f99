"""N-model audits: every pair of a set of models (``N x N``), or every model against a set of
references (``N x M``), each pair scored by the pair engine (:func:`awm_jax.engine.score_pair`).

Stages, each a progress bar, each resumable:

1. **Fingerprints.** Every model is prepared once: opened, its vocabulary read, its per-layer
   Q/K Grams (and MLP-input Grams with ``mlp``) computed into the fingerprint cache or found
   there. Prepared models are held in a store bounded by the memory budget; one evicted and
   needed again is prepared again from the cache (no weights are read).
2. **Pairs.** Every pair goes through the engine exactly as ``compare`` runs it, with the same
   :class:`~awm_jax.options.PairOptions`: the cells equal ``compare``'s results bit for bit by
   construction. Pairs are visited in blocks of rows, so a block's models stay in the store
   while the other models stream past. With several local devices, each device scores its own
   pairs (one worker thread a device); with several processes (``jax.distributed``), each
   process scores its share and writes its own progress file.
3. **Assembly.** The score matrices, families (:mod:`awm_jax.audit.lineage_tree`) and outputs
   (:mod:`awm_jax.audit.outputs`).

Every finished pair is appended to ``<out>/progress.jsonl`` (:mod:`awm_jax.audit.journal`); a
killed audit rerun with the same arguments skips the finished pairs and writes the same files
byte for byte. A damaged record, or one that does not fit the audit, is dropped with a warning
and its pair scored again.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import os
import queue
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from awm_jax.audit.models import AuditEntry, PreparedStore, entries, identity, resolver
from awm_jax.audit.records import AuditModel, AuditResult, PairScore
from awm_jax.errors import AWMError, UsageError, warn
from awm_jax.options import (
    DEFAULT_ALIGNMENT,
    DEFAULT_MEMORY_GB,
    DEFAULT_NORM_GAINS,
    DEVICES,
    FAMILY_RULES,
    PairOptions,
    check_choice,
    check_memory_gb,
)
from awm_jax.report import PairResult

__all__ = ["AuditModel", "AuditResult", "PairPlan", "PairScore", "audit", "load_progress"]

#: Per-pair stage timings summed over the audit's computed pairs.
PAIR_STAGES = ("embedding_read_s", "embedding_cosine_s", "assignment_s", "procrustes_s", "scores_s")


def _journal_name(process: int) -> str:
    from awm_jax.audit.journal import JOURNAL_NAME

    return JOURNAL_NAME if process == 0 else JOURNAL_NAME.replace(".jsonl", f".{process}.jsonl")


@dataclasses.dataclass(frozen=True)
class PairPlan:
    """The pairs of an audit: ``pairs[k] = (i, j)`` indexes ``models`` (A = row model ``i``;
    anything with a ``name``)."""

    models: list[AuditEntry]
    pairs: list[tuple[int, int]]

    def names(self, k: int) -> tuple[str, str]:
        i, j = self.pairs[k]
        return self.models[i].name, self.models[j].name


def _pair_record(k: int, cell: PairScore) -> dict:
    return {"kind": "pair", "pair": k, "a": cell.a, "b": cell.b, "error": cell.error, "result": cell.to_dict()}


def _cell_from_record(plan: PairPlan, rec: dict) -> tuple[int, PairScore] | None:
    """The pair index and cell a journal record holds, or ``None`` when it does not fit this audit."""
    try:
        k = rec["pair"]
        if rec.get("kind") != "pair" or not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(plan.pairs):
            return None
        if (rec["a"], rec["b"]) != plan.names(k) or not isinstance(rec["error"], str):
            return None
        result = PairResult.from_dict(rec["result"])
        if not result.consistent() or bool(rec["error"]) != (result.verdict == "unscored"):
            return None
        depths = [getattr(getattr(plan.models[i], "info", None), "num_layers", None) for i in plan.pairs[k]]
        if None not in depths and result.layers and len(result.layers) != min(depths):
            return None
        return k, PairScore.of(rec["a"], rec["b"], result, rec["error"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _normalised(cell: PairScore) -> PairScore:
    """The cell as a resumed run reads it back from the journal (the same object either way)."""
    return PairScore.of(cell.a, cell.b, PairResult.from_dict(cell.to_dict()), cell.error)


def _score_cell(plan: PairPlan, store: PreparedStore, options: PairOptions, k: int, timings: dict) -> PairScore:
    from awm_jax.engine import score_pair

    i, j = plan.pairs[k]
    a, b = store.get(plan.models[i]), store.get(plan.models[j])
    names = plan.names(k)
    try:
        result = score_pair(a, b, options, timings)
        error = ""
    except AWMError as e:
        result, error = PairResult.unscored("a" if a.hidden_size >= b.hidden_size else "b"), str(e)
    return _normalised(PairScore.of(*names, result, error))


def _pair_order(plan: PairPlan, todo: list[int], memory: int) -> list[int]:
    """Pairs in blocks of row models that fit the store together with one more model."""
    biggest = max((m.emb_bytes for m in plan.models), default=1)
    block = max(1, memory // max(biggest, 1) - 1)
    return sorted(todo, key=lambda k: (plan.pairs[k][0] // block, plan.pairs[k][1], plan.pairs[k][0]))


def _bar(total: int, desc: str, unit: str, progress: bool):
    import jax
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                disable=not progress or jax.process_index() != 0 or not sys.stderr.isatty(), leave=True)


def _score_all(plan: PairPlan, store: PreparedStore, options: PairOptions, todo: list[int], devices: list,
               record: Callable[[int, PairScore], None], progress: bool, timings: dict) -> None:
    """Scores the pairs ``todo`` (one worker thread per device), recording each as it finishes."""
    import jax

    bar = _bar(len(todo), "pairs", "pair", progress)
    free: queue.Queue = queue.Queue()
    for d in devices:
        free.put(d)

    def work(k: int) -> tuple[PairScore, dict]:
        device = free.get()
        try:
            stage: dict = {}
            with jax.default_device(device):
                return _score_cell(plan, store, options, k, stage), stage
        finally:
            free.put(device)

    with bar, ThreadPoolExecutor(max_workers=len(devices), thread_name_prefix="awm-pair") as pool:
        window = 2 * len(devices)  # submitted ahead of the one being recorded: journal order = visit order
        pending: collections.deque = collections.deque()
        for k in todo:
            pending.append((k, pool.submit(work, k)))
            if len(pending) >= window:
                _finish(pending.popleft(), record, bar, timings)
        while pending:
            _finish(pending.popleft(), record, bar, timings)


def _finish(item, record, bar, timings: dict) -> None:
    k, future = item
    cell, stage = future.result()
    for key in PAIR_STAGES:
        timings[key] = timings.get(key, 0.0) + stage.get(key, 0.0)
    record(k, cell)
    bar.update(1)


def _environment(devices: list) -> dict:
    import jax

    from awm_jax.engine import environment

    return {**environment(devices[0]), "devices": len(devices), "processes": jax.process_count()}


def _audit_key(identities: list[dict], against: bool, n_rows: int, options: PairOptions) -> str:
    from awm_jax._version import ALGORITHM_VERSION

    payload = {"algorithm": ALGORITHM_VERSION, "against": against, "rows": n_rows, "options": dataclasses.asdict(options),
               "models": identities}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_family_rule(family_rule: str | float) -> None:
    if isinstance(family_rule, str):
        check_choice("family rule", family_rule, FAMILY_RULES)
    elif not -1.0 <= float(family_rule) <= 1.0:
        raise UsageError(f"family threshold must lie in [-1, 1], got {family_rule}")


def audit(
    models: Sequence | Mapping,
    *,
    against: Sequence | Mapping | None = None,
    out_dir: str | os.PathLike | None = None,
    layer_match: str = "assignment",
    alignment: str = DEFAULT_ALIGNMENT,
    mlp: bool = False,
    norm_gains: str = DEFAULT_NORM_GAINS,
    device: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    layouts: Mapping[str, str] | None = None,
    family_rule: str | float = "fwer",
    memory_gb: float = DEFAULT_MEMORY_GB,
    fresh: bool = False,
    progress: bool = False,
    download: bool = True,
    fetch: str = "partial",
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
      alignment: ``"assignment"``, ``"orthogonal"`` or ``"auto"``, as in ``compare``.
      mlp: also score the MLP input matrices, as in ``compare``.
      norm_gains: ``"fold"`` or ``"ignore"``, as in ``compare``.
      device: ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"tpu"``: the platform whose local devices
        score the pairs.
      cache_dir: fingerprint cache (default ``$AWM_JAX_CACHE`` or the XDG cache folder).
      layouts: forced layouts by model name or spec (``"*"`` for all).
      family_rule: which pairs join families: ``"fwer"`` (calibrated p-value significant over
        the whole audit), ``"verdict"``, or a mean-score threshold (``lineage_tree``).
      memory_gb: budget for the prepared models held at once (embeddings and vocabularies).
      fresh: discard the progress of an earlier run in ``out_dir``.
      progress: show progress bars on stderr (only when it is a terminal).
      download: fetch hub ids that are not in the hub cache.
      fetch: how hub weights are fetched: ``"partial"`` (only the tensors read) or ``"full"``.
      devices: the devices that score pairs (overrides ``device``).
      log: called with one line per stage (default: nothing).

    Returns:
      A frozen :class:`~awm_jax.audit.records.AuditResult`.

    Raises:
      AWMError: a model cannot be read or fingerprinted, or the arguments are invalid. A pair
        that cannot be scored (no shared tokens, a damaged embedding) is reported in the
        result as ``unscored`` instead.
    """
    import jax

    from awm_jax.audit.journal import Journal
    from awm_jax.engine import prepare_model
    from awm_jax.fingerprint import FingerprintCache

    log = log or (lambda s: None)
    options = PairOptions(layer_match=layer_match, alignment=alignment, mlp=mlp, norm_gains=norm_gains)
    check_choice("device", device, DEVICES)
    memory = int(check_memory_gb(memory_gb) * 2**30)
    _check_family_rule(family_rule)
    t_start = time.perf_counter()
    timings: dict = {}
    resolve = resolver(download, fetch)
    rows = entries(models, layouts, resolve)
    cols = entries(against, layouts, resolve, taken=[m.path for m in rows])
    is_against = against is not None
    if is_against and (not rows or not cols):
        raise UsageError("--against needs at least one model and one reference")
    if not is_against and len(rows) < 2:
        raise UsageError(f"an audit needs at least two models, got {len(rows)}")
    everyone = rows + cols
    dup = [n for n, c in collections.Counter(m.name for m in everyone).items() if c > 1]
    if dup:
        raise UsageError(f"model name {dup[0]!r} is used twice; give unique names")
    if devices is None:
        try:
            devices = jax.local_devices() if device == "auto" else jax.local_devices(backend=device)
        except RuntimeError:
            raise UsageError(f"--device {device}: JAX sees no {device} device here") from None
    if not devices:
        raise UsageError("no device to score pairs on")
    timings["resolve_s"] = time.perf_counter() - t_start

    # Stage 1: fingerprints (each process fingerprints its share first; the rest are cache hits).
    fingerprints = FingerprintCache(cache_dir)

    def prepare(entry: AuditEntry):
        prepared = prepare_model(entry.path, layout=entry.layout, cache=fingerprints, mlp=options.mlp,
                                 norm_gains=options.norm_gains, fetch=fetch)
        if entry.info is None:
            r = prepared.resolved
            info = r.ckpt.info(r.embedding_name)
            entry.emb_bytes = int(info.nbytes * r.hidden_size // max(info.shape[-1], 1))  # a projection widens it
            entry.info = AuditModel(**prepared.info().fields(), name=entry.name,
                                    fingerprint=prepared.grams.key)
        return prepared

    store = PreparedStore(memory, prepare)
    t = time.perf_counter()
    order = list(range(len(everyone)))
    share = len(order)
    count, me = jax.process_count(), jax.process_index()
    if count > 1:
        mine = order[me::count]
        order, share = mine + [i for i in order if i % count != me], len(mine)
    identities: list[dict | None] = [None] * len(everyone)
    cached = 0
    with _bar(len(everyone), "fingerprints", "model", progress) as bar, jax.default_device(devices[0]):
        for pos, idx in enumerate(order):
            if pos == share and count > 1:  # the others' fingerprints are in the cache now
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("awm_jax audit fingerprints")
            prepared = store.get(everyone[idx])
            cached += prepared.cached
            identities[idx] = identity(everyone[idx], prepared)
            bar.update(1)
    timings["fingerprint_s"] = time.perf_counter() - t
    timings["fingerprints_cached"] = cached
    log(f"fingerprints: {len(everyone)} models ({cached} cached) in {timings['fingerprint_s']:.1f}s")

    n_rows = len(rows)
    pairs = ([(i, n_rows + j) for i in range(n_rows) for j in range(len(cols))] if is_against
             else [(i, j) for i in range(n_rows) for j in range(i + 1, n_rows)])
    plan = PairPlan(everyone, pairs)
    cells: dict[int, PairScore] = {}
    key = _audit_key(identities, is_against, n_rows, options)
    journal = None
    dropped = 0
    if out_dir is not None:
        if count > 1 and me != 0:  # process 0 prepares the folder and its file first
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("awm_jax audit journal")
        journal = Journal(out_dir, key, fresh=fresh, name=_journal_name(me))
        if count > 1 and me == 0:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("awm_jax audit journal")
        dropped = load_progress(plan, cells, out_dir, key, count, journal)
        if dropped:
            warn(f"{journal.path}: {dropped} progress record(s) are damaged or do not fit this audit; their pairs "
                  "are scored again")
    resumed = len(cells)
    t = time.perf_counter()
    stage_timings: dict = {}
    try:
        todo = [k for k in _pair_order(plan, [k for k in range(len(pairs)) if k not in cells], memory) if k % count == me]

        def record(k: int, cell: PairScore) -> None:
            cells[k] = cell
            if journal is not None:
                journal.append(_pair_record(k, cell))

        _score_all(plan, store, options, todo, devices, record, progress, stage_timings)
    finally:
        if journal is not None:
            journal.close()
    if count > 1:  # every process's pairs are in its progress file now
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("awm_jax audit pairs")
        if out_dir is None:
            raise UsageError("a multi-process audit needs --out on a shared file system")
        load_progress(plan, cells, out_dir, key, count, None)
    missing = [k for k in range(len(pairs)) if k not in cells]
    if missing:
        raise UsageError(f"{len(missing)} pairs were not scored by any process; rerun the same command to finish")
    timings["pair_phase_s"] = time.perf_counter() - t
    timings.update({k: stage_timings.get(k, 0.0) for k in PAIR_STAGES})
    timings["pairs"] = len(pairs)
    timings["pairs_computed"] = len(todo)
    timings["resumed"] = resumed
    timings["progress_records_dropped"] = dropped
    log(f"pairs: {len(pairs)} in {timings['pair_phase_s']:.1f}s")

    t = time.perf_counter()
    result = _assemble(plan, cells, rows, cols, is_against, family_rule, options, timings, _environment(devices))
    timings["assemble_s"] = time.perf_counter() - t
    if out_dir is not None and me == 0:
        from awm_jax.audit.outputs import write_outputs, write_run_info

        t = time.perf_counter()
        write_outputs(result, out_dir)
        timings["report_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t_start
    if out_dir is not None and me == 0:
        write_run_info(result, out_dir)
    if count > 1:  # the others wait while process 0 writes: all leave together
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("awm_jax audit written")
    return result


def load_progress(plan: PairPlan, cells: dict[int, PairScore], out_dir, key: str, count: int, own) -> int:
    """Loads the finished pairs of every process's progress file into ``cells``.

    Args:
      plan: the audit's pairs.
      cells: filled with pair index -> cell.
      out_dir: the output folder.
      key: the audit's identity (a progress file of another audit is refused).
      count: number of processes (one progress file each).
      own: this process's open journal (read from it instead of opening the file again), or None.

    Returns:
      How many records were damaged or do not fit this audit (dropped: their pairs are redone).
    """
    from awm_jax.audit.journal import Journal

    dropped = 0
    for process in range(count):
        journal = own if own is not None and Path(own.path).name == _journal_name(process) else None
        if journal is None:
            if not (Path(out_dir) / _journal_name(process)).exists():
                continue
            journal = Journal(out_dir, key, writer=False, name=_journal_name(process))
        dropped += journal.damaged
        for rec in journal.records:
            found = _cell_from_record(plan, rec)
            if found is None:
                dropped += 1
            else:
                cells.setdefault(found[0], found[1])
    return dropped


def _assemble(plan: PairPlan, cells: dict[int, PairScore], rows: list[AuditEntry], cols: list[AuditEntry], against: bool,
              family_rule: str | float, options: PairOptions, timings: dict, environment: dict) -> AuditResult:
    from awm_jax.audit.lineage_tree import derived_edges, families

    n_r = len(rows)
    n_c = len(cols) if against else n_r
    mats = {key: np.full((n_r, n_c), np.nan) for key in ("mean", "wq", "wk", "z", "p")}
    verdicts = np.full((n_r, n_c), "", dtype=object)
    pair_scores = [cells[k] for k in range(len(plan.pairs))]
    for (i, j), ps in zip(plan.pairs, pair_scores):
        c = j - n_r if against else j
        for r, cc in ([(i, c)] if against else [(i, c), (c, i)]):
            mats["mean"][r, cc], mats["wq"][r, cc], mats["wk"][r, cc] = ps.mean, ps.wq, ps.wk
            mats["z"][r, cc], mats["p"][r, cc] = ps.z_reference, ps.p_value
            verdicts[r, cc] = ps.verdict
    if not against:
        np.fill_diagonal(verdicts, "self")
    edges = [pair for pair, edge in zip(plan.pairs, derived_edges(pair_scores, family_rule)) if edge]
    everyone = plan.models
    fams = families([m.name for m in everyone], edges)
    return AuditResult(
        models=tuple(m.info for m in everyone), rows=tuple(m.name for m in rows),
        columns=tuple(m.name for m in (cols if against else rows)), against=against, pairs=tuple(pair_scores),
        mean=mats["mean"], wq=mats["wq"], wk=mats["wk"], z=mats["z"], p=mats["p"], verdict=verdicts.astype(str),
        families=fams, family_rule=family_rule, options=dataclasses.asdict(options), timings=timings,
        environment=environment,
    )
