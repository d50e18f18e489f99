"""The audit's models: resolving what the user named, naming it uniquely, and holding prepared
models within a memory budget."""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence

from awm_jax.errors import UsageError

__all__ = ["AuditEntry", "PreparedStore", "default_names", "entries", "identity", "resolver", "unique_names"]


@dataclasses.dataclass
class AuditEntry:
    """One model of an audit, as named by the user: its unique name, its folder, its forced
    layout; ``info`` (an ``AuditModel``) and ``emb_bytes`` are filled when it is fingerprinted."""

    name: str
    path: Path
    layout: str | None
    info: object = None
    emb_bytes: int = 0


def unique_names(paths: Sequence[Path]) -> list[str]:
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


def default_names(specs: Sequence, paths: Sequence[Path], taken: Sequence[Path] = ()) -> list[str]:
    """Names of models as the user named them: a hub id by its repository id (``owner/name``, with
    ``@revision`` when one was given), a folder by its name (parent folders added where two
    collide, see :func:`unique_names`); unique together with the folders in ``taken``."""
    from awm_jax.io.hub import parse_hub_id

    hub = [None if os.path.lexists(os.fspath(s)) else parse_hub_id(os.fspath(s)) for s in specs]
    folders = unique_names(list(taken) + [p for p, h in zip(paths, hub) if h is None])[len(taken):]
    names = [str(h) if h is not None else folders.pop(0) for h in hub]
    seen: collections.Counter = collections.Counter()
    out = []
    for nm in names:
        seen[nm] += 1
        out.append(nm if seen[nm] == 1 else f"{nm}#{seen[nm]}")
    return out


def resolver(download: bool, fetch: str = "partial") -> Callable[[object], Path]:
    """Resolves a model spec (folder or hub id) to a local folder (``fetch``: how hub weights are fetched)."""
    def resolve(spec) -> Path:
        path = Path(os.fspath(spec)).expanduser()
        if path.is_dir():
            return path.resolve()
        from awm_jax.io.hub import resolve_model

        return Path(resolve_model(spec, download=download, fetch=fetch))

    return resolve


def entries(spec: Sequence | Mapping | None, layouts: Mapping[str, str] | None, resolve: Callable,
            taken: Sequence[Path] = ()) -> list[AuditEntry]:
    """Models from a list of folders/hub ids or a mapping name -> folder; default names are unique
    together with the folders in ``taken`` (the other side of an ``against`` audit)."""
    if spec is None:
        return []
    if isinstance(spec, (str, os.PathLike)):
        raise UsageError("give the models as a list of folders or hub ids (or a mapping name -> folder)")
    items = [(str(k), v) for k, v in spec.items()] if isinstance(spec, Mapping) else [(None, v) for v in spec]
    paths = [resolve(v) for _, v in items]
    auto = default_names([v for _, v in items], paths, taken)
    out = []
    for (name, raw), path, default in zip(items, paths, auto):
        name = name or default
        layout = (layouts or {}).get(name) or (layouts or {}).get(str(raw)) or (layouts or {}).get("*")
        out.append(AuditEntry(name, path, layout))
    return out


def identity(entry: AuditEntry, prepared) -> dict:
    """What identifies a model's inputs: its files (path, size, mtime), its layout, its Grams."""
    r = prepared.resolved
    files = []
    for f in sorted({*map(str, r.ckpt.files), prepared.vocab.source}):
        try:
            st = os.stat(f)
        except OSError:
            continue
        files.append([f, st.st_size, st.st_mtime_ns])
    return {"name": entry.name, "path": str(entry.path), "layout": r.name, "files": files, "grams": prepared.grams.key}


class PreparedStore:
    """Prepared models (layout, vocabulary, fingerprint handle), least recently used first out,
    at most as many as ``budget`` bytes of embeddings and vocabularies allow (at least two: a pair).

    A model evicted and asked for again is prepared again from the fingerprint cache (no
    weights read). Thread-safe: the audit's device workers share one store.
    """

    def __init__(self, budget: int, prepare: Callable[[AuditEntry], object]):
        self.budget = budget
        self.prepare = prepare
        self.items: collections.OrderedDict[str, tuple[object, int]] = collections.OrderedDict()
        self.bytes = 0
        self.lock = threading.Lock()

    @staticmethod
    def cost(entry: AuditEntry, prepared) -> int:
        return entry.emb_bytes + 64 * len(prepared.vocab)

    def get(self, entry: AuditEntry):
        with self.lock:
            if entry.name in self.items:
                self.items.move_to_end(entry.name)
                return self.items[entry.name][0]
        prepared = self.prepare(entry)
        size = self.cost(entry, prepared)
        with self.lock:
            while len(self.items) >= 2 and self.bytes + size > self.budget:
                _, (_, old) = self.items.popitem(last=False)
                self.bytes -= old
            if entry.name not in self.items:
                self.items[entry.name] = (prepared, size)
                self.bytes += size
        return prepared
