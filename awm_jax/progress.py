"""Progress of long work: the library names its stages, a command line shows them.

Library code wraps a long stage in ``with stage("fingerprint of base", total=32) as s:`` and
calls ``s.advance(n)`` as it goes. Nothing is shown, and tqdm is not imported, unless the
caller turned the display on with :func:`shown` (``compare`` does, without ``--quiet`` or
``--no-progress``): then each stage is a tqdm bar on stderr, erased when the stage ends, and
only when stderr is a terminal (never on stdout, which may carry ``--json -``). The switch
is a context variable, so stages reported from other threads (the audit's workers, which have
their own bars) show nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import sys
from collections.abc import Iterator

__all__ = ["Stage", "shown", "stage"]

_SHOWN: contextvars.ContextVar[bool] = contextvars.ContextVar("awm_jax_progress_shown", default=False)


class Stage:
    """A stage being reported (:func:`stage`)."""

    def __init__(self, bar=None):
        self._bar = bar

    def advance(self, n: int = 1) -> None:
        """``n`` more units of the stage are done."""
        if self._bar is not None:
            self._bar.update(n)


@contextlib.contextmanager
def stage(description: str, total: int | None = None, unit: str = "layer") -> Iterator[Stage]:
    """Reports a stage for the duration of the block.

    Args:
      description: what is being done, for people (``"fingerprint of base"``).
      total: units of work (a bar with a count and a rate), or ``None`` (the description and
        the time it started).
      unit: what one unit is.
    """
    if not _SHOWN.get():
        yield Stage()
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True,
               mininterval=0.5, bar_format=None if total else "{desc} ...")
    try:
        yield Stage(bar)
    finally:
        bar.close()


@contextlib.contextmanager
def shown(enabled: bool = True) -> Iterator[bool]:
    """Shows the stages reported in this block (in this thread) on stderr, when ``enabled`` and
    stderr is a terminal; yields whether they are shown."""
    on = bool(enabled) and sys.stderr.isatty()
    token = _SHOWN.set(on)
    try:
        yield on
    finally:
        _SHOWN.reset(token)
