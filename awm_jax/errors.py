"""User-facing errors and the exit codes the command line maps them to.

Every problem a user can cause (a wrong path, a corrupt file, an unknown layout, weights full
of NaN) raises a subclass of :class:`AWMError` whose message is one line naming the file and
the problem and saying what to do. The CLI prints that line to stderr and exits with the
class's ``exit_code``; it never shows a traceback for these.

Exit codes:
  0  success
  1  internal error (a bug: please report it, with the traceback shown)
  2  usage error (bad arguments, unknown option value, device not available, --allow-pickle
     without PyTorch installed)
  3  checkpoint error (missing, unreadable, truncated or corrupt files)
  4  layout error (architecture not recognised, tensors missing or of the wrong shape)
  5  vocabulary error (no tokenizer, unreadable tokenizer, no shared tokens)
  6  numerical error (NaN/Inf/all-zero weights, degenerate alignment)
  7  cache error (the fingerprint cache could not be written or read)
  130  interrupted (Ctrl-C)

docs/errors.md lists, for each kind of bad input the tests build, the message and exit code.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import NoReturn

__all__ = [
    "AWMError",
    "UsageError",
    "CheckpointError",
    "LayoutError",
    "VocabularyError",
    "NumericalError",
    "CacheError",
    "OneLineArgumentParser",
    "run_cli",
    "warn",
]


def warn(message: str) -> None:
    """One ``awm_jax: warning: ...`` line on stderr (a problem awm_jax handled: work redone, a cache
    bypassed), whitespace folded so it stays one line."""
    print(f"awm_jax: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


class AWMError(Exception):
    """Base class of errors caused by the input, reported without a traceback."""

    exit_code = 1

    def __init__(self, message: str):
        # One line: newlines in the message would break "one clear line on stderr".
        super().__init__(" ".join(str(message).split()))


class UsageError(AWMError):
    """Bad arguments: an unknown option value, a device that is not there, pickles without PyTorch."""

    exit_code = 2


class CheckpointError(AWMError):
    """A checkpoint file is missing, unreadable, truncated or malformed."""

    exit_code = 3


class LayoutError(AWMError):
    """The tensors do not match any known architecture layout, or have the wrong shape."""

    exit_code = 4


class VocabularyError(AWMError):
    """The vocabulary is missing, unreadable, or the two models share no tokens."""

    exit_code = 5


class NumericalError(AWMError):
    """Weights contain NaN/Inf or are all zero; the scores would be meaningless."""

    exit_code = 6


class CacheError(AWMError):
    """The fingerprint cache could not be written (disk full, permissions) or read."""

    exit_code = 7


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose usage errors are one stderr line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(UsageError.exit_code, f"awm_jax: error: {message}; see {self.prog} --help\n")


def run_cli(run: Callable[[], int], interrupted: str = "interrupted") -> int:
    """Runs a command's body: an :class:`AWMError` becomes one stderr line and its exit code,
    Ctrl-C exits 130 with ``awm_jax: <interrupted>`` (at once, whatever the process is doing:
    :mod:`awm_jax.cli._interrupt`), a reader that went away (``| head``) exits 141 quietly.
    Anything else is a bug and keeps its traceback. The process allocator is tuned first
    (:func:`awm_jax.io.memory.tune_allocator`)."""
    from awm_jax.cli._interrupt import exit_on_interrupt
    from awm_jax.io.memory import tune_allocator

    with exit_on_interrupt(interrupted):
        tune_allocator()
        try:
            return run()
        except AWMError as e:
            print(f"awm_jax: error: {e}", file=sys.stderr)
            return e.exit_code
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except KeyboardInterrupt:  # raised by hand, or outside the main thread
            print(f"awm_jax: {interrupted}", file=sys.stderr)
            return 130
