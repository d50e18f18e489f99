"""The pair engine: every command (compare, audit, later ones) goes through these functions.

``models`` prepares one model (layout, vocabulary, Gram fingerprint); ``align`` aligns a pair's
hidden dimensions; ``layers`` scores its layers and pairs them; ``pair`` assembles the verdict
(:func:`score_pair`) and runs a whole comparison (:func:`compare`).
"""

from awm_jax.engine.align import PairAlignment, align_pair
from awm_jax.engine.layers import LayerPairing, MatchedScores, mismatch_shifts, prefetched, score_layers
from awm_jax.engine.models import PreparedModel, check_embedding_sums, locate_model, prepare_model, read_embedding
from awm_jax.engine.pair import assemble, compare, environment, score_pair, select_device

__all__ = [
    "LayerPairing",
    "MatchedScores",
    "PairAlignment",
    "PreparedModel",
    "align_pair",
    "assemble",
    "check_embedding_sums",
    "compare",
    "environment",
    "locate_model",
    "mismatch_shifts",
    "prefetched",
    "prepare_model",
    "read_embedding",
    "score_layers",
    "score_pair",
    "select_device",
]
