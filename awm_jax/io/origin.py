"""Who a model is, for reports: a hub repository at a commit, or a local folder.

A folder inside the Hugging Face cache (``models--owner--name/snapshots/<commit>`` or a partial
snapshot ``models--owner--name/awm_partial/<commit>``) is a hub model: its repository id, the
revision it was asked for (as :func:`~awm_jax.io.hub.resolve_model` recorded it in this process,
else the cache's refs pointing to that commit, else the commit), the commit, and each file's
etag (a snapshot file links to ``blobs/<etag>``; a partial shard's range record holds it).
Anything else is a local folder (or file): its path and its files' sizes. Only local files are
read; nothing here touches the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from awm_jax.errors import CheckpointError
from awm_jax.io.sparse import RANGES_SUFFIX, SparseFile
from awm_jax.report import FileIdentity, ModelOrigin

__all__ = ["model_origin"]

_HUB_PARENTS = {"snapshots": "full", "awm_partial": "partial"}


def _hub_parts(root: Path) -> tuple[str, str, str] | None:
    """``(repo_id, commit, download)`` of a snapshot folder in the hub cache, else ``None``."""
    parts = root.parent.parent.name.split("--")
    if root.parent.name not in _HUB_PARENTS or len(parts) != 3 or parts[0] != "models" or len(root.name) != 40:
        return None
    return f"{parts[1]}/{parts[2]}", root.name, _HUB_PARENTS[root.parent.name]


def _revision(root: Path, commit: str, folder: Path) -> str:
    from awm_jax.io.hub import requested_revision

    asked = requested_revision(root)
    if asked:
        return asked
    refs = folder.parent.parent / "refs"
    names = []
    for ref in sorted(refs.rglob("*")) if refs.is_dir() else ():
        try:
            if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
                names.append(ref.relative_to(refs).as_posix())
        except OSError:
            continue
    return "main" if "main" in names else (names[0] if names else commit)


def _hub_file(path: Path) -> FileIdentity:
    sparse = SparseFile.load(path) if path.suffix in (".safetensors", ".gguf") else None
    if sparse is not None:
        return FileIdentity(path.name, sparse.size, str(sparse.source.get("etag", "")))
    real = Path(os.path.realpath(path))
    etag = real.name if real.parent.name == "blobs" else ""
    return FileIdentity(path.name, real.stat().st_size, etag)


def model_origin(root: str | os.PathLike, files: list[str | os.PathLike] = ()) -> ModelOrigin:
    """The origin of the model read from ``root``.

    Args:
      root: the model folder (or file) read.
      files: the files read from it (weights, config, vocabulary); for a hub snapshot every file
        of the folder is listed whatever is given.

    Returns:
      A :class:`~awm_jax.report.ModelOrigin`.
    """
    root = Path(root)
    folder = root if root.is_dir() else root.parent  # a GGUF model is named by its first file
    hub = _hub_parts(folder)
    if hub is not None:
        repo_id, commit, download = hub
        if root.is_dir():
            listed = sorted(p for p in root.iterdir() if not p.name.endswith(RANGES_SUFFIX) and not p.name.startswith("."))
        else:
            listed = sorted({Path(f) for f in files if Path(f).parent == folder and Path(f).is_file()})
        identities = []
        for p in listed:
            try:
                identities.append(_hub_file(p))
            except (OSError, ValueError, CheckpointError):
                continue
        return ModelOrigin("hub", str(root), repo_id, _revision(root, commit, folder), commit, download,
                           tuple(identities))
    seen = {}
    for f in files:
        p = Path(f)
        try:
            seen[p.name if p.parent == root else str(p)] = p.stat().st_size
        except OSError:
            continue
    return ModelOrigin("folder" if root.is_dir() else "file", str(root),
                       files=tuple(FileIdentity(name, size) for name, size in sorted(seen.items())))
