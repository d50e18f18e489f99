"""Fuzzing target for fingerprint cache entries: damaged, swapped and forged entries.

A real cache holding the fingerprints of three tiny models (``a``; ``b`` derived from ``a``;
``c`` independent) is built once per process. Each example copies it, applies one to three
mutations to its entries (bit flips, overwritten, zeroed, truncated or extended files, deleted
files and folders, swapped or copied files and folders, JSON fields set to forged keys,
paths or arbitrary values, files replaced by folders, FIFOs or links, another model's intact
entry renamed and relabelled as this one's), then reads the fingerprints of ``a`` and ``b``
through the cache. The property: every Gram read is bit-identical to a recomputation without
the cache, nothing is fatal, every problem is at most one ``awm_jax: warning:`` line per
entry, and the entries are healed afterwards (read back verified). One example in 50 also
runs the whole comparison of ``a`` and ``b`` on the mutated cache and checks every score
against the comparison without the cache.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import io
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = ["cache_entries", "run_cache_entry"]

_MODELS = ("a", "b", "c")
_FILES = ("index", "meta", "gram_q", "gram_k")
_TARGETS = _FILES + ("folder",)
#: Symbolic values a JSON field may be set to (resolved against the copied cache).
_FORGED = ("KEY_a", "KEY_b", "KEY_c", "ABS_a", "ABS_c", "REL_c", "UPPER_b", "SHORT_b", "FILEKEY_a", "FILEKEY_c",
           "PATH_etc", "DIGEST_c")
_INDEX_FIELDS = ("content_key", "file_key", "kind", "format")
_META_FIELDS = ("content_key", "n", "num_layers", "kind", "format", "algorithm", "block_bytes", "files",
                "files.gram_q.f32.xxh3_128.0", "files.gram_k.f32.bytes", "files.gram_q.f32.xxh3_128")


@dataclasses.dataclass(frozen=True)
class _Fixture:
    """The pristine cache and what a recomputation gives."""

    root: Path
    pristine: Path
    models: dict[str, Path]
    resolved: dict[str, Any]
    keys: dict[str, str]
    file_keys: dict[str, str]
    grams: dict[str, tuple[np.ndarray, ...]]
    scores: dict


_FIXTURE: list[_Fixture] = []


def _scores(result) -> dict:
    d = result.to_dict()
    for model in ("model_a", "model_b"):
        d[model].pop("fingerprint_cached")
    return {k: v for k, v in d.items() if k not in ("timings", "environment")}


def _fixture() -> _Fixture:
    if _FIXTURE:
        return _FIXTURE[0]
    import awm_jax
    from awm_jax.fingerprint import FingerprintCache, model_grams
    from awm_jax.fingerprint.cache import file_key
    from awm_jax.io.checkpoint import Checkpoint
    from awm_jax.layouts import detect
    from awm_jax.synthetic import llama_config, write_model

    root = Path(tempfile.mkdtemp(prefix="awm_jax-fuzz-cache-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = np.random.default_rng(2026)
    vocab, hidden, layers = 48, 16, 2
    emb = rng.standard_normal((vocab, hidden)).astype(np.float32)
    base = [[rng.standard_normal((16, hidden)).astype(np.float32) / 4 for _ in range(2)] for _ in range(layers)]
    weights = {
        "a": base,
        "b": [[w + 0.05 * rng.standard_normal(w.shape).astype(np.float32) for w in qk] for qk in base],
        "c": [[rng.standard_normal((16, hidden)).astype(np.float32) / 4 for _ in range(2)] for _ in range(layers)],
    }
    models = {}
    for name, qks in weights.items():
        specs = [("model.embed_tokens.weight", emb.shape, np.float32, lambda: emb)]
        for i, (q, k) in enumerate(qks):
            specs.append((f"model.layers.{i}.self_attn.q_proj.weight", q.shape, np.float32, lambda q=q: q))
            specs.append((f"model.layers.{i}.self_attn.k_proj.weight", k.shape, np.float32, lambda k=k: k))
        models[name] = write_model(root / name, specs, llama_config(vocab, hidden, layers, 1, 1, 16, dtype="float32"),
                                   [f"tok{i}" for i in range(vocab)])
    resolved = {name: detect(Checkpoint(folder)) for name, folder in models.items()}
    pristine = root / "pristine"
    keys = {name: model_grams(r, FingerprintCache(pristine)).key for name, r in resolved.items()}
    grams = {name: model_grams(r, None).chunk(0, layers) for name, r in resolved.items()}
    baseline = _scores(awm_jax.compare(models["a"], models["b"], cache=False, device="cpu"))
    _FIXTURE.append(_Fixture(root, pristine, models, resolved, keys,
                             {name: file_key(r) for name, r in resolved.items()}, grams, baseline))
    return _FIXTURE[0]


# -- examples --------------------------------------------------------------------------------------

_files = st.tuples(st.sampled_from(_FILES), st.sampled_from(_MODELS))
_targets = st.tuples(st.sampled_from(_TARGETS), st.sampled_from(_MODELS))
_values = st.one_of(st.sampled_from(_FORGED), st.none(), st.booleans(), st.integers(-2, 2**40),
                    st.floats(allow_nan=False), st.text(max_size=12), st.lists(st.integers(0, 3), max_size=3),
                    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=2))
_mutations = st.one_of(
    st.tuples(st.just("flip"), _files, st.floats(0, 1), st.integers(0, 7)),
    st.tuples(st.just("overwrite"), _files, st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("zero"), _files),
    st.tuples(st.just("truncate"), _files, st.floats(0, 1)),
    st.tuples(st.just("append"), _files, st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), _targets),
    st.tuples(st.just("swap"), _targets, _targets),
    st.tuples(st.just("copy"), _targets, _targets),
    st.tuples(st.just("set_index"), st.sampled_from(_MODELS), st.sampled_from(_INDEX_FIELDS), _values),
    st.tuples(st.just("set_meta"), st.sampled_from(_MODELS), st.sampled_from(_META_FIELDS), _values),
    st.tuples(st.just("drop_field"), st.sampled_from(("index", "meta")), st.sampled_from(_MODELS),
              st.sampled_from(_INDEX_FIELDS + _META_FIELDS)),
    st.tuples(st.just("replace"), _files, st.sampled_from(["folder", "fifo", "link_other", "link_outside", "empty"])),
    st.tuples(st.just("forge_entry"), st.sampled_from(_MODELS), st.sampled_from(_MODELS)),
)


def cache_entries() -> st.SearchStrategy:
    """An example: ``(mutations, run the whole comparison too)``."""
    return st.tuples(st.lists(_mutations, min_size=1, max_size=3), st.integers(0, 49).map(lambda x: x == 0))


# -- applying a mutation ---------------------------------------------------------------------------


def _path(cache: Path, fx: _Fixture, target: tuple[str, str]) -> Path:
    what, model = target
    folder = cache / "fingerprints" / fx.keys[model]
    return {"index": cache / "index" / f"{fx.file_keys[model]}-qk-fold.json", "meta": folder / "meta.json",
            "gram_q": folder / "gram_q.f32", "gram_k": folder / "gram_k.f32", "folder": folder}[what]


def _forged(value: Any, cache: Path, fx: _Fixture) -> Any:
    if not isinstance(value, str) or value not in _FORGED:
        return value
    kind, model = value.split("_")
    return {"KEY": lambda: fx.keys.get(model), "ABS": lambda: str(cache / "fingerprints" / fx.keys[model]),
            "REL": lambda: f"../fingerprints/{fx.keys[model]}", "UPPER": lambda: fx.keys[model].upper(),
            "SHORT": lambda: fx.keys[model][:-2], "FILEKEY": lambda: fx.file_keys[model], "PATH": lambda: "/etc",
            "DIGEST": lambda: json.loads((cache / "fingerprints" / fx.keys["c"] / "meta.json").read_text())
            ["files"]["gram_q.f32"]["xxh3_128"][0]}[kind]()


def _regular(path: Path) -> Path:
    """``path`` when it is a regular file (a FIFO would block the harness), else ``OSError``."""
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise OSError(f"{path} is not a regular file")
    return path


def _set_field(path: Path, field: str, value: Any, delete: bool = False) -> None:
    record = json.loads(_regular(path).read_bytes())
    parts = field.split(".")
    if field.startswith("files.") and len(parts) > 2:  # files.<name>.f32.<key>[.index]
        parts = ["files", f"{parts[1]}.{parts[2]}", *parts[3:]]
    node = record
    for part in parts[:-1]:
        node = node[int(part)] if isinstance(node, list) else node[part]
    last = int(parts[-1]) if isinstance(node, list) else parts[-1]
    if delete:
        del node[last]
    else:
        node[last] = value
    path.write_text(json.dumps(record))


def _swap(x: Path, y: Path) -> None:
    if x == y:
        return
    tmp = x.with_name(x.name + ".swap")
    os.rename(x, tmp)
    os.rename(y, x)
    os.rename(tmp, y)


def _copy(x: Path, y: Path) -> None:
    if x == y:
        return
    if y.is_dir() and not y.is_symlink():
        shutil.rmtree(y)
    elif y.exists() or y.is_symlink():
        y.unlink()
    if x.is_dir():
        shutil.copytree(x, y, symlinks=True)
    else:
        shutil.copyfile(x, y, follow_symlinks=False)


def _mutate(cache: Path, outside: Path, fx: _Fixture, m: tuple) -> None:
    op = m[0]
    if op in ("flip", "overwrite", "zero", "truncate", "append"):
        path = _regular(_path(cache, fx, m[1]))
        data = bytearray(path.read_bytes())
        if op == "flip" and data:
            data[min(int(m[2] * len(data)), len(data) - 1)] ^= 1 << m[3]
        elif op == "overwrite":
            at = int(m[2] * len(data))
            data[at: at + len(m[3])] = m[3]
        elif op == "zero":
            data = bytearray(len(data))
        elif op == "truncate":
            del data[int(m[2] * len(data)):]
        elif op == "append":
            data += m[2]
        path.write_bytes(bytes(data))
    elif op == "delete":
        path = _path(cache, fx, m[1])
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif op == "swap":
        _swap(_path(cache, fx, m[1]), _path(cache, fx, m[2]))
    elif op == "copy":
        _copy(_path(cache, fx, m[1]), _path(cache, fx, m[2]))
    elif op == "set_index":
        _set_field(_path(cache, fx, ("index", m[1])), m[2], _forged(m[3], cache, fx))
    elif op == "set_meta":
        _set_field(_path(cache, fx, ("meta", m[1])), m[2], _forged(m[3], cache, fx))
    elif op == "drop_field":
        _set_field(_path(cache, fx, (m[1], m[2])), m[3], None, delete=True)
    elif op == "replace":
        path = _path(cache, fx, m[1])
        other = _path(cache, fx, (m[1][0], "c" if m[1][1] != "c" else "a"))
        if m[2] == "link_outside":
            other = outside / path.name
            shutil.copyfile(path, other)
        path.unlink()
        if m[2] == "folder":
            path.mkdir()
        elif m[2] == "fifo":
            os.mkfifo(path)
        elif m[2] == "empty":
            path.write_bytes(b"")
        else:
            path.symlink_to(other)
    elif op == "forge_entry":  # another model's intact entry, relabelled with this model's key
        source, target = _path(cache, fx, ("folder", m[2])), _path(cache, fx, ("folder", m[1]))
        if source != target:
            _copy(source, target)
            _set_field(target / "meta.json", "content_key", fx.keys[m[1]])


# -- running an example ----------------------------------------------------------------------------


def _check_grams(got, want: tuple[np.ndarray, ...], what: str) -> None:
    for x, y in zip(got.chunk(0, got.num_layers), want):
        if not np.array_equal(x, y):
            raise AssertionError(f"wrong Grams from the mutated cache ({what})")


def run_cache_entry(folder: Path, example: tuple[list[tuple], bool]) -> str:
    """Runs one example in an empty ``folder``; returns ``"ok"`` (nothing was wrong) or
    ``"healed"`` (damage was found, warned about and repaired). Any exception is a bug: a
    damaged cache is never fatal."""
    import awm_jax
    from awm_jax.fingerprint import FingerprintCache, model_grams

    mutations, full = example
    fx = _fixture()
    cache, outside = folder / "cache", folder / "outside"
    shutil.copytree(fx.pristine, cache, symlinks=True)
    outside.mkdir()
    for m in mutations:
        with contextlib.suppress(OSError, KeyError, IndexError, TypeError, ValueError):
            _mutate(cache, outside, fx, m)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        if full:
            got = _scores(awm_jax.compare(fx.models["a"], fx.models["b"], cache_dir=cache, device="cpu"))
            if got != fx.scores:
                raise AssertionError(f"wrong scores from the mutated cache: mean {got['mean']} != {fx.scores['mean']}")
        for name in ("a", "b"):
            _check_grams(model_grams(fx.resolved[name], FingerprintCache(cache)), fx.grams[name], f"model {name}")
        for name in ("a", "b"):  # healed: the entries are there again and verified
            hit = FingerprintCache(cache).lookup(fx.resolved[name])
            if hit is None:
                raise AssertionError(f"the entry of model {name} was not healed")
            _check_grams(hit, fx.grams[name], f"model {name}, healed")
    lines = err.getvalue().splitlines()
    bad = [line for line in lines if not line.startswith("awm_jax: warning: ")]
    if bad or len(lines) > 4:
        raise AssertionError(f"expected at most two warning lines per entry, got {lines[:6]}")
    return "healed" if lines else "ok"
