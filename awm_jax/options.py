"""Option choices shared by the library and every command line; imports no JAX.

One definition per option: the modules that implement a choice import its names from here,
and the CLIs build their ``choices=`` from here, so ``--help`` stays instant and no list is
written twice. :class:`PairOptions` is the record of everything that changes a pair's scores.
"""

from __future__ import annotations

import dataclasses
import math

from awm_jax.errors import UsageError

__all__ = [
    "ALIGNMENT_MODES",
    "DEFAULT_MEMORY_GB",
    "DEVICES",
    "FAMILY_RULES",
    "LAYER_MATCH_MODES",
    "NORM_GAIN_MODES",
    "DEFAULT_ALIGNMENT",
    "DEFAULT_NORM_GAINS",
    "PAPER",
    "PairOptions",
    "check_choice",
    "check_memory_gb",
]

#: JAX platforms a run can ask for; ``auto`` is JAX's default device.
DEVICES = ("auto", "cpu", "gpu", "tpu")
#: Hidden-dimension alignment: ``assignment`` is the paper's signed permutation; ``orthogonal``
#: a Procrustes rotation (undoes a dense rotation of the residual stream); ``auto`` chooses.
ALIGNMENT_MODES = ("assignment", "orthogonal", "auto")
#: ``auto``: the permutation unless the pair is a rotated copy (``numerics.auto_alignment``); on the
#: deep lineage zoo it separates derived from independent pairs completely (docs/lineage-deep.md).
DEFAULT_ALIGNMENT = "auto"
#: Layer pairing across different depths: the paper's unconstrained assignment, or order-preserving.
LAYER_MATCH_MODES = ("assignment", "monotone")
#: Which audit pairs join families (besides a mean-score threshold): see ``audit.lineage_tree``.
FAMILY_RULES = ("fwer", "verdict")
#: Norm gains: ``fold`` multiplies every pre-norm gain into the matrices reading the norm before
#: the Grams (the canonical form, invariant to norm folding); ``ignore`` is the paper's computation.
NORM_GAIN_MODES = ("fold", "ignore")
DEFAULT_NORM_GAINS = "fold"
#: Default memory budget of an audit (embeddings and prepared models held at once), in GiB.
DEFAULT_MEMORY_GB = 2.0


def check_choice(what: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, else a ``UsageError`` naming them."""
    if value not in choices:
        raise UsageError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_memory_gb(value: float) -> float:
    """A finite, positive memory budget in GiB, else a ``UsageError``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"memory budget must be a number of GiB, got {value!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"memory budget must be a finite positive number of GiB, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class PairOptions:
    """Everything that changes how a pair is scored (hashable: the engine's static options).

    Attributes:
      layer_match: pairing for different depths (``LAYER_MATCH_MODES``).
      alignment: hidden-dimension alignment (``ALIGNMENT_MODES``).
      mlp: also score the MLP input matrices (evidence beside the verdict).
      norm_gains: ``fold`` or ``ignore`` (``NORM_GAIN_MODES``): how the models' fingerprints are
        prepared (``engine.prepare_model``); both models of a pair must share it.
    """

    layer_match: str = "assignment"
    alignment: str = DEFAULT_ALIGNMENT
    mlp: bool = False
    norm_gains: str = DEFAULT_NORM_GAINS

    def __post_init__(self):
        check_choice("layer match", self.layer_match, LAYER_MATCH_MODES)
        check_choice("alignment", self.alignment, ALIGNMENT_MODES)
        check_choice("norm-gain mode", self.norm_gains, NORM_GAIN_MODES)
        if not isinstance(self.mlp, bool):
            raise UsageError(f"mlp must be True or False, got {self.mlp!r}")


#: The paper's computation (its reference implementation's scores): the signed permutation on
#: the stored matrices. ``--paper`` on the command lines; the parity tests use it.
PAPER = {"alignment": "assignment", "norm_gains": "ignore"}
