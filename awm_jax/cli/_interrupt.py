"""Ctrl-C for the command lines: one line on stderr and exit code 130, at once, in any phase.

Python turns SIGINT into a ``KeyboardInterrupt`` raised wherever the main thread happens to be:
inside an import (a half-initialised module, then an ``ImportError``), inside a garbage-collector
callback of XLA (printed as "Exception ignored" and lost: the run goes on and exits 0), inside
native code that does not expect it (SIGSEGV, SIGABRT), or only after a long native call returns.
None of that is a clean interrupt.

While :func:`exit_on_interrupt` is active, SIGINT instead ends the process: the temporary files
of atomic writes in progress are removed (:func:`awm_jax.io.atomic.discard_pending`), buffered
standard output is flushed, ``awm_jax: <message>`` is written to stderr and the process exits
with 130 through ``os._exit``, skipping every other clean-up. That is as safe as ``SIGKILL``,
which every writer of awm_jax already survives: outputs are replaced atomically, the audit's
progress file drops a torn last line, the fingerprint cache publishes whole entries, and an
interrupted hub download resumes from its ``.incomplete`` file.

The signal is seen twice: by a Python handler (runs between bytecodes of the main thread) and
through :func:`signal.set_wakeup_fd` by a watcher thread, which reacts even while the main thread
is blocked in native code (an XLA compilation, a BLAS call, a network read). Whichever comes
first exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from typing import NoReturn

from awm_jax.io.atomic import discard_pending

__all__ = ["exit_on_interrupt", "exit_process", "install_for_process"]

_lock = threading.Lock()
_exiting = threading.Lock()
_messages: list[str] = []  # stack of messages; the innermost (last) is printed


def _flush_stdout(timeout: float = 0.5) -> None:
    """Flushes Python's stdout buffer, giving up after ``timeout`` (the main thread may hold it)."""
    stream = sys.stdout
    if stream is None:
        return

    def flush() -> None:
        with contextlib.suppress(Exception):
            stream.flush()

    if threading.current_thread() is threading.main_thread():
        flush()  # the handler runs between bytecodes: no write of this thread is half done
        return
    helper = threading.Thread(target=flush, daemon=True, name="awm-interrupt-flush")
    helper.start()
    helper.join(timeout)


def _exit_now() -> None:
    """Removes pending temporary files, prints the interrupt line, exits 130.

    Returns at once when the other path (handler or watcher) is already exiting: the main thread
    then goes on for the few milliseconds that takes, so that it never sits on a lock (an import,
    a buffer) the exiting thread needs.
    """
    if not _exiting.acquire(blocking=False):
        return
    # Nothing here imports or waits on a lock without a timeout: the main thread may be stopped
    # anywhere (inside an import, holding a lock), and the watcher must still get through.
    with contextlib.suppress(Exception):
        discard_pending()
    _flush_stdout()
    message = _messages[-1] if _messages else "interrupted"
    prefix = "\n" if _isatty(2) else ""
    with contextlib.suppress(OSError):
        os.write(2, f"{prefix}awm_jax: {message}\n".encode())
    os._exit(130)


def _isatty(fd: int) -> bool:
    try:
        return os.isatty(fd)
    except OSError:
        return False


def _on_signal(signum, frame) -> None:
    _exit_now()


def _watch(reader: socket.socket) -> None:
    while True:
        try:
            data = reader.recv(64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGINT in data:
            _exit_now()


class _Installed:
    """What :func:`_install` replaced, to put back."""

    def __init__(self) -> None:
        self.old_handler = signal.signal(signal.SIGINT, _on_signal)
        self.reader = self.writer = None
        self.old_fd = -1
        try:
            self.reader, self.writer = socket.socketpair()
            self.writer.setblocking(False)
            self.old_fd = signal.set_wakeup_fd(self.writer.fileno(), warn_on_full_buffer=False)
        except (OSError, ValueError):  # no socket pair here: the Python-level handler alone
            self._close()
            return
        threading.Thread(target=_watch, args=(self.reader,), daemon=True, name="awm-interrupt").start()

    def _close(self) -> None:
        for sock in (self.writer, self.reader):
            if sock is not None:
                sock.close()  # the watcher's recv returns b"" and it ends

    def restore(self) -> None:
        signal.signal(signal.SIGINT, self.old_handler)
        if self.writer is not None:
            signal.set_wakeup_fd(self.old_fd)
        self._close()


_installed: _Installed | None = None


def install_for_process(message: str = "interrupted") -> None:
    """Installs the handler for the rest of the process (the ``python -m`` entry points).

    Unlike :func:`exit_on_interrupt` it is never removed, so Ctrl-C during the interpreter's own
    shutdown (JAX's exit handlers) is handled too. Only the main thread can install it; elsewhere
    nothing happens.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        return
    with _lock:
        if _installed is None:
            _installed = _Installed()
        if not _messages:
            _messages.append(message)


@contextlib.contextmanager
def exit_on_interrupt(message: str = "interrupted") -> Iterator[None]:
    """While active, Ctrl-C prints ``awm_jax: <message>`` and exits 130 at once (see the module).

    Nested uses print the innermost message. The previous SIGINT handling is restored on exit,
    unless :func:`install_for_process` installed it for good. Outside the main thread (where
    Python cannot install signal handlers) it changes nothing.
    """
    global _installed
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    owner = False
    with _lock:
        if _installed is None:
            _installed = _Installed()
            owner = True
        _messages.append(message)
    try:
        yield
    finally:
        with _lock:
            _messages.pop()
            if owner:
                _installed.restore()
                _installed = None


def exit_process(code: int) -> NoReturn:
    """Ends a command-line process with ``code`` once its command has returned.

    Standard output and error are flushed and the ``atexit`` handlers run (JAX's among them) while
    Ctrl-C is still handled; then the process exits with ``os._exit``, skipping the interpreter's
    finalisation (the commands leave no worker thread running when they return). Python removes its SIGINT handler early
    in that finalisation, so a Ctrl-C during the seconds XLA's native destructors can take used
    to kill a run that had completed and written everything (exit -2, no message).
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except BrokenPipeError:  # the reader went away (| head): as run_cli does, exit 141 quietly
            code = code or 141
        except (OSError, ValueError):
            pass
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            if stream is not None:
                stream.flush()
    os._exit(code)
