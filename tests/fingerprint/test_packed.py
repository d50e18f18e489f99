"""Packed upper triangles of symmetric Grams: exact round trips at every tile boundary."""

import numpy as np
import pytest

from awm_jax.fingerprint._packed import TILE, mirror_upper, pack_upper, packed_len, packed_positions, unpack_upper


@pytest.mark.parametrize("n", [1, 2, 3, TILE - 1, TILE, TILE + 1, 2 * TILE + 5])
def test_pack_unpack_round_trip(n):
    rng = np.random.default_rng(n)
    w = rng.standard_normal((3, 2 * n + 1, n)).astype(np.float32)
    k = np.einsum("lrn,lrm->lnm", w, w).astype(np.float32)
    mirror_upper(k)  # exactly symmetric, upper triangle kept
    np.testing.assert_array_equal(k, k.transpose(0, 2, 1))
    packed = pack_upper(k)
    rows, cols = np.triu_indices(n)
    assert packed.shape == (3, packed_len(n)) == (3, rows.size)
    np.testing.assert_array_equal(packed, k[:, rows, cols])  # K[0, 0:], K[1, 1:], ...
    out = np.full((3, n, n), np.nan, np.float32)
    unpack_upper(packed, out)
    np.testing.assert_array_equal(out, k)
    pick = rng.permutation(n)[: max(1, n // 2)]
    np.testing.assert_array_equal(packed[1][packed_positions(pick, n)], k[1][np.ix_(pick, pick)])


def test_mirror_keeps_the_upper_triangle():
    a = np.arange(2 * 70 * 70, dtype=np.float32).reshape(2, 70, 70)
    want = np.triu(a) + np.triu(a, 1).transpose(0, 2, 1)
    mirror_upper(a)
    np.testing.assert_array_equal(a, want)
