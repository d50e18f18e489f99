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
    upper = np.zeros((3, n, n), np.float32)
    unpack_upper(packed[:, None].repeat(2, axis=1)[:, 0], upper, mirror=False)  # a strided view, as read
    np.testing.assert_array_equal(upper, np.triu(k))  # the zeros below are left as they were
    pick = rng.permutation(n)[: max(1, n // 2)]
    np.testing.assert_array_equal(packed[1][packed_positions(pick, n)], k[1][np.ix_(pick, pick)])


def test_mirror_keeps_the_upper_triangle():
    a = np.arange(2 * 70 * 70, dtype=np.float32).reshape(2, 70, 70)
    want = np.triu(a) + np.triu(a, 1).transpose(0, 2, 1)
    mirror_upper(a)
    np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("layers, runs", [
    ([3, 19], [(3, 16, 2)]), ([0, 1, 2, 9], [(0, 1, 3), (9, 1, 1)]), ([0, 16, 1, 17], [(0, 16, 2), (1, 16, 2)]),
    ([2, 1], [(2, 1, 1), (1, 1, 1)]), ([0, 2, 4, 5, 6], [(0, 2, 3), (5, 1, 2)]), ([], []),
])
def test_layers_are_read_in_evenly_spaced_runs(layers, runs):
    from awm_jax.fingerprint.grams import _runs

    assert _runs(layers) == runs
    assert [s + t * i for s, t, c in runs for i in range(c)] == layers
