"""Partial hub downloads: a model folder holding every shard's header and only the tensors read.

``resolve_model(spec, fetch="partial")`` (the default of ``compare``, ``audit`` and
``download``) builds, in the hub cache, ``models--owner--name/awm_partial/<commit>/``:

- the config, tokenizer and index files, fetched whole into the standard snapshot
  (``snapshots/<commit>/``) and linked from here;
- one *sparse* file per weight shard (:mod:`awm_jax.io.sparse`): the shard's true size, its real
  header (read with HTTP ``Range`` requests), and holes where the tensor data will go, with its
  range record beside it.

Every reader opens that folder as it opens any model folder. Once the layout is known, the
tensors a comparison reads (found by a dry run of the read path, :func:`needed_tensors`) are
fetched with :func:`fetch_tensors`: only their byte ranges, concurrently, resumable (ranges
already present are never asked for again), each request under the model's deadlines. Two runs
filling the same file at once write the same bytes; at worst one's record misses a range the
other fetched, which is then fetched again (a range is never claimed before its bytes are on disk). A later
request needing more tensors (``--mlp``) fetches only those; a model whose tensors are all
present makes no request at all. The sparse files live apart from ``snapshots/`` so no other
Hugging Face tool ever reads a hole as weights; ``--download full`` fills a sparse file's holes,
checks the whole file against the hub's SHA-256 and moves it into ``blobs/`` (:func:`complete_blob`).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
from pathlib import Path

from awm_jax.errors import CheckpointError
from awm_jax.io import _ranges
from awm_jax.io._network import Watch
from awm_jax.io.sparse import MissingRange, SparseFile, ranges_path

__all__ = ["PARTIAL_DIR", "partial_folder", "cached_partial", "create_sparse", "download_partial", "fetch_tensors",
           "complete_blob", "FetchStats"]

#: Folder of a repository's partial snapshots, beside ``snapshots/`` in its hub cache folder.
PARTIAL_DIR = "awm_partial"


class FetchStats(collections.namedtuple("FetchStats", "requested_bytes fetched_bytes")):
    """What :func:`fetch_tensors` did: bytes of the tensors asked for, bytes fetched now."""


def partial_folder(storage: Path, commit: str) -> Path:
    """The partial snapshot folder of one commit of a repository (``storage``: its cache folder)."""
    return storage / PARTIAL_DIR / commit


def _weight_names(folder: Path) -> list[str] | None:
    """The shard names of a partial folder (from its index), or ``None`` when it has no weights listed."""
    from awm_jax.io.hub import INDEX_FILE, SINGLE_FILE

    index = folder / INDEX_FILE
    if index.is_file():
        try:
            shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
            return sorted(set(shards)) if all(isinstance(s, str) and "/" not in s for s in shards) else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
    return [SINGLE_FILE] if os.path.lexists(folder / SINGLE_FILE) else None


def cached_partial(storage: Path, commit: str) -> Path | None:
    """A usable partial snapshot (config, weights list, every shard with its range record), or ``None``; no network."""
    folder = partial_folder(storage, commit)
    shards = _weight_names(folder)
    if not shards or not (folder / "config.json").is_file():
        return None
    ok = all((folder / s).is_file() and ranges_path(folder / s).is_file() for s in shards)
    return folder if ok else None


def _link(folder: Path, snapshot_file: Path) -> None:
    """Puts a complete small file of the snapshot into the partial folder (a relative link, else a copy)."""
    target = folder / snapshot_file.name
    if os.path.lexists(target):
        return
    try:
        os.symlink(os.path.relpath(snapshot_file, folder), target)
    except OSError:
        shutil.copyfile(snapshot_file, target)


def create_sparse(folder: Path, hub_id, commit: str, names: list[str], endpoint: str | None, watch: Watch,
                  fetch_header) -> None:
    """Creates in ``folder`` the sparse file of each remote file ``names`` (of ``commit``) from its
    header, ``fetch_header(remote, watch) -> bytes`` (safetensors or GGUF); a file already there with
    a valid record is kept, a damaged one made again."""
    for name in names:
        final = folder / name
        if final.is_file() and ranges_path(final).is_file():
            try:
                if SparseFile.load(final) is not None:
                    continue
            except CheckpointError:
                pass  # damaged: fetched again below
        remote = _ranges.remote_file(hub_id.repo_id, name, commit, endpoint, watch)
        header = fetch_header(remote, watch)
        source = {"repo_id": hub_id.repo_id, "commit": commit, "file": name, "etag": remote.etag}
        # The record is written before the file appears under its name: a file in this folder
        # always has a record, so a hole can never pass for data.
        tmp = folder / f".{name}.{os.getpid()}.incomplete"  # two runs at once each write their own
        SparseFile.create(tmp, remote.size, source, header)
        os.replace(ranges_path(tmp), ranges_path(final))
        os.replace(tmp, final)


def download_partial(hub_id, storage: Path, commit: str, small: list[Path], shards: list[str],
                     endpoint: str | None, watch: Watch) -> Path:
    """Builds the partial snapshot of ``commit``: links the small files, and creates each shard's
    sparse file from its remote header (shards already there are kept as they are).

    Args:
      hub_id: the model (for messages).
      storage: the repository's hub cache folder.
      commit: the resolved commit.
      small: the config, tokenizer and index files, complete in ``snapshots/<commit>/``.
      shards: the weight shard names.
      endpoint: the hub address (``None``: huggingface.co).
      watch: the download's deadlines.

    Returns:
      The partial folder.
    """
    folder = partial_folder(storage, commit)
    folder.mkdir(parents=True, exist_ok=True)
    for path in small:
        _link(folder, path)
    create_sparse(folder, hub_id, commit, shards, endpoint, watch, _ranges.fetch_header)
    return folder


def _offline() -> bool:
    from awm_jax.io.hub import _offline as offline

    return offline()


def fetch_tensors(ckpt, names: set[str] | list[str]) -> FetchStats:
    """Fetches the byte ranges of tensors ``names`` missing from a checkpoint's sparse files.

    Makes no request when they are all present. The checkpoint's range records are read again
    afterwards, so it reads the new bytes at once.

    Raises:
      MissingRange: some are missing and the hub may not be asked (``HF_HUB_OFFLINE``).
      CheckpointError: the download failed (one line: what happened, what to do).
    """
    from awm_jax.io._hub_errors import hub_errors
    from awm_jax.io._network import NetworkLimits, track_hub_client
    from awm_jax.io.hub import HubId, _endpoint, _hub_warnings_muted, hub_cache_dir

    wanted: dict[Path, list[tuple[int, int]]] = collections.defaultdict(list)
    requested = 0
    for name in names:
        info = ckpt.tensors[name]
        requested += info.nbytes
        if info.file in ckpt.sparse:
            wanted[info.file].append((info.start, info.start + info.nbytes))
    todo = {f: spans for f, spans in wanted.items() if any(ckpt.sparse[f].missing(s, e) for s, e in spans)}
    if not todo:
        return FetchStats(requested, 0)
    source = ckpt.sparse[next(iter(todo))].source
    hub_id = HubId(source["repo_id"], source["commit"])
    if _offline():
        raise MissingRange(
            f"{hub_id}: {len(todo)} partially downloaded shard(s) lack tensors this comparison reads and "
            "HF_HUB_OFFLINE is set; run it once with network access, or fetch them with `python -m awm_jax.download "
            f"{hub_id}`"
        )
    endpoint = _endpoint()
    watch = Watch(NetworkLimits.from_environment(), str(hub_id))
    with hub_errors(hub_id, endpoint, hub_cache_dir(), watch), watch, _hub_warnings_muted():
        track_hub_client()
        jobs = []
        for file, spans in todo.items():
            sparse = ckpt.sparse[file]
            src = sparse.source
            remote = _ranges.remote_file(src["repo_id"], src["file"], src["commit"], endpoint, watch)
            if remote.etag != src["etag"] or remote.size != sparse.size:
                raise CheckpointError(
                    f"{hub_id}: {src['file']} on the hub is no longer the file partly fetched into {file} (another "
                    f"content hash); delete {file.parent} and run again"
                )
            jobs.append((sparse, remote, spans))
        fetched = _ranges.fill(jobs, watch)
    ckpt.reload_ranges()
    return FetchStats(requested, fetched)


def complete_blob(storage: Path, name: str, commit: str, url: str, meta, blob: Path, watch: Watch) -> bool:
    """Completes this commit's partially downloaded shard ``name``, if there is one, into ``blob``
    (the standard cache blob): fills its holes (only the missing bytes are fetched), checks the
    whole file against the hub's SHA-256 and moves it. Returns whether it did; a file whose
    content hash is not a SHA-256, or that fails the check, is left to the whole-file download
    (a failed one is deleted).

    Args:
      storage: the repository's hub cache folder.
      name: the shard.
      commit: the commit.
      url: the hub's address of the file; ``meta``: its ``HfFileMetadata``.
      blob: where the complete file goes.
      watch: the download's deadlines.
    """
    import hashlib
    import re

    path = partial_folder(storage, commit) / name
    sparse = SparseFile.load(path) if path.is_file() else None
    if sparse is None or sparse.source.get("etag") != meta.etag or not re.fullmatch(r"[0-9a-f]{64}", meta.etag or ""):
        return False
    remote = _ranges.RemoteFile(sparse.source["repo_id"], name, commit, meta.etag, int(meta.size or 0), meta.location, url)
    _ranges.fill([(sparse, remote, [(0, sparse.size)])], watch)
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(16 << 20):
            h.update(chunk)
    if h.hexdigest() != meta.etag:
        for p in (path, ranges_path(path)):
            p.unlink(missing_ok=True)
        return False
    blob.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, blob)
    ranges_path(path).unlink(missing_ok=True)
    return True
