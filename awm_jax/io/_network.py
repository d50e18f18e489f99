"""Deadlines for the hub downloads: no request may hang, however the server misbehaves.

Four limits, read from the environment at each download (:meth:`NetworkLimits.from_environment`):

``AWM_HUB_TIMEOUT`` (seconds; default huggingface_hub's ``HF_HUB_DOWNLOAD_TIMEOUT``, 10)
    connect timeout and read timeout of every request: a server that accepts the connection and
    then sends nothing is given up after this long. Passed to huggingface_hub where it takes a
    timeout, and enforced on every socket read and connect whatever the caller asked for.
``AWM_HUB_MIN_RATE`` (bytes per second; default 50000)
    the slowest transfer of a weight file accepted: a download that receives fewer than
    ``AWM_HUB_MIN_RATE * AWM_HUB_STALL`` bytes in any ``AWM_HUB_STALL`` seconds has stalled (a
    server trickling one byte a second never trips a read timeout).
``AWM_HUB_STALL`` (seconds; default 60)
    the window over which that rate is measured.
``AWM_HUB_DEADLINE`` (seconds; default 300)
    the time allowed for one model's metadata and small files (config, tokenizer, index); each
    weight file adds ``AWM_HUB_TIMEOUT + size / AWM_HUB_MIN_RATE``. Past the total, the model's
    download is aborted, wherever it is (a server sending headers one byte a second included).
``AWM_HUB_RETRIES`` (default 2)
    how many times a model's download is retried, with exponential backoff from 1 s, after a
    timeout, a broken connection or a 5xx/429 answer, within the same total deadline.

A :class:`Watch` holds one model's deadlines. Its watchdog thread checks them four times a
second; when one passes it shuts down the sockets the download is reading from, so the
blocked read returns at once, and refuses every new connection or read of that download with
:class:`DeadlineExceeded`. Sockets are tracked by wrapping the network backend of the
``httpx2`` client huggingface_hub uses (:func:`track_hub_client`); where the client offers no
such backend, the timeouts and the deadline checks between reads still apply.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

from awm_jax.errors import UsageError

__all__ = ["NetworkLimits", "Watch", "DeadlineExceeded", "current_watch", "track_hub_client"]

_CURRENT: contextvars.ContextVar[Watch | None] = contextvars.ContextVar("awm_jax_hub_watch", default=None)


class DeadlineExceeded(Exception):
    """A download passed one of its deadlines; the message says which."""


@dataclasses.dataclass(frozen=True)
class NetworkLimits:
    """The hub download limits (see the module docstring for each variable).

    Attributes:
      timeout_s: connect and read timeout of every request (``AWM_HUB_TIMEOUT``).
      min_rate: slowest accepted weight transfer, bytes/s (``AWM_HUB_MIN_RATE``).
      stall_s: window of the rate check (``AWM_HUB_STALL``).
      deadline_s: time for a model's metadata and small files (``AWM_HUB_DEADLINE``).
      retries: retries of a model's download after a transient failure (``AWM_HUB_RETRIES``).
    """

    timeout_s: float = 10.0
    min_rate: float = 50_000.0
    stall_s: float = 60.0
    deadline_s: float = 300.0
    retries: int = 2

    @classmethod
    def from_environment(cls) -> NetworkLimits:
        """The limits from ``AWM_HUB_*`` (defaults where unset).

        Raises:
          UsageError: a variable is set but not a positive finite number (``AWM_HUB_RETRIES``: a
            non-negative integer).
        """
        default_timeout = cls.timeout_s
        try:
            from huggingface_hub import constants

            default_timeout = float(constants.HF_HUB_DOWNLOAD_TIMEOUT) or default_timeout
        except (ImportError, AttributeError, TypeError, ValueError):
            pass
        return cls(
            timeout_s=_positive("AWM_HUB_TIMEOUT", default_timeout),
            min_rate=_positive("AWM_HUB_MIN_RATE", cls.min_rate),
            stall_s=_positive("AWM_HUB_STALL", cls.stall_s),
            deadline_s=_positive("AWM_HUB_DEADLINE", cls.deadline_s),
            retries=int(_positive("AWM_HUB_RETRIES", cls.retries, integer=True)),
        )


def _positive(name: str, default: float, integer: bool = False) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        value = math.nan
    if integer and not (0 <= value <= 100):
        raise UsageError(f"{name}={text!r}: expected a whole number of retries in [0, 100]; fix or unset it")
    if not integer and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{name}={text!r}: expected a positive number; fix or unset it")
    return value


def current_watch() -> Watch | None:
    """The :class:`Watch` active in this thread (``with watch:``), if any."""
    return _CURRENT.get()


class Watch:
    """The deadlines of one model's download, with a watchdog thread enforcing them.

    Use as a context manager around the download; it is then the :func:`current_watch` of the
    thread, which the tracked network backend consults on every connect and read.

    Args:
      limits: the limits.
      what: the download, for messages (``owner/name``).
    """

    def __init__(self, limits: NetworkLimits, what: str):
        self.limits = limits
        self.what = what
        self.budget_s = limits.deadline_s
        self.expired: str | None = None
        self._start = time.monotonic()
        self._received = 0
        self._transfer: tuple[float, int] | None = None  # (start, bytes received at start)
        self._samples: deque[tuple[float, int]] = deque()
        self._streams: set[Any] = set()
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._token: contextvars.Token | None = None

    # -- the download's side ----------------------------------------------------------------
    def __enter__(self) -> Watch:
        self._start = time.monotonic()
        self._token = _CURRENT.set(self)
        threading.Thread(target=self._run, daemon=True, name="awm-hub-watchdog").start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None

    def check(self) -> None:
        """Raises :class:`DeadlineExceeded` once a deadline has passed."""
        if self.expired is not None:
            raise DeadlineExceeded(self.expired)

    def sleep(self, seconds: float) -> None:
        """Waits (a retry's backoff), cut short by an expired deadline."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check()
            self._done.wait(min(left, 0.1))
        self.check()

    def left_s(self) -> float:
        """Seconds left before the total deadline."""
        return self.budget_s - (time.monotonic() - self._start)

    @contextlib.contextmanager
    def transfer(self, expected_bytes: int | None) -> Iterator[None]:
        """Around the download of one weight file of ``expected_bytes``: extends the total
        deadline by ``AWM_HUB_TIMEOUT + expected_bytes / AWM_HUB_MIN_RATE`` and checks the rate."""
        self.budget_s += self.limits.timeout_s + (expected_bytes or 0) / self.limits.min_rate
        with self._lock:
            self._transfer = (time.monotonic(), self._received)
            self._samples.clear()
        try:
            yield
        finally:
            with self._lock:
                self._transfer = None

    # -- the tracked sockets' side ----------------------------------------------------------
    def received(self, n: int) -> None:
        with self._lock:
            self._received += n

    @contextlib.contextmanager
    def using(self, stream: Any) -> Iterator[None]:
        """Marks ``stream`` as read or written by this download (aborted if a deadline passes)."""
        self.check()
        with self._lock:
            self._streams.add(stream)
        try:
            yield
        finally:
            with self._lock:
                self._streams.discard(stream)
        self.check()

    # -- the watchdog -----------------------------------------------------------------------
    def _run(self) -> None:
        tick = max(0.02, min(0.25, self.limits.stall_s / 8, self.limits.timeout_s / 8))
        while not self._done.wait(tick):
            reason = self._overdue()
            if reason is not None:
                self._expire(reason)
                return

    def _overdue(self) -> str | None:
        now = time.monotonic()
        if now - self._start > self.budget_s:
            return (f"took longer than the {self.budget_s:.0f} s allowed (AWM_HUB_DEADLINE, plus size / "
                    "AWM_HUB_MIN_RATE per weight file)")
        with self._lock:
            if self._transfer is None:
                return None
            started, base = self._transfer
            self._samples.append((now, self._received))
            window = self.limits.stall_s
            while len(self._samples) > 1 and self._samples[1][0] <= now - window:
                self._samples.popleft()
            if now - started < window:
                return None
            oldest_t, oldest_bytes = self._samples[0]
            got = self._received - oldest_bytes
        if got < self.limits.min_rate * window:
            return (f"stalled: {got} bytes in the last {window:g} s, below the AWM_HUB_MIN_RATE of "
                    f"{self.limits.min_rate:g} bytes/s")
        return None

    def _expire(self, reason: str) -> None:
        self.expired = reason
        with self._lock:
            streams = list(self._streams)
        for stream in streams:
            stream.abort()


# ---- the tracked network backend -----------------------------------------------------------------


def _cap(timeout: float | None, limit: float) -> float:
    return limit if timeout is None else min(timeout, limit)


class _TrackedStream:
    """A network stream whose reads and writes obey the current :class:`Watch`."""

    def __init__(self, inner: Any):
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch = current_watch()
        if watch is None:
            return self._inner.read(max_bytes, timeout)
        with watch.using(self):
            data = self._inner.read(max_bytes, _cap(timeout, watch.limits.timeout_s))
        watch.received(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        watch = current_watch()
        if watch is None:
            return self._inner.write(buffer, timeout)
        with watch.using(self):
            self._inner.write(buffer, _cap(timeout, watch.limits.timeout_s))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        watch = current_watch()
        if watch is not None:
            watch.check()
            timeout = _cap(timeout, watch.limits.timeout_s)
        return _TrackedStream(self._inner.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)

    def abort(self) -> None:
        """Shuts the socket down: a read blocked on it returns at once."""
        sock = self._inner.get_extra_info("socket")
        with contextlib.suppress(OSError, AttributeError):
            sock.shutdown(socket.SHUT_RDWR)


class _TrackedBackend:
    """A network backend whose connections are :class:`_TrackedStream` s."""

    def __init__(self, inner: Any):
        self._inner = inner

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Any = None) -> _TrackedStream:
        watch = current_watch()
        if watch is not None:
            watch.check()
            timeout = _cap(timeout, watch.limits.timeout_s)
        return _TrackedStream(self._inner.connect_tcp(host, port, timeout=timeout, local_address=local_address,
                                                      socket_options=socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None, socket_options: Any = None) -> _TrackedStream:
        return _TrackedStream(self._inner.connect_unix_socket(path, timeout=timeout, socket_options=socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _track(client: Any) -> Any:
    """Wraps the network backend of every connection pool of an ``httpx2.Client``."""
    transports = [getattr(client, "_transport", None), *getattr(client, "_mounts", {}).values()]
    for transport in transports:
        pool = getattr(transport, "_pool", None)
        backend = getattr(pool, "_network_backend", None)
        if backend is not None and not isinstance(backend, _TrackedBackend):
            pool._network_backend = _TrackedBackend(backend)
    return client


def track_hub_client() -> None:
    """Makes huggingface_hub's HTTP client track its sockets for :class:`Watch` (idempotent).

    The client factory in use (huggingface_hub's default or one the application set) is wrapped,
    so proxies and certificates configured there still apply.
    """
    from huggingface_hub import set_client_factory

    try:
        from huggingface_hub.utils import _http

        current = _http._GLOBAL_CLIENT_FACTORY
    except (ImportError, AttributeError):
        return
    if getattr(current, "_awm_tracked", False):
        return

    def factory() -> Any:
        return _track(current())

    factory._awm_tracked = True  # type: ignore[attr-defined]
    set_client_factory(factory)
