"""Block checksums of the cached Gram files: XXH3-128 of every ``BLOCK_BYTES`` block.

A Gram file is checksummed as it is written (:class:`BlockDigest`, fed chunk by chunk by the
writer thread) and verified when it is opened (:func:`file_digests`, blocks hashed on several
threads). Both cut the file at the same block boundaries, so they
give the same list of digests; per-block digests let verification use every core and stop at
the first damaged block.

The checksums guard the cache's own files against damage (a flipped bit, a truncated or
swapped file), which a 128-bit hash of good dispersion detects as surely as a cryptographic one
at a small fraction of the cost (``python -m benchmarks.cache_verify`` measures it against
SHA-256). What an adversary controls, the weights, is still identified by SHA-256 (the content
key, ``grams.model_grams``); anyone able to rewrite these files could rewrite their recorded
checksums as well.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import xxhash

__all__ = ["BLOCK_BYTES", "DIGEST_CHARS", "DIGEST_NAME", "BlockDigest", "block_count", "file_digests", "verify_threads"]

#: Bytes per checksummed block (the last block of a file may be shorter).
BLOCK_BYTES = 32 * 1024 * 1024
#: Hex characters of one block digest (XXH3-128).
DIGEST_CHARS = 32
#: The name ``meta.json`` records the block digests under.
DIGEST_NAME = "xxh3_128"


def block_count(size: int) -> int:
    """Blocks of a file of ``size`` bytes."""
    return -(-size // BLOCK_BYTES)


def verify_threads() -> int:
    """Threads hashing blocks at once (each holds one block in memory)."""
    return max(1, min(8, os.cpu_count() or 1))


class BlockDigest:
    """XXH3-128 of each ``BLOCK_BYTES`` block of a byte stream fed in pieces of any size."""

    def __init__(self) -> None:
        self._done: list[str] = []
        self._hash = xxhash.xxh3_128()
        self._filled = 0

    def update(self, data) -> None:
        """Adds the next bytes of the stream (any C-contiguous buffer)."""
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), BLOCK_BYTES - self._filled)
            self._hash.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK_BYTES:
                self._done.append(self._hash.hexdigest())
                self._hash, self._filled = xxhash.xxh3_128(), 0

    def hexdigests(self) -> list[str]:
        """The digests of every block so far, the last (partial) block included."""
        return self._done + ([self._hash.hexdigest()] if self._filled else [])


_buffers = threading.local()


def _block(fd: int, index: int, size: int) -> str:
    """The digest of one block, read into this thread's reused buffer (a fresh allocation per
    block would cost more in page faults than the hash)."""
    offset = index * BLOCK_BYTES
    want = min(BLOCK_BYTES, size - offset)
    buf = getattr(_buffers, "buf", None)
    if buf is None or len(buf) < BLOCK_BYTES:
        buf = _buffers.buf = bytearray(BLOCK_BYTES)
    view = memoryview(buf)[:want]
    got = 0
    while got < want:
        step = os.preadv(fd, [view[got:]], offset + got)
        if step == 0:  # shorter than its size said: the file shrank while being read
            return ""
        got += step
    return xxhash.xxh3_128_hexdigest(view)


def file_digests(fd: int, size: int, expected: list[str] | None = None) -> list[str]:
    """The block digests of the first ``size`` bytes of an open file, hashed on several threads.

    Args:
      fd: a file descriptor open for reading (positioned reads: its offset is not used).
      size: bytes to hash.
      expected: when given, hashing stops at the first block whose digest differs from it.

    Returns:
      One digest per block (up to and including the first mismatch when ``expected`` is given);
      ``""`` for a block the file was too short to give.

    Raises:
      OSError: the file cannot be read.
    """
    count = block_count(size)
    out: list[str] = []
    with ThreadPoolExecutor(max_workers=min(verify_threads(), max(count, 1)), thread_name_prefix="awm-verify") as pool:
        try:
            for i, digest in enumerate(pool.map(lambda i: _block(fd, i, size), range(count))):
                out.append(digest)
                if expected is not None and (i >= len(expected) or digest != expected[i]):
                    break
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return out
