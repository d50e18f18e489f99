"""Option definitions shared by the command lines (no JAX: ``--help`` stays instant)."""

from __future__ import annotations

import argparse

from awm_jax.options import ALIGNMENT_MODES, DEFAULT_NORM_GAINS, LAYER_MATCH_MODES, NORM_GAIN_MODES

__all__ = ["add_pair_options", "add_version"]


def add_pair_options(p: argparse.ArgumentParser) -> None:
    """The options that change how a pair is scored (``awm_jax.options.PairOptions``): the same
    in every command that scores pairs."""
    p.add_argument("--layer-match", default="assignment", choices=LAYER_MATCH_MODES,
                   help="pairing of layers when depths differ: the paper's unconstrained assignment, "
                        "or order-preserving (default: assignment)")
    p.add_argument("--alignment", default="assignment", choices=ALIGNMENT_MODES,
                   help="hidden-dimension alignment: the paper's signed permutation, an orthogonal (Procrustes) "
                        "map that also undoes a rotated residual stream, or auto (default: assignment)")
    p.add_argument("--norm-gains", default=DEFAULT_NORM_GAINS, choices=NORM_GAIN_MODES,
                   help="fold: multiply each pre-norm gain into the matrices reading the norm before the Grams, so "
                        "norm folding cannot change a score; ignore: the stored matrices, the paper's computation "
                        f"(default: {DEFAULT_NORM_GAINS})")
    p.add_argument("--mlp", action="store_true",
                   help="also score the MLP input matrices (gate/up, all experts), reported beside the verdict")


def add_version(p: argparse.ArgumentParser) -> None:
    """``--version``: prints ``awm_jax X.Y.Z`` and exits 0 (every command has it)."""
    from awm_jax._version import __version__

    p.add_argument("--version", action="version", version=f"awm_jax {__version__}",
                   help="print the version and exit")
