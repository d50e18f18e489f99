"""Hub checkpoints: turn a model folder or a Hugging Face Hub id into a local model folder.

``resolve_model("meta-llama/Llama-2-7b-hf")`` returns the snapshot folder of that repository in
the standard Hugging Face cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else
``~/.cache/huggingface/hub``), downloading what awm_jax reads and nothing else:

- ``config.json`` and ``generation_config.json``;
- the tokenizer files the vocabulary stage reads or that describe them (``tokenizer.json``,
  ``tokenizer.model``, ``tokenizer_config.json``, ``*.tiktoken``, ``vocab.json``, ``merges.txt``,
  ``special_tokens_map.json``);
- the weights: ``model.safetensors.index.json`` and exactly the shards its ``weight_map`` names,
  or else ``model.safetensors``. Pickle weights (``*.bin``, ``*.pt``, ``*.pth``), Meta-format
  ``consolidated.*`` files, GGUF files, adapters and everything under subfolders (``original/``)
  are never fetched for such a repository;
- from a GGUF repository (``owner/name:Q4_K_M``, or one holding GGUF files and no safetensors
  weights), the chosen GGUF model's files only (:mod:`awm_jax.io.hub_gguf`);
- from a LoRA adapter repository (``adapter_config.json``, ``adapter_model.safetensors``, no model
  weights), those two files and its tokenizer files; its base (``base_model_name_or_path`` or
  ``--adapter-base``, itself a hub id or a folder) is resolved like any model when it is opened.

Small files go through ``huggingface_hub.hf_hub_download``. Weight files are fetched into
``blobs/<etag>.incomplete`` and resumed with an HTTP ``Range`` request when a run is interrupted
(recent huggingface_hub releases delete their own partial files on failure), then linked into
the snapshot by ``hf_hub_download``, so the cache layout is the one every Hugging Face tool
reads. The partial file is named after the file's content hash, so a resumed file can never mix
two versions. All files come from the one commit the revision pointed to when the download
started.

With ``fetch="partial"`` (what ``compare``, ``audit`` and ``download`` use by default) the weight
files are not fetched whole: each shard's header is read with HTTP Range requests into a sparse
file of a partial snapshot, and the tensors a comparison reads are fetched later, as byte ranges
(:mod:`awm_jax.io.hub_partial`). ``fetch="full"`` completes such a shard from the ranges it holds.

A snapshot whose weights are complete is used without asking the hub (no network at all), so a
second ``resolve_model`` of the same id is free; to move a branch such as ``main`` to a newer
commit, name the commit (``owner/name@<sha>``) or delete ``refs/main`` in the cache.
``HF_HUB_OFFLINE=1`` or ``download=False`` restrict resolution to the cache; ``HF_ENDPOINT``
selects a mirror (a malformed one is a usage error). Every failure (unknown repo, gated repo
without a token, no network, no safetensors weights, a captive portal answering HTML) raises
:class:`~awm_jax.errors.CheckpointError` with one line saying what to do.

No request can hang: every connect and read has a timeout, a weight transfer slower than a
floor rate is aborted, and each model's download has a total deadline scaled to its size,
enforced by a watchdog that cuts the connection; transient failures are retried with backoff
within that deadline. The limits come from ``AWM_HUB_TIMEOUT``, ``AWM_HUB_MIN_RATE``,
``AWM_HUB_STALL``, ``AWM_HUB_DEADLINE`` and ``AWM_HUB_RETRIES`` (:mod:`awm_jax.io._network`).
"""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit

from awm_jax._version import __version__
from awm_jax.errors import CheckpointError, UsageError
from awm_jax.io._hub_errors import hub_errors, transient
from awm_jax.io._network import NetworkLimits, Watch, track_hub_client

__all__ = [
    "CONFIG_FILES",
    "TOKENIZER_FILES",
    "INDEX_FILE",
    "SINGLE_FILE",
    "ADAPTER_FILES",
    "HubId",
    "parse_hub_id",
    "hub_cache_dir",
    "select_files",
    "cached_snapshot",
    "resolve_model",
    "requested_revision",
    "FETCH_MODES",
]

#: Model description files fetched when the repository has them.
CONFIG_FILES = ("config.json", "generation_config.json")
#: Tokenizer files fetched when the repository has them (plus any top-level ``*.tiktoken``).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
)
#: Index of a sharded safetensors checkpoint.
INDEX_FILE = "model.safetensors.index.json"
#: Weights of an unsharded safetensors checkpoint.
SINGLE_FILE = "model.safetensors"
#: A LoRA adapter repository's files (config, weights), fetched whole.
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[A-Za-z0-9][A-Za-z0-9._/-]*))?"
                     r"(?::(?P<gguf>[A-Za-z0-9][A-Za-z0-9._-]{0,199}))?")
_ETAG = re.compile(r"[A-Za-z0-9._-]+")

#: How hub weights are fetched: only the tensors read (``partial``), or whole files (``full``).
FETCH_MODES = ("partial", "full")
#: Snapshot folder -> the revision it was asked for (this process), for reports.
_REQUESTED: dict[str, str] = {}


class HubId(NamedTuple):
    """A Hugging Face Hub model repository, the revision (branch, tag or commit) to use, and which
    GGUF model of it to read (``:QUANT`` or a file name; :mod:`awm_jax.io.hub_gguf`), if one is named."""

    repo_id: str
    revision: str = "main"
    gguf: str | None = None

    def __str__(self) -> str:
        text = self.repo_id if self.revision == "main" else f"{self.repo_id}@{self.revision}"
        return text if self.gguf is None else f"{text}:{self.gguf}"


def parse_hub_id(spec: str) -> HubId | None:
    """Parses ``owner/name[@revision][:QUANT]``; ``None`` if ``spec`` is not one.

    ``QUANT`` names a GGUF model of the repository (a quantisation type such as ``Q4_K_M``, or a
    file name). Names follow the hub's rules (letters, digits, ``.``, ``_``, ``-``; no ``--`` or ``..``);
    a revision may contain ``/`` (``refs/pr/3``) but no ``..`` or empty segment.
    """
    match = _HUB_ID.fullmatch(spec.strip())
    if match is None:
        return None
    repo, revision = match["repo"], match["revision"] or "main"
    if "--" in repo or ".." in repo:
        return None
    if ".." in revision or "//" in revision or revision.endswith("/"):
        return None
    return HubId(repo, revision, match["gguf"])


def hub_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time.

    Order: ``cache_dir``, ``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME/hub``,
    ``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub`` (huggingface_hub's order).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(name):
            return Path(os.path.expandvars(env[name])).expanduser()
    if env.get("HF_HOME"):
        return Path(os.path.expandvars(env["HF_HOME"])).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(os.path.expandvars(xdg)).expanduser() / "huggingface" / "hub"


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    constants = sys.modules.get("huggingface_hub.constants")
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def _endpoint() -> str | None:
    """``HF_ENDPOINT``, checked to be an http(s) URL with a host and a valid port.

    Raises:
      UsageError: it is set but malformed (``http://[::1``, a port of 99999, no scheme).
    """
    value = os.environ.get("HF_ENDPOINT", "").strip().rstrip("/")
    if not value:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port out of range or not a number)
        problem = None
        if parts.scheme not in ("http", "https"):
            problem = "the scheme must be http or https"
        elif not parts.hostname:
            problem = "no host name"
    except ValueError as e:
        problem = str(e)
    if problem is not None:
        raise UsageError(
            f"HF_ENDPOINT={value[:100]!r} is not a valid http(s) URL ({problem}); set it to the hub's address, "
            "e.g. https://huggingface.co, or unset it"
        )
    return value


def _storage(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def _is_plain_name(name: str) -> bool:
    return bool(name) and name not in {".", ".."} and "/" not in name and "\\" not in name and "\0" not in name


def select_files(repo_id: str, files: list[str]) -> tuple[list[str], str | None]:
    """Chooses what to fetch from a repository's file list.

    Args:
      repo_id: the repository (for messages).
      files: every file path in the repository at the chosen commit.

    Returns:
      ``(small, weights)``: the config and tokenizer files present (top level only), and either
      :data:`INDEX_FILE` (shards are read from it later) or :data:`SINGLE_FILE`.

    Raises:
      CheckpointError: the repository holds no safetensors weights in transformers layout.
    """
    top = [f for f in files if "/" not in f]
    small = [f for f in CONFIG_FILES + TOKENIZER_FILES if f in top]
    small += sorted(f for f in top if f.endswith(".tiktoken"))
    if INDEX_FILE in top:
        return small, INDEX_FILE
    if SINGLE_FILE in top:
        return small, SINGLE_FILE
    pickles = sorted(f for f in top if f.endswith(_PICKLE_SUFFIXES) and not f.startswith("consolidated"))
    if any(Path(f).name.startswith("consolidated.") for f in files) or "params.json" in top:
        raise CheckpointError(
            f"{repo_id}: a Meta-format checkpoint (consolidated.*.pth, params.json), not the transformers "
            "layout awm_jax reads; use the transformers repository (usually the same name ending in -hf)"
        )
    if pickles:
        listed = ", ".join(pickles[:2]) + (", ..." if len(pickles) > 2 else "")
        raise CheckpointError(
            f"{repo_id}: only pickle weights ({listed}), which awm_jax does not load because unpickling can run "
            f"code; use a revision with safetensors weights (often the hub's 'Adding `safetensors` variant' pull "
            f"request: {repo_id}@refs/pr/N) or convert them to safetensors"
        )
    others = sorted(f for f in top if f.endswith(".safetensors"))
    if others:
        raise CheckpointError(
            f"{repo_id}: {', '.join(others[:2])} but no {SINGLE_FILE} or {INDEX_FILE} (an adapter or a "
            "non-transformers export?); point awm_jax at the full model's repository"
        )
    raise CheckpointError(f"{repo_id}: no {SINGLE_FILE} or {INDEX_FILE} in the repository; is it a model repository?")


def _index_shards(repo_id: str, index: Path, files: list[str]) -> list[str]:
    """The distinct shard names an index's ``weight_map`` points to, validated."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        if not isinstance(weight_map, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in weight_map.items()
        ):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(
            f"{repo_id}: {INDEX_FILE} is not a valid index (expected JSON with a 'weight_map' of tensor -> shard "
            "file); report it to the repository's owners or pick another revision"
        ) from None
    shards = list(dict.fromkeys(weight_map.values()))
    if not shards:
        raise CheckpointError(f"{repo_id}: {INDEX_FILE} names no shards; the repository's index is empty")
    for shard in shards:
        if not _is_plain_name(shard) or not shard.endswith(".safetensors"):
            raise CheckpointError(
                f"{repo_id}: {INDEX_FILE} names shard {shard!r}, which is not a plain *.safetensors file name; "
                "refusing to fetch it"
            )
        if shard not in files:
            raise CheckpointError(
                f"{repo_id}: {INDEX_FILE} names shard {shard!r}, which the repository does not hold; "
                "its index is inconsistent: pick another revision"
            )
    return shards


def _complete_snapshot(snapshot: Path) -> bool:
    """Whether a snapshot folder holds complete safetensors weights (the last files fetched)."""
    index = snapshot / INDEX_FILE
    if index.is_file():
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False
        return bool(shards) and all(isinstance(s, str) and _is_plain_name(s) and (snapshot / s).is_file() for s in shards)
    return (snapshot / SINGLE_FILE).is_file() or all((snapshot / f).is_file() for f in ADAPTER_FILES)


def _read_ref(cache: Path, hub_id: HubId) -> str | None:
    """The commit the cache's ``refs/<revision>`` names, or ``None``."""
    try:
        commit = (_storage(cache, hub_id.repo_id) / "refs" / hub_id.revision).read_text(encoding="utf-8").strip()
    except OSError:
        return None
    return commit if _COMMIT.fullmatch(commit) else None


def cached_snapshot(spec: str | HubId, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached snapshot folder of a hub id if its weights are complete (a GGUF model: the path
    of its first file), else ``None``.

    Reads only the local cache (``refs/<revision>`` -> ``snapshots/<commit>``); no network.
    """
    hub_id = spec if isinstance(spec, HubId) else parse_hub_id(spec)
    if hub_id is None:
        return None
    cache = hub_cache_dir(cache_dir)
    commit = hub_id.revision if _COMMIT.fullmatch(hub_id.revision) else _read_ref(cache, hub_id)
    if commit is None:
        return None
    snapshot = _storage(cache, hub_id.repo_id) / "snapshots" / commit
    if hub_id.gguf is None and _complete_snapshot(snapshot):
        return snapshot
    if hub_id.gguf is not None or not (snapshot / "config.json").is_file():
        from awm_jax.io.hub_gguf import cached_gguf

        return cached_gguf(snapshot, hub_id.gguf, partial=False)  # a GGUF model: its first file
    return None


def resolve_model(spec: str | os.PathLike, *, download: bool = True, cache_dir: str | os.PathLike | None = None,
                  fetch: str = "full") -> Path:
    """Returns a local model folder for a folder path or a hub id.

    Args:
      spec: an existing folder (returned resolved, as is), or ``owner/name`` /
        ``owner/name@revision`` on the Hugging Face Hub (``HF_ENDPOINT`` honoured).
      download: fetch what is missing; when false (or with ``HF_HUB_OFFLINE=1``) only the
        local cache is used.
      cache_dir: hub cache folder; default from ``HF_HUB_CACHE`` / ``HF_HOME``.
      fetch: ``"full"`` (whole weight files into the standard snapshot) or ``"partial"`` (every
        shard's header only, in a partial snapshot whose tensors are fetched as they are needed:
        :mod:`awm_jax.io.hub_partial`). A complete snapshot in the cache is used either way.

    Returns:
      The folder (for a hub id: its snapshot folder in the hub cache, or its partial snapshot);
      for a GGUF model of a hub repository (``owner/name:QUANT``, or a repository holding GGUF
      files and no safetensors weights), the path of its first file there.

    Raises:
      CheckpointError: no such folder and not a hub id; the repository, revision or a file is
        not found; the repository is gated or private and no valid token was sent; the hub
        cannot be reached; the repository has no safetensors weights; the cache cannot be written.
    """
    text = os.fspath(spec)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"{path}: is a file, expected a model folder or a hub id (owner/name[@revision])")
        return path.resolve()
    hub_id = parse_hub_id(text)
    if hub_id is None:
        raise CheckpointError(f"{text}: no such folder, and not a hub id (owner/name[@revision]); check the path")
    if fetch not in FETCH_MODES:
        raise UsageError(f"fetch={fetch!r}: expected one of {', '.join(FETCH_MODES)}")
    cache = hub_cache_dir(cache_dir)
    snapshot = cached_snapshot(hub_id, cache)
    if snapshot is None and fetch == "partial":
        from awm_jax.io.hub_gguf import cached_gguf
        from awm_jax.io.hub_partial import cached_partial, partial_folder

        commit = hub_id.revision if _COMMIT.fullmatch(hub_id.revision) else _read_ref(cache, hub_id)
        storage = _storage(cache, hub_id.repo_id)
        if commit and hub_id.gguf is None:
            snapshot = cached_partial(storage, commit)
        if commit and snapshot is None and (hub_id.gguf is not None or not (partial_folder(storage, commit) / "config.json").is_file()):
            snapshot = cached_gguf(partial_folder(storage, commit), hub_id.gguf, partial=True)
    if snapshot is not None:
        _REQUESTED[str(snapshot)] = hub_id.revision
        return snapshot
    if _offline():
        raise CheckpointError(
            f"{hub_id}: not (completely) in the hub cache {cache} and HF_HUB_OFFLINE is set; fetch it first with "
            f"`python -m awm_jax.download {hub_id}` on a machine with network access, or unset HF_HUB_OFFLINE"
        )
    if not download:
        raise CheckpointError(
            f"{hub_id}: not (completely) in the hub cache {cache}; fetch it with `python -m awm_jax.download {hub_id}`"
        )
    endpoint = _endpoint()
    watch = Watch(NetworkLimits.from_environment(), str(hub_id))
    with hub_errors(hub_id, endpoint, cache, watch), watch, _hub_warnings_muted():
        track_hub_client()
        snapshot = _download_with_retries(hub_id, cache, endpoint, watch, fetch)
    _REQUESTED[str(snapshot)] = hub_id.revision
    return snapshot


def requested_revision(snapshot: str | os.PathLike) -> str | None:
    """The revision a snapshot folder was asked for by :func:`resolve_model` in this process, if it was."""
    return _REQUESTED.get(str(snapshot))


@contextmanager
def _hub_warnings_muted():
    """huggingface_hub logs retries ("Trying to resume download...") to stderr; the failure, if
    any, is reported as one line instead, so its warnings are muted for the download."""
    import logging

    logger = logging.getLogger("huggingface_hub")
    level = logger.level
    logger.setLevel(max(logging.ERROR, level))
    try:
        yield
    finally:
        logger.setLevel(level)


def _download_with_retries(hub_id: HubId, cache: Path, endpoint: str | None, watch: Watch, fetch: str) -> Path:
    """:func:`_download`, retried after a transient failure with exponential backoff (1, 2, 4... s)
    while the model's deadline leaves time for it."""
    for attempt in range(watch.limits.retries + 1):
        try:
            return _download(hub_id, cache, endpoint, watch, fetch)
        except CheckpointError:
            raise
        except Exception as e:
            wait = min(2.0**attempt, 8.0)
            if attempt == watch.limits.retries or not transient(e) or watch.left_s() <= wait:
                raise
            watch.sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover


def _download(hub_id: HubId, cache: Path, endpoint: str | None, watch: Watch, fetch: str) -> Path:
    """Fetches the needed files of one commit into the cache and returns its snapshot folder
    (with ``fetch="partial"``: the small files, and the shards' headers into its partial folder)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, library_name="awm_jax", library_version=__version__).model_info(
        hub_id.repo_id, revision=hub_id.revision, files_metadata=False, timeout=watch.limits.timeout_s
    )
    commit = info.sha or ""
    if not _COMMIT.fullmatch(commit):
        raise CheckpointError(
            f"{hub_id}: the hub answered without a commit id; check that HF_ENDPOINT points to a Hugging Face Hub"
        )
    files = [s.rfilename for s in info.siblings or []]
    storage = _storage(cache, hub_id.repo_id)
    gguf_files = None
    model_weights = INDEX_FILE in files or SINGLE_FILE in files
    if hub_id.gguf is None and not model_weights and ADAPTER_FILES[0] in files:
        return _download_adapter(hub_id, storage, commit, files, cache, endpoint, watch)
    if hub_id.gguf is not None or not model_weights:
        from awm_jax.io.hub_gguf import choose_files, download_gguf

        gguf_files = choose_files(str(hub_id), files, hub_id.gguf)
    if gguf_files:
        first = download_gguf(hub_id, storage, commit, gguf_files, endpoint, watch, fetch, cache)
        _write_ref(storage, hub_id, commit)
        return first
    small, weights = select_files(hub_id.repo_id, files)
    fetched = [_fetch_small(hub_id.repo_id, name, commit, cache, endpoint, watch) for name in small]
    if weights == INDEX_FILE:
        index = _fetch_small(hub_id.repo_id, INDEX_FILE, commit, cache, endpoint, watch)
        fetched.append(index)
        shards = _index_shards(hub_id.repo_id, index, files)
    else:
        shards = [SINGLE_FILE]
    if fetch == "partial":
        from awm_jax.io.hub_partial import download_partial

        folder = download_partial(hub_id, storage, commit, fetched, shards, endpoint, watch)
    else:
        for shard in shards:
            _fetch_resumable(hub_id.repo_id, shard, commit, cache, endpoint, watch)
    _write_ref(storage, hub_id, commit)
    if fetch == "partial":
        return folder
    snapshot = storage / "snapshots" / commit
    if not _complete_snapshot(snapshot):
        raise CheckpointError(f"{hub_id}: the download finished but {snapshot} is incomplete; run the command again")
    return snapshot


def _download_adapter(hub_id: HubId, storage: Path, commit: str, files: list[str], cache: Path,
                      endpoint: str | None, watch: Watch) -> Path:
    """Fetches a LoRA adapter repository (:data:`ADAPTER_FILES` whole, and its tokenizer files) into
    its snapshot; its base is resolved when the adapter is opened (:mod:`awm_jax.io.adapters`)."""
    if ADAPTER_FILES[1] not in files:
        raise CheckpointError(
            f"{hub_id}: an adapter repository ({ADAPTER_FILES[0]}) without {ADAPTER_FILES[1]} (pickle adapter weights "
            "are not loaded); use a revision with safetensors adapter weights"
        )
    wanted = [*ADAPTER_FILES, *(f for f in TOKENIZER_FILES if f in files)]
    for name in wanted:
        _fetch_small(hub_id.repo_id, name, commit, cache, endpoint, watch)
    _write_ref(storage, hub_id, commit)
    return storage / "snapshots" / commit


def _write_ref(storage: Path, hub_id: HubId, commit: str) -> None:
    """Records the commit a branch or tag pointed to (``refs/<revision>``), as huggingface_hub does."""
    if hub_id.revision != commit:
        ref = storage / "refs" / hub_id.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(ref.name + ".tmp")
        tmp.write_text(commit, encoding="utf-8")
        os.replace(tmp, ref)


def _fetch_small(repo_id: str, name: str, commit: str, cache: Path, endpoint: str | None, watch: Watch) -> Path:
    from huggingface_hub import hf_hub_download

    watch.check()
    return Path(
        hf_hub_download(
            repo_id, name, revision=commit, cache_dir=cache, endpoint=endpoint,
            library_name="awm_jax", library_version=__version__, etag_timeout=watch.limits.timeout_s,
        )
    )


def _fetch_resumable(repo_id: str, name: str, commit: str, cache: Path, endpoint: str | None, watch: Watch) -> None:
    """Fetches one weight file into ``blobs/`` with Range resume, then links it into the snapshot."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    storage = _storage(cache, repo_id)
    if (storage / "snapshots" / commit / name).is_file():
        return
    url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, library_name="awm_jax", library_version=__version__, endpoint=endpoint,
                                timeout=watch.limits.timeout_s)
    if not meta.etag or not _ETAG.fullmatch(meta.etag) or not meta.commit_hash:
        raise CheckpointError(
            f"{repo_id}: the answer for {name} has no usable ETag or X-Repo-Commit header; check that HF_ENDPOINT "
            "points to a Hugging Face Hub (a proxy may be rewriting headers)"
        )
    blob = storage / "blobs" / meta.etag
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = cache / ".locks" / storage.name / f"{meta.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        headers = build_hf_headers(library_name="awm_jax", library_version=__version__)
        if urlsplit(meta.location)[:2] != urlsplit(url)[:2]:
            headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
        with WeakFileLock(lock):
            if not blob.is_file():
                from awm_jax.io.hub_partial import complete_blob

                complete_blob(storage, name, commit, url, meta, blob, watch)
            if not blob.is_file():
                partial = blob.with_name(blob.name + ".incomplete")
                with open(partial, "ab") as f:
                    have = f.tell()
                    if meta.size is not None and have > meta.size:
                        f.truncate(0)
                        have = 0
                    with watch.transfer(None if meta.size is None else meta.size - have):
                        http_get(meta.location, f, resume_size=have, headers=headers, expected_size=meta.size,
                                 displayed_filename=name)
                os.replace(partial, blob)
    # The blob is in place: huggingface_hub only links snapshots/<commit>/<name> to it.
    _fetch_small(repo_id, name, commit, cache, endpoint, watch)

