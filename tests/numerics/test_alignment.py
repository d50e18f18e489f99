"""Dimension assignment (total cost against brute force, signs, rectangular shapes), scale invariance of
the embedding sums, and the minimum evidence an alignment needs."""

import itertools

import numpy as np
import pytest

from awm_jax.numerics import alignment
from awm_jax.numerics.alignment import (
    MIN_RANK,
    RANK_COLUMNS,
    EmbeddingCross,
    SampledRank,
    assign_dimensions,
    check_alignment_evidence,
    embedding_cross,
    permutation_fit,
    sampled_rank,
)
from awm_jax.errors import NumericalError


def brute_force_cost(cos: np.ndarray) -> float:
    n_b, n_t = cos.shape
    cost = 1 - np.abs(cos)
    return min(sum(cost[p[j], j] for j in range(n_t)) for p in itertools.permutations(range(n_b), n_t))


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 3), (6, 6), (6, 2)])
@pytest.mark.parametrize("seed", range(4))
def test_assignment_total_cost_is_optimal(shape, seed):
    cos = np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)
    al = assign_dimensions(cos)
    assert sorted(set(al.perm.tolist())) == sorted(al.perm.tolist())  # distinct base dims
    got = float(np.sum(1 - np.abs(cos[al.perm, np.arange(shape[1])])))
    np.testing.assert_allclose(got, brute_force_cost(cos), rtol=0, atol=1e-6)


def test_signs_follow_matched_cosine_and_zero_gives_plus_one():
    cos = np.array([[0.0, 0.9, 0.0], [-0.8, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    al = assign_dimensions(cos)
    np.testing.assert_array_equal(al.perm[:2], [1, 0])
    np.testing.assert_array_equal(al.signs, [-1.0, 1.0, 1.0])
    assert al.diagnostics()["sign_flips"] == 1


def test_recovers_a_signed_permutation():
    rng = np.random.default_rng(0)
    n = 40
    perm = rng.permutation(n)
    signs = rng.choice([-1.0, 1.0], n)
    cos = 0.05 * rng.standard_normal((n, n))
    cos[perm, np.arange(n)] = 0.9 * signs
    al = assign_dimensions(cos.astype(np.float32))
    np.testing.assert_array_equal(al.perm, perm)
    np.testing.assert_array_equal(al.signs, signs)


def test_empty_and_non_finite():
    al = assign_dimensions(np.zeros((0, 0), np.float32))
    assert al.target_dims == 0
    with pytest.raises(NumericalError):
        assign_dimensions(np.array([[np.nan]], np.float32))
    with pytest.raises(ValueError):
        assign_dimensions(np.zeros((2, 3), np.float32))


# -- scale invariance of the embedding sums ---------------------------------------------------------


def _cosine64(eb: np.ndarray, et: np.ndarray, ids_b: np.ndarray, ids_t: np.ndarray) -> np.ndarray:
    """Float64 column cosines straight from the definition."""
    b, t = eb[ids_b].astype(np.float64), et[ids_t].astype(np.float64)
    return (b.T @ t) / np.outer(np.linalg.norm(b, axis=0), np.linalg.norm(t, axis=0))


def _embeddings(seed: int = 0):
    rng = np.random.default_rng(seed)
    eb = rng.standard_normal((300, 20)).astype(np.float32)
    et = (eb[:, rng.permutation(20)[:12]] + 0.3 * rng.standard_normal((300, 12))).astype(np.float32)
    ids = rng.permutation(300)[:200]
    return eb, et, ids


@pytest.fixture(params=["host", "device"])
def platform(request, monkeypatch):
    """Both accumulation paths on this machine: the host BLAS and the jitted accumulator."""
    if request.param == "device":
        monkeypatch.setattr(alignment, "default_platform", lambda: "gpu")
    return request.param


@pytest.mark.parametrize("pb, pt", [(70, 0), (-70, 0), (0, 120), (-100, 120), (30, -30)])
def test_embedding_cross_is_invariant_to_power_of_two_scales(pb, pt, platform):
    eb, et, ids = _embeddings()
    plain = embedding_cross(eb, et, ids, ids)
    scaled = embedding_cross(eb * np.float32(2.0**pb), et * np.float32(2.0**pt), ids, ids)
    assert np.array_equal(eb * np.float32(2.0**pb) / np.float32(2.0**pb), eb)  # exact: no denormal
    np.testing.assert_array_equal(scaled.cosine(), plain.cosine())
    np.testing.assert_allclose(scaled.cosine(), _cosine64(eb, et, ids, ids), rtol=0, atol=1e-6)
    assert permutation_fit(scaled, assign_dimensions(scaled.cosine())) == pytest.approx(
        permutation_fit(plain, assign_dimensions(plain.cosine())), abs=1e-12)


@pytest.mark.parametrize("scale", [7e25, 3.3e-30, 1e37])
def test_embedding_cross_is_invariant_to_any_finite_scale(scale, platform):
    eb, et, ids = _embeddings(1)
    big = (eb.astype(np.float64) * scale).astype(np.float32)
    assert np.isfinite(big).all()
    np.testing.assert_allclose(embedding_cross(big, et, ids, ids).cosine(), _cosine64(big, et, ids, ids), rtol=0, atol=1e-6)


def test_blocks_of_different_magnitudes_are_rescaled_exactly(platform, monkeypatch):
    """Later blocks far larger (or smaller) than the first: the sums so far are scaled to match."""
    monkeypatch.setattr(alignment, "ROW_BLOCK", 32)
    eb, et, _ = _embeddings(2)
    ids = np.arange(eb.shape[0])  # in row order: each block of 32 rows has one magnitude
    eb, et = eb.astype(np.float64), et.astype(np.float64)
    row_scale = 2.0 ** np.repeat([0, 70, -40, 110, 0, -90, 0, 20, -20, 50], 32)[: eb.shape[0], None]
    eb, et = (eb * row_scale).astype(np.float32), (et * row_scale[::-1]).astype(np.float32)
    got = embedding_cross(eb, et, ids, ids)
    assert got.rows == ids.size
    np.testing.assert_allclose(got.cosine(), _cosine64(eb, et, ids, ids), rtol=0, atol=1e-6)


# -- minimum evidence -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1.0, 1e4, 3e30])
@pytest.mark.parametrize("special", [None, np.inf, -np.inf, np.nan, 0.0])
def test_block_shift_of_16_bit_rows_reads_the_magnitude_bits_exactly(dtype, scale, special):
    """The integer path for bfloat16/float16 blocks gives the shift of the float max/min it replaces."""
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.float16
    with np.errstate(over="ignore"):
        rows = (np.random.default_rng(3).standard_normal((16, 9)) * scale).astype(dt)
    if special is not None:
        rows[2, 4] = special
    for block in (rows, rows[:, ::2]):  # contiguous (integer path) and strided (float path)
        peak = max(float(block.max()), -float(block.min()))
        assert alignment._block_shift(block) == int(alignment.range_shift(peak))


def test_sampled_rank():
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((500, 100)).astype(np.float32)
    ids = np.arange(500)
    assert sampled_rank(emb, ids) == SampledRank(columns=RANK_COLUMNS, rows=500, rank=RANK_COLUMNS)
    assert sampled_rank(np.repeat(emb[:1], 500, axis=0), ids).rank == 1
    low = (rng.standard_normal((500, 3)) @ rng.standard_normal((3, 100))).astype(np.float32)
    assert sampled_rank(low, ids).rank == 3
    small = emb[:, :10].copy()
    small[:, 4] = 0
    assert sampled_rank(small, ids) == SampledRank(columns=10, rows=500, rank=9)
    assert sampled_rank(emb, ids[:7]).rows == 7
    emb[3, 0] = np.nan
    assert sampled_rank(emb, ids) is None


def _cross(emb_b, emb_t, shared):
    ids = np.arange(shared)
    return embedding_cross(emb_b, emb_t, ids, ids)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_evidence_needs_four_hidden_dimensions(n):
    rng = np.random.default_rng(4)
    wide, narrow = rng.standard_normal((200, 16)).astype(np.float32), rng.standard_normal((200, n)).astype(np.float32)
    with pytest.raises(NumericalError, match=rf"^narrow: too few hidden dimensions .*\(n={n}, needs at least 4\)"):
        check_alignment_evidence(_cross(wide, narrow, 200), "wide", "narrow")
    check_alignment_evidence(_cross(wide, narrow[:, :1].repeat(4, 1) + rng.standard_normal((200, 4)).astype(np.float32),
                                    200), "wide", "narrow")


@pytest.mark.parametrize("shared", [1, 3, 7])
def test_evidence_needs_a_quarter_as_many_shared_rows_as_dimensions(shared):
    emb = np.random.default_rng(5).standard_normal((200, 32)).astype(np.float32)
    with pytest.raises(NumericalError, match=f"share only {shared} token.*fewer than 8"):
        check_alignment_evidence(_cross(emb, emb, shared), "a", "b")
    check_alignment_evidence(_cross(emb, emb, 8), "a", "b")  # fewer rows than dimensions: still scored
    check_alignment_evidence(_cross(emb, emb, 31), "a", "b")


def test_evidence_refuses_degenerate_embeddings():
    rng = np.random.default_rng(6)
    emb = rng.standard_normal((200, 16)).astype(np.float32)
    with pytest.raises(NumericalError, match="^b: the embedding is degenerate .* span only 1 direction"):
        check_alignment_evidence(_cross(emb, np.repeat(emb[:1], 200, axis=0), 200), "a", "b")
    for rank in (2, 3, 4, 8):  # low rank is fine from MIN_RANK on (a factored embedding, OPT-350m's project_in)
        low = (rng.standard_normal((200, rank)) @ rng.standard_normal((rank, 16))).astype(np.float32)
        if rank < MIN_RANK:
            with pytest.raises(NumericalError, match=f"^a: .* span only {rank} direction"):
                check_alignment_evidence(_cross(low, emb, 200), "a", "b")
        else:
            check_alignment_evidence(_cross(low, emb, 200), "a", "b")
    zero = emb.copy()
    zero[:, 3] = 0
    with pytest.raises(NumericalError, match="^a: 1 of 16 embedding columns are zero"):
        check_alignment_evidence(_cross(zero, emb, 200), "a", "b")
    check_alignment_evidence(_cross(emb, emb, 200), "a", "b")


def test_evidence_of_sums_without_records_checks_what_it_can():
    """Sums built elsewhere (``EmbeddingCross.of`` without the evidence fields): dims and zero columns."""
    cross = EmbeddingCross.of(np.ones((8, 8)), np.ones(8), np.ones(8))
    check_alignment_evidence(cross, "a", "b")
    with pytest.raises(NumericalError, match="too few hidden dimensions"):
        check_alignment_evidence(EmbeddingCross.of(np.ones((8, 3)), np.ones(8), np.ones(3)), "a", "b")


@pytest.mark.parametrize("ids", [[3, 4, 5, 6], [7], [3, 5, 6, 7], [6, 5, 4], [2, 3, 3, 4]])
def test_rows_of_a_consecutive_run_are_a_view_and_others_a_copy(ids):
    emb = np.arange(40, dtype=np.float32).reshape(10, 4)
    ids = np.asarray(ids, np.int64)
    got = alignment._take_rows(emb, ids)
    np.testing.assert_array_equal(got, emb[ids])
    assert np.shares_memory(got, emb) == bool(np.all(np.diff(ids) == 1))
