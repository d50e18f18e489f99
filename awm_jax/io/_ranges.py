"""HTTP Range reads of hub files: a file's header, and byte ranges written into a sparse file,
concurrently, each request retried and under the download's :class:`~awm_jax.io._network.Watch`.

Every request goes through huggingface_hub's HTTP client (proxies, certificates and the token
the user configured), whose sockets the watch tracks (:func:`~awm_jax.io._network.track_hub_client`):
connect and read timeouts, the floor rate and the model's total deadline apply to each range as
to a whole-file download. A range is asked for at the file's resolved address (the hub's
redirect to its content store, asked once per file); the answer must be ``206`` with a
``Content-Range`` naming exactly the bytes asked for and the file's size, else the range is
refused (a server that ignores ``Range`` would send the whole file).
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import struct
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from urllib.parse import urlsplit

from awm_jax._version import __version__
from awm_jax.errors import CheckpointError
from awm_jax.io._hub_errors import transient
from awm_jax.io._network import Watch
from awm_jax.io.safetensors import MAX_HEADER_BYTES
from awm_jax.io.sparse import SparseFile, write_range

__all__ = ["CHUNK_BYTES", "MERGE_GAP_BYTES", "WORKERS", "RemoteFile", "remote_file", "read_range", "fetch_header", "fill"]

#: Largest single range request (a failed request loses at most this much).
CHUNK_BYTES = 16 * 1024 * 1024
#: Two needed ranges closer than this are fetched as one (fewer requests, few extra bytes).
MERGE_GAP_BYTES = 16 * 1024
#: Concurrent range requests.
WORKERS = 8
#: First request for a header: most safetensors headers fit (the rest of it is kept as data).
HEADER_GUESS = 64 * 1024

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclasses.dataclass(frozen=True)
class RemoteFile:
    """One file of a repository at one commit, resolved.

    Attributes:
      repo_id: the repository.
      name: the file's path in it.
      commit: the commit.
      etag: the hub's content hash of the file (SHA-256 for weight files).
      size: bytes.
      location: the address its bytes are read from (the content store's, after the redirect).
      url: the hub's address of the file.
    """

    repo_id: str
    name: str
    commit: str
    etag: str
    size: int
    location: str
    url: str


def remote_file(repo_id: str, name: str, commit: str, endpoint: str | None, watch: Watch) -> RemoteFile:
    """Asks the hub where a file is, its size and content hash (one ``HEAD`` request)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    watch.check()
    url = hf_hub_url(repo_id, name, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, library_name="awm_jax", library_version=__version__, endpoint=endpoint,
                                timeout=watch.limits.timeout_s)
    if not meta.etag or meta.size is None or not meta.location:
        raise CheckpointError(
            f"{repo_id}: the answer for {name} has no usable ETag or size header; check that HF_ENDPOINT points to a "
            "Hugging Face Hub (a proxy may be rewriting headers), or use --download full"
        )
    return RemoteFile(repo_id, name, commit, meta.etag, int(meta.size), meta.location, url)


def _headers(remote: RemoteFile, start: int, end: int) -> dict:
    from huggingface_hub.utils import build_hf_headers

    headers = build_hf_headers(library_name="awm_jax", library_version=__version__)
    if urlsplit(remote.location)[:2] != urlsplit(remote.url)[:2]:
        headers.pop("authorization", None)  # a signed content-store address: the token stays with the hub
    headers["Range"] = f"bytes={start}-{end - 1}"
    headers["Accept-Encoding"] = "identity"
    return headers


def _get(remote: RemoteFile, start: int, end: int, watch: Watch) -> bytes:
    """One range request, checked: exactly bytes ``[start, end)`` of the file."""
    from huggingface_hub.utils import get_session, hf_raise_for_status

    watch.check()
    timeout = watch.limits.timeout_s
    response = get_session().get(remote.location, headers=_headers(remote, start, end), timeout=timeout,
                                 follow_redirects=True)
    try:
        hf_raise_for_status(response)  # huggingface_hub's errors: one line each (awm_jax.io._hub_errors)
        if response.status_code != 206:
            raise CheckpointError(
                f"{remote.repo_id}: the server answered {response.status_code} to a Range request for {remote.name}, "
                "not 206 (it does not serve parts of files); use --download full"
            )
        match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", "").strip())
        body = response.content
        if (match is None or (int(match[1]), int(match[2]) + 1) != (start, end)
                or match[3] not in ("*", str(remote.size)) or len(body) != end - start):
            raise CheckpointError(
                f"{remote.repo_id}: the answer to a Range request for bytes {start}-{end - 1} of {remote.name} "
                f"is not those bytes (Content-Range {response.headers.get('Content-Range')!r}, {len(body)} bytes); "
                "a proxy may be rewriting answers: use --download full"
            )
        return body
    finally:
        response.close()


def _get_retried(remote: RemoteFile, start: int, end: int, watch: Watch) -> bytes:
    """:func:`_get`, retried after a transient failure with backoff while the deadline allows."""
    for attempt in range(watch.limits.retries + 1):
        try:
            return _get(remote, start, end, watch)
        except CheckpointError:
            raise
        except Exception as e:
            delay = min(2.0**attempt, 8.0)
            if attempt == watch.limits.retries or not transient(e) or watch.left_s() <= delay:
                raise
            watch.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def read_range(remote: RemoteFile, start: int, end: int, watch: Watch) -> bytes:
    """Bytes ``[start, end)`` of a remote file: one checked Range request, retried after a transient failure."""
    return _get_retried(remote, start, end, watch)


def fetch_header(remote: RemoteFile, watch: Watch) -> bytes:
    """The first bytes of a remote safetensors file, at least its 8-byte length and JSON header
    (one request of :data:`HEADER_GUESS` bytes, a second when the header is longer).

    Raises:
      CheckpointError: the file is too short or its header length is absurd.
    """
    first = _get_retried(remote, 0, min(remote.size, HEADER_GUESS), watch) if remote.size >= 8 else b""
    if len(first) < 8:
        raise CheckpointError(f"{remote.repo_id}: {remote.name} is {remote.size} bytes, too short to be safetensors")
    (n,) = struct.unpack("<Q", first[:8])
    if n > MAX_HEADER_BYTES or 8 + n > remote.size:
        raise CheckpointError(
            f"{remote.repo_id}: {remote.name} claims a {n}-byte header (file {remote.size} bytes, limit "
            f"{MAX_HEADER_BYTES}); it is corrupt or not safetensors: pick another revision"
        )
    if 8 + n <= len(first):
        return first
    return first + _get_retried(remote, len(first), 8 + n, watch)


def _plan(sparse: SparseFile, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The missing parts of ``spans``, merged across small gaps, cut into requests of at most
    :data:`CHUNK_BYTES`."""
    gaps = sorted(g for s, e in spans for g in sparse.missing(s, e))
    merged: list[list[int]] = []
    for s, e in gaps:
        if merged and s - merged[-1][1] <= MERGE_GAP_BYTES:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    return [(at, min(at + CHUNK_BYTES, e)) for s, e in merged for at in range(s, e, CHUNK_BYTES)]


def fill(jobs: list[tuple[SparseFile, RemoteFile, list[tuple[int, int]]]], watch: Watch,
         workers: int = WORKERS) -> int:
    """Fetches the missing bytes of ``spans`` into each sparse file, concurrently.

    Each finished request is written, fsync-ed and added to the file's range record at once, so
    an interrupted fill keeps every range already fetched (the next run asks only for the rest).

    Args:
      jobs: per sparse file, the remote file it is part of and the byte spans wanted.
      watch: the download's deadlines (extended by the bytes to fetch).
      workers: concurrent requests.

    Returns:
      The bytes fetched.
    """
    requests = [(i, s, e) for i, (sparse, _, spans) in enumerate(jobs) for s, e in _plan(sparse, spans)]
    if not requests:
        return 0
    total = sum(e - s for _, s, e in requests)
    records = [sparse for sparse, _, _ in jobs]
    lock = threading.Lock()

    def one(i: int, start: int, end: int) -> None:
        sparse, remote, _ = jobs[i]
        data = _get_retried(remote, start, end, watch)
        added = write_range(Path(sparse.path), start, data)
        with lock:
            records[i] = records[i].with_ranges([added])
            records[i].save()

    with watch.transfer(total), ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="awm-range") as pool:
        futures = [pool.submit(contextvars.copy_context().run, one, i, s, e) for i, s, e in requests]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()
    return total
