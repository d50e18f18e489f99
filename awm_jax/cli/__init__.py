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

__all__ = ["COMMANDS", "launch", "run_as_main"]

#: Command name -> module of this package holding its ``main(argv) -> int``.
COMMANDS = {"compare": "compare", "audit": "audit", "download": "download",
            "scan": "scan",
            "catalogue": "catalogue", "cache": "cache"}


def _scrub_path() -> None:
    """``python -m`` puts the current folder first on the import path: run from inside a model
    folder, a ``json.py`` there would shadow the standard library's. Take it off the path."""
    here = {"", ".", os.getcwd(), os.path.realpath(os.getcwd())}
    sys.path[:] = [p for p in sys.path if p not in here and os.path.realpath(p or ".") not in here]


def launch(command: str, argv: list[str] | None = None) -> int:
    """Runs ``command``'s CLI (a key of :data:`COMMANDS`) and returns its exit code.

    Ctrl-C from here to the end of the process prints one line and exits 130
    (:mod:`awm_jax.cli._interrupt`)."""
    _scrub_path()  # first: the handler's imports (socket, signal) must not come from the current folder
    from awm_jax.cli._interrupt import install_for_process

    install_for_process()
    module = importlib.import_module(f"awm_jax.cli.{COMMANDS[command]}")
    return module.main(argv)


def _early_exit(signum, frame) -> None:
    os.write(2, b"awm_jax: interrupted\n")
    os._exit(130)


def run_as_main(command: str | None = None) -> None:
    """The process entry of ``python -m``: runs ``command`` (``None``: the ``python -m awm_jax``
    dispatcher) and exits with its code through :func:`awm_jax.cli._interrupt.exit_process`;
    never returns.

    Ctrl-C is handled from the first statement: a minimal handler (nothing is written yet) until
    the full one of :mod:`awm_jax.cli._interrupt` is installed. Only the interpreter's own
    start-up, before this package is imported, is not covered.
    """
    import _signal  # the C module: installing the handler costs no import of enum or typing

    _signal.signal(_signal.SIGINT, _early_exit)
    _scrub_path()
    from awm_jax.cli._interrupt import exit_process, install_for_process

    install_for_process()
    if command is None:
        from awm_jax.__main__ import main

        code = main()
    else:
        code = launch(command)
    exit_process(code)
