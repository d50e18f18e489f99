"""The command lines: argument parsing and output only; the work is done by the library.

``python -m awm_jax COMMAND`` (:mod:`awm_jax.__main__`) and the historical entry points
``python -m awm_jax.compare``, ``python -m awm_jax.audit`` and ``python -m awm_jax.download``
all land in :func:`launch`. Option choices come from :mod:`awm_jax.options`, which imports no
JAX, so ``--help`` is instant.
"""

from __future__ import annotations

import importlib
import os
import sys

__all__ = ["COMMANDS", "launch"]

#: Command name -> module of this package holding its ``main(argv) -> int``.
COMMANDS = {"compare": "compare", "audit": "audit", "download": "download",
            "scan": "scan",
            "catalogue": "catalogue"}


def _scrub_path() -> None:
    """``python -m`` puts the current folder first on the import path: run from inside a model
    folder, a ``json.py`` there would shadow the standard library's. Take it off the path."""
    here = {"", ".", os.getcwd(), os.path.realpath(os.getcwd())}
    sys.path[:] = [p for p in sys.path if p not in here and os.path.realpath(p or ".") not in here]


def launch(command: str, argv: list[str] | None = None) -> int:
    """Runs ``command``'s CLI (a key of :data:`COMMANDS`) and returns its exit code."""
    _scrub_path()
    module = importlib.import_module(f"awm_jax.cli.{COMMANDS[command]}")
    return module.main(argv)
