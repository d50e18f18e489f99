"""Audits on several devices and several processes: the one-device cells, bit for bit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_audit import FAMILY_THRESHOLD, reference, zoo  # noqa: F401  (shared session fixtures)

ROOT = Path(__file__).resolve().parents[2]

#: The audit in a fresh process with forced host devices: each device scores its own pairs.
_CHILD = textwrap.dedent("""
    import json, sys
    import jax
    from awm_jax.audit.core import audit

    paths, cache, threshold = json.loads(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    r = audit(paths, cache_dir=cache, family_rule=threshold)
    print(json.dumps({"devices": jax.device_count(), "used": r.environment["devices"],
                      "pairs": [p.to_dict() for p in r.pairs], "families": [list(f) for f in r.families]}))
""")


@pytest.mark.parametrize("devices", [4])
def test_many_devices_give_the_one_device_cells(zoo, reference, devices):  # noqa: F811
    single, _, cache = reference
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps({k: str(v) for k, v in zoo.items()}), str(cache), str(FAMILY_THRESHOLD)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    many = json.loads(proc.stdout.strip().splitlines()[-1])
    assert many["devices"] == devices and many["used"] == devices
    # Every device runs the one-device engine on its pairs: bit-identical, not just close.
    assert many["pairs"] == json.loads(json.dumps([p.to_dict() for p in single.pairs]))
    assert [tuple(f) for f in many["families"]] == list(single.families)


@pytest.mark.slow
def test_two_processes_with_jax_distributed_write_the_one_process_files(zoo, reference, tmp_path):  # noqa: F811
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
