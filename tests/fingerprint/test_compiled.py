"""The verified cache of compiled kernels (awm_jax.fingerprint.compiled)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from awm_jax.fingerprint import compiled
from awm_jax.fingerprint.compiled import FOLDER, VerifiedCache

EXAMPLES = Path(compiled.__file__).resolve().parents[1] / "examples"

#: A fresh process that enables the cache under argv[1], runs one jitted kernel and prints what
#: compiling it did: whether the executable came from the cache, and the result.
KERNEL = """
import json, sys
import jax, jax.numpy as jnp
from awm_jax.fingerprint.compiled import enable
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
used = enable(sys.argv[1])
x = jnp.arange(64.0, dtype=jnp.float32).reshape(8, 8)
value = float(jax.jit(lambda m: (m @ m.T).sum() / 7)(x))
print(json.dumps({"used": used, "hit": "/jax/compilation_cache/cache_hits" in events, "value": value}))
"""


def _kernel(root: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", KERNEL, str(root)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _entries(root: Path) -> list[Path]:
    return sorted((root / FOLDER).glob("*-cache"))


def test_entries_are_returned_only_with_their_digest(tmp_path):
    cache = VerifiedCache(tmp_path)
    cache.put("k1", b"executable bytes")
    assert cache.get("k1") == b"executable bytes"
    assert cache.get("missing") is None
    path = tmp_path / "k1-cache"
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 1  # one flipped bit in the executable
    path.write_bytes(bytes(blob))
    assert cache.get("k1") is None
    assert not path.exists()  # deleted: the fresh compilation is written in its place
    path.write_bytes(b"short")
    assert cache.get("k1") is None
    with pytest.raises(ValueError):
        cache.get("../escape")


def test_a_second_process_loads_the_kernel_and_a_damaged_entry_is_compiled_again(tmp_path):
    first = _kernel(tmp_path)
    assert first["used"] and not first["hit"]
    entries = _entries(tmp_path)
    assert entries
    second = _kernel(tmp_path)
    assert second["hit"] and second["value"] == first["value"]
    for entry in entries:  # damage every entry: each is refused, compiled again and rewritten
        blob = bytearray(entry.read_bytes())
        blob[len(blob) // 2] ^= 0x40
        entry.write_bytes(bytes(blob))
    third = _kernel(tmp_path)
    assert not third["hit"] and third["value"] == first["value"]
    assert _kernel(tmp_path)["hit"]


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_folder_others_can_write_is_not_used(tmp_path):
    folder = tmp_path / FOLDER
    folder.mkdir()
    folder.chmod(0o777)
    assert _kernel(tmp_path)["used"] is False
    assert not _entries(tmp_path)


def test_old_entries_are_trimmed_past_the_cap(tmp_path):
    folder = tmp_path / FOLDER
    folder.mkdir(mode=0o700)
    for i in range(10):
        path = folder / f"k{i}-cache"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (1000 + i, 1000 + i))
    compiled._trim(folder, 5000)
    assert sorted(p.name for p in folder.iterdir()) == ["k8-cache", "k9-cache"]  # the newest, down to half the cap
    compiled._trim(folder, 5000)  # under the cap: nothing more goes
    assert len(list(folder.iterdir())) == 2


def test_compare_scores_the_same_from_cached_kernels(tmp_path):
    # The CLI enables the cache under --cache-dir: a second run loads every kernel and scores
    # bit for bit what the first run and a run without any cache scored.
    def scores(*flags):
        out = subprocess.run([sys.executable, "-m", "awm_jax", "compare", str(EXAMPLES / "base"),
                              str(EXAMPLES / "derived"), "--json", "-", *flags], capture_output=True, text=True,
                             check=True)
        record = json.loads(out.stdout)
        return record["mean"], record["wq"], record["wk"], [(l["wq"], l["wk"]) for l in record["layers"]]

    cache = ["--cache-dir", str(tmp_path)]
    first = scores(*cache)
    assert _entries(tmp_path)
    assert scores(*cache) == first == scores("--no-cache")
