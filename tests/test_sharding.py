"""Pair kernels sharded over devices: equal to one device, no retracing, float64 oracle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from test_audit import FAMILY_THRESHOLD, reference, zoo  # noqa: F401  (shared session fixtures)

ROOT = Path(__file__).resolve().parents[1]


def _cka64(k: np.ndarray, l: np.ndarray) -> float:
    """Unbiased linear CKA in float64, straight from ALGORITHM.md step 6."""
    n = k.shape[0]
    off = 1.0 - np.eye(n)

    def center(g):
        g = g * off
        m = g.sum(0) / (n - 2)
        m = m - m.sum() / (2 * (n - 1))
        return (g - m[None, :] - m[:, None]) * off

    kc, lc = center(k.astype(np.float64)), center(l.astype(np.float64))
    return float((kc * lc).sum() / np.sqrt((kc * kc).sum() * (lc * lc).sum()))


_COMPILES = []


def _on_event(event: str, duration: float, **_: object) -> None:
    if "backend_compile" in event:
        _COMPILES.append(event)


@pytest.fixture
def compiles():
    """The XLA compilations made while the test runs (a list that grows)."""
    import jax

    jax.monitoring.register_event_duration_secs_listener(_on_event)
    _COMPILES.clear()
    try:
        yield _COMPILES
    finally:
        jax.monitoring.unregister_event_duration_listener(_on_event)


def _grams(rng, rows, d, n):
    w = rng.standard_normal((rows, d, n)).astype(np.float32)
    return w, np.einsum("bdi,bdj->bij", w, w)


def test_aligned_cka_matches_float64_oracle_and_does_not_recompile(compiles):
    from awm_jax.audit.sharding import aligned_layer_cka, pair_mesh

    rng = np.random.default_rng(0)
    mesh = pair_mesh()
    n_b, n_t, rows = 24, 20, 3
    batch = mesh.batch_size(rows)
    for trial in range(3):  # three batches of one shape: compiled once
        if trial == 1:
            first = len(compiles)
        wb, kb = _grams(rng, batch, 12, n_b)
        wt = wb[:, :, :n_t] + 0.5 * rng.standard_normal((batch, 12, n_t)).astype(np.float32)
        lt = np.einsum("bdi,bdj->bij", wt, wt)
        perm = np.stack([rng.permutation(n_b)[:n_t] for _ in range(batch)]).astype(np.int32)
        signs = rng.choice(np.array([-1.0, 1.0], np.float32), (batch, n_t))
        got = mesh.aligned_cka(kb, lt, perm, signs, batch)
        for r in range(batch):
            aligned = kb[r][np.ix_(perm[r], perm[r])] * np.outer(signs[r], signs[r])
            assert got[r] == pytest.approx(_cka64(aligned, lt[r]), abs=2e-5), (trial, r)
        assert float(aligned_layer_cka(kb[0], lt[0], perm[0], signs[0])) == pytest.approx(got[0], abs=1e-6)
        # The same rows from Grams held on the devices, addressed by index: the same bits.
        base_stack = mesh.replicate(np.concatenate([kb, np.zeros((2, n_b, n_b), np.float32)]))
        target_stack = mesh.replicate(lt[::-1].copy())
        put = lambda a: mesh.put(a, batch)  # noqa: E731
        aligned = mesh.gather_align(base_stack, put(np.arange(batch, dtype=np.int32)), put(perm), put(signs))
        targets = mesh.gather(target_stack, put(np.arange(batch, dtype=np.int32)[::-1].copy()))
        out = mesh.cka(aligned, mesh.parts(aligned), targets, mesh.parts(targets))
        np.testing.assert_array_equal(np.asarray(out), got)
    assert first >= 1 and len(compiles) == first, "later batches of the same shape reuse the executables"


def test_cosine_sums_match_host_and_do_not_recompile(compiles):
    from awm_jax.audit.sharding import pair_mesh

    rng = np.random.default_rng(1)
    mesh = pair_mesh()
    batch, rows, n_b, n_t = mesh.batch_size(2), 64, 16, 12
    cross = np.zeros((batch, n_b, n_t), np.float32)
    sq_b, sq_t = np.zeros((batch, n_b), np.float32), np.zeros((batch, n_t), np.float32)
    eb = rng.standard_normal((batch, 3 * rows, n_b)).astype(np.float32)
    et = rng.standard_normal((batch, 3 * rows, n_t)).astype(np.float32)
    put = lambda a: mesh.put(a, batch)  # noqa: E731
    c, b, t = put(cross), put(sq_b), put(sq_t)
    for blk in range(3):
        if blk == 1:
            first = len(compiles)
        c, b, t = mesh.cosine_sums(c, b, t, put(eb[:, blk * rows : (blk + 1) * rows]), put(et[:, blk * rows : (blk + 1) * rows]))
    assert first >= 1 and len(compiles) == first, "later blocks reuse the first block's executable"
    for r in range(batch):
        np.testing.assert_allclose(np.asarray(c)[r], eb[r].T.astype(np.float64) @ et[r], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(np.asarray(b)[r], (eb[r].astype(np.float64) ** 2).sum(0), rtol=1e-5)


def test_local_rows_cover_the_batch_on_one_process():
    from awm_jax.audit.sharding import pair_mesh

    mesh = pair_mesh()
    assert mesh.local_rows(mesh.batch_size(3)) == range(mesh.batch_size(3))
    with pytest.raises(ValueError, match="at least one device"):
        pair_mesh([])


#: The audit in a fresh process with forced host devices; ``device`` cosine mode, so both sharded
#: stages (cosine sums and layer scores) run on the mesh.
_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    from awm_jax.audit.core import audit

    paths, cache, threshold = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    r = audit(paths, cache_dir=cache, family_rule=threshold, cosine="device")
    print(json.dumps({"devices": jax.device_count(), "mesh": r.environment["devices"], "mean": r.mean.tolist(),
                      "wq": r.wq.tolist(), "wk": r.wk.tolist(), "families": [list(f) for f in r.families],
                      "layers": [[[l.wq, l.wk] for l in p.layers] for p in r.pairs]}))
""")


@pytest.fixture(scope="module")
def one_device(zoo, reference):
    """The synthetic zoo's audits on this process's single CPU device: host and device cosine."""
    from awm_jax.audit.core import audit

    host, _, cache = reference
    device = audit(zoo, cache_dir=cache, family_rule=FAMILY_THRESHOLD, cosine="device")
    return zoo, cache, {"host": host, "device": device}


def test_device_cosine_agrees_with_host_cosine(one_device):
    _, _, results = one_device
    host, device = results["host"], results["device"]
    assert host.environment["devices"] == 1
    assert device.families == host.families
    for ph, pd in zip(host.pairs, device.pairs):
        if ph.verdict == "derived" or pd.verdict == "derived":  # matchings of independent pairs may tie
            assert pd.mean == pytest.approx(ph.mean, abs=1e-5), (ph.a, ph.b)


@pytest.mark.parametrize("devices", [4, 8])
def test_many_devices_give_the_one_device_matrix(one_device, devices):
    zoo, cache, results = one_device
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps({k: str(v) for k, v in zoo.items()}), str(cache), str(FAMILY_THRESHOLD)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    many = json.loads(proc.stdout.strip().splitlines()[-1])
    assert many["devices"] == devices and many["mesh"] == devices
    single = results["device"]
    for what in ("mean", "wq", "wk"):
        got = np.array(many[what], dtype=float)
        # Every device runs the one-device program on its rows: bit-identical, not just close.
        np.testing.assert_array_equal(got, getattr(single, what), err_msg=what)
    assert many["layers"] == [[[l.wq, l.wk] for l in p.layers] for p in single.pairs]
    assert [tuple(f) for f in many["families"]] == list(single.families)


@pytest.mark.slow
def test_two_processes_with_jax_distributed_write_the_one_process_files(zoo, reference, tmp_path):
    """Two CPU processes joined by ``jax.distributed`` (gloo): the same audit files, byte for byte."""
    import socket

    _, ref_out, cache = reference
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    procs = []
    for i in range(2):
        env = dict(os.environ, AWM_JAX_COORDINATOR=f"localhost:{port}", AWM_JAX_NUM_PROCESSES="2",
                   AWM_JAX_PROCESS_ID=str(i), JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
        env.pop("XLA_FLAGS", None)
        args = [sys.executable, "-m", "awm_jax.audit", "--distributed", *map(str, zoo.values()), "--out", str(out),
                "--cache-dir", str(cache), "--family-threshold", str(FAMILY_THRESHOLD), "--quiet"]
        procs.append(subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    for name in ("audit.json", "matrix_mean.csv", "pairs.csv", "summary.txt"):
        assert (out / name).read_bytes() == (ref_out / name).read_bytes(), name
