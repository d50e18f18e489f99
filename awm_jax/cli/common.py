"""Option definitions shared by the command lines (no JAX: ``--help`` stays instant)."""

from __future__ import annotations

import argparse
import json
import sys

from awm_jax.options import ALIGNMENT_MODES, DEFAULT_ALIGNMENT, DEFAULT_NORM_GAINS, LAYER_MATCH_MODES, NORM_GAIN_MODES, PAPER

__all__ = ["FOUND_EXIT", "MODEL_HELP", "add_cache_cap", "add_cache_dir", "add_download", "add_fail_on", "add_pair_options",
           "add_version", "apply_cache_cap", "enforce_cache_cap", "finding_exit", "json_target", "pair_options",
           "plot_target", "start_engine", "write_json", "write_plot"]

#: Help of ``--cache-dir``: the one meaning the flag has in every command.
CACHE_DIR_HELP = ("fingerprint cache folder (default: $AWM_JAX_CACHE, else $XDG_CACHE_HOME/awm_jax, else "
                  "~/.cache/awm_jax)")

#: Exit code of ``--fail-on`` when a pair at that verdict is found (not an error: a finding, for CI).
FOUND_EXIT = 10
_FAIL_ON = {"derived": ("derived",), "inconclusive": ("derived", "inconclusive")}


def add_pair_options(p: argparse.ArgumentParser) -> None:
    """The options that change how a pair is scored (``awm_jax.options.PairOptions``): the same
    in every command that scores pairs."""
    p.add_argument("--layer-match", default="assignment", choices=LAYER_MATCH_MODES,
                   help="pairing of layers when depths differ: the paper's unconstrained assignment, "
                        "or order-preserving (default: assignment)")
    p.add_argument("--alignment", default=DEFAULT_ALIGNMENT, choices=ALIGNMENT_MODES,
                   help="hidden-dimension alignment: the paper's signed permutation, an orthogonal (Procrustes) "
                        "map that also undoes a rotated residual stream, or auto: the permutation unless the pair "
                        f"is a rotated copy (default: {DEFAULT_ALIGNMENT})")
    p.add_argument("--norm-gains", default=DEFAULT_NORM_GAINS, choices=NORM_GAIN_MODES,
                   help="fold: multiply each pre-norm gain into the matrices reading the norm before the Grams, so "
                        "norm folding cannot change a score; ignore: the stored matrices, the paper's computation "
                        f"(default: {DEFAULT_NORM_GAINS})")
    p.add_argument("--paper", action="store_true",
                   help="the paper's computation, as its reference implementation scores: "
                        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in PAPER.items()) + " (overrides both)")
    p.add_argument("--mlp", action="store_true",
                   help="also score the MLP input matrices (gate/up, all experts), reported beside the verdict")


def pair_options(args: argparse.Namespace) -> dict:
    """The parsed :func:`add_pair_options` as keyword arguments of ``compare``/``audit``."""
    values = {"layer_match": args.layer_match, "alignment": args.alignment, "norm_gains": args.norm_gains,
              "mlp": args.mlp}
    return {**values, **PAPER} if args.paper else values


def add_cache_dir(p: argparse.ArgumentParser) -> None:
    """``--cache-dir DIR``: the fingerprint cache folder (in every command that has the flag)."""
    p.add_argument("--cache-dir", metavar="DIR", help=CACHE_DIR_HELP)


def start_engine(cache_dir: str | None, cache: bool = True) -> None:
    """Readies the process of a command that scores models, before its first model is read.

    * The engine (JAX, SciPy) is imported with the cyclic garbage collector paused, and what the
      import made is frozen out of later collections: those objects live as long as the process,
      and collecting them during the import cost 0.1 s of every command.
    * Unless the cache is off, compiled kernels are kept in the verified on-disk cache of
      :mod:`awm_jax.fingerprint.compiled`, under the fingerprint cache's root (``cache_dir``, else
      the default): a command on models of widths seen before compiles nothing.
    """
    import gc
    from pathlib import Path

    enabled = gc.isenabled()
    gc.disable()
    try:
        import awm_jax.engine  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()
    if cache:
        from awm_jax.fingerprint.cache import default_cache_dir
        from awm_jax.fingerprint.compiled import enable

        enable(Path(cache_dir) if cache_dir else default_cache_dir())


def add_cache_cap(p: argparse.ArgumentParser) -> None:
    """``--cache-max-gb N``: cap the fingerprint cache's size for this run (see :func:`apply_cache_cap`)."""
    p.add_argument("--cache-max-gb", type=float, metavar="N",
                   help="after each new fingerprint and at the end, evict least-recently-used fingerprints not in "
                        "use until the cache holds at most N gigabytes (default: $AWM_JAX_CACHE_MAX_GB, else no cap)")


def apply_cache_cap(max_gb: float | None) -> None:
    """Makes ``--cache-max-gb`` the cap of every fingerprint cache this process opens: the same
    as running with ``AWM_JAX_CACHE_MAX_GB=N`` (nothing when ``None``).

    Raises:
      UsageError: ``max_gb`` is negative or not finite.
    """
    import math
    import os

    from awm_jax.errors import UsageError

    if max_gb is None:
        return
    if not (math.isfinite(max_gb) and max_gb >= 0):
        raise UsageError(f"--cache-max-gb must be a number of gigabytes >= 0, got {max_gb:g}")
    os.environ["AWM_JAX_CACHE_MAX_GB"] = repr(max_gb)


def enforce_cache_cap(cache_dir: str | None) -> None:
    """At the end of a command, when nothing is in use any more: evicts least-recently-used
    fingerprints until the cache fits its cap (``--cache-max-gb`` or ``$AWM_JAX_CACHE_MAX_GB``;
    nothing without one)."""
    from awm_jax.fingerprint import FingerprintCache

    FingerprintCache(cache_dir).enforce_cap()


def add_version(p: argparse.ArgumentParser) -> None:
    """``--version``: prints ``awm_jax X.Y.Z`` and exits 0 (every command has it)."""
    from awm_jax._version import __version__

    p.add_argument("--version", action="version", version=f"awm_jax {__version__}",
                   help="print the version and exit")


def add_fail_on(p: argparse.ArgumentParser, what: str) -> None:
    """``--fail-on derived|inconclusive``: exit :data:`FOUND_EXIT` when ``what`` is found at that
    verdict (with ``inconclusive``: at derived or inconclusive)."""
    p.add_argument("--fail-on", choices=tuple(_FAIL_ON),
                   help=f"exit {FOUND_EXIT} when {what} at verdict derived (or, with inconclusive, at derived or "
                        "inconclusive): for CI gating")


def finding_exit(fail_on: str | None, verdicts) -> int:
    """:data:`FOUND_EXIT` when any of ``verdicts`` is one ``--fail-on`` asks about, else 0."""
    wanted = _FAIL_ON.get(fail_on, ())
    return FOUND_EXIT if any(v in wanted for v in verdicts) else 0


def json_target(path: str) -> None:
    """Checks, before any work, the file ``--json PATH`` will replace (``-``: stdout, nothing to
    check): the path the user named, so a symlink is written through to its regular file (see
    :func:`awm_jax.io.atomic.write_target`)."""
    from awm_jax.errors import UsageError
    from awm_jax.io.atomic import write_target

    if path == "-":
        return
    try:
        write_target(path, follow_symlinks=True)
    except OSError as e:
        raise UsageError(f"--json {path}: {e.strerror}; choose a file path in a writable folder") from None


def write_json(path: str, payload: object) -> None:
    """``--json PATH``: the record as JSON, atomically to ``PATH`` or to stdout for ``-``."""
    from awm_jax.errors import UsageError
    from awm_jax.io.atomic import atomic_write

    text = json.dumps(payload, indent=2, allow_nan=False) + "\n"
    if path == "-":
        sys.stdout.write(text)
        return
    try:
        atomic_write(path, text.encode(), follow_symlinks=True)
    except OSError as e:
        raise UsageError(f"--json {path}: cannot write ({e.strerror}); choose a file path in a writable folder") from None


#: How a model may be named on every command line.
MODEL_HELP = ("a model folder, or a hub id owner/name or owner/name@revision (a branch, tag or commit); "
              "owner/name[@revision]:QUANT for a GGUF model of a GGUF repository")


def add_download(p: argparse.ArgumentParser) -> None:
    """``--download partial|full``: how hub ids' weights are fetched (``awm_jax.io.hub.FETCH_MODES``)."""
    p.add_argument("--download", default="partial", choices=("partial", "full"),
                   help="for hub ids: partial fetches each shard's header and then only the byte ranges of the "
                        "tensors read (embedding, Q/K, norm gains; MLP inputs with --mlp), kept in the hub cache "
                        "and resumable; full fetches the whole weight files (default: partial)")


def plot_target(path: str, flag: str = "--plot") -> None:
    """Checks, before any work, the picture ``--plot PATH`` will write: a suffix naming a format
    (``awm_jax.plots.PLOT_FORMATS``) and a file that may be replaced in a writable folder."""
    from awm_jax.errors import UsageError
    from awm_jax.io.atomic import write_target
    from awm_jax.plots import PLOT_FORMATS

    suffix = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if suffix not in PLOT_FORMATS:
        raise UsageError(f"{flag} {path}: {'no file suffix' if not suffix else f'unknown picture format .{suffix}'}; "
                         f"name a .{', .'.join(PLOT_FORMATS)} file")
    try:
        write_target(path, follow_symlinks=True)
    except OSError as e:
        raise UsageError(f"{flag} {path}: {e.strerror}; choose a file path in a writable folder") from None


def write_plot(path: str, pairs: list, flag: str = "--plot") -> None:
    """``--plot PATH``: the layer profile of each ``(label, result)`` pair (``awm_jax.plots.layer_figure``),
    one panel per pair, written atomically in the format the suffix names."""
    from awm_jax.errors import UsageError
    from awm_jax.plots import layer_figure, write_figure

    try:
        write_figure(layer_figure(pairs), path)
    except OSError as e:
        raise UsageError(f"{flag} {path}: cannot write ({e.strerror}); choose a file path in a writable folder") from None
