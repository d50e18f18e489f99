"""GGUF files (llama.cpp, ollama) read as checkpoints the architecture layouts understand.

A GGUF model is one file, or a split set ``NAME-00001-of-0000N.gguf`` ... (``gguf-split``), whose
first file holds the metadata. :class:`GGUFCheckpoint` opens it with the ``gguf`` package's
memory-mapped reader and presents what AWM needs under Hugging Face names, so the layouts of
``awm_jax.layouts`` read it as they read safetensors:

* the architecture from ``general.architecture`` (:data:`ARCHITECTURES`: ``llama`` ->
  ``LlamaForCausalLM``...), with a ``config`` made of the metadata's sizes
  (``{arch}.embedding_length``, ``.block_count``, ``.attention.head_count``,
  ``.attention.head_count_kv``, ``.attention.key_length``);
* the tensors AWM reads, renamed (``token_embd.weight`` -> ``model.embed_tokens.weight``,
  ``blk.N.attn_q.weight`` -> ``model.layers.N.self_attn.q_proj.weight``, ``attn_k``,
  ``attn_qkv``, ``ffn_gate``, ``ffn_up``); every other tensor is left alone, whatever its type;
* shapes in numpy order: GGUF lists dimensions fastest first (``ne``: ``[in, out]`` for a
  projection), the reverse of the ``Linear`` layout ``[out, in]`` given here;
* data read lazily, one tensor (or block of rows) at a time from the memory map, and
  dequantised with ``gguf.quants.dequantize`` for every type the installed ``gguf`` supports
  (legacy ``Q4_0``...``Q8_0``, K-quants ``Q2_K``...``Q6_K``, I-quants, ``BF16``...); ``F32`` and
  ``F16`` are returned as stored;
* the vocabulary from ``tokenizer.ggml.tokens`` (:func:`gguf_tokens`, used by
  :func:`awm_jax.io.vocab.load_vocabulary` for a ``.gguf`` path).

llama.cpp's converter permutes the rows of Llama-family ``attn_q``/``attn_k`` within each head
(its RoPE convention). AWM's Gram over input dimensions is unchanged by any row permutation
``P``: ``(P W)^T (P W) = W^T P^T P W = W^T W``, so the rows are used as stored.

Which file of a folder: a path to a ``.gguf`` file; a folder holding one GGUF model; or
``PATH:SELECTOR`` where ``SELECTOR`` is a file name in the folder or a quantisation type found
in the file names (``models/llama:Q4_K_M``). The ``gguf`` package is an optional dependency
(``pip install 'awm_jax[gguf]'``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from awm_jax.errors import CheckpointError, UsageError, VocabularyError
from awm_jax.io.checkpoint import _TRACE, MAX_CONFIG_INT, TensorInfo, TensorTable, memory_limit, open_regular
from awm_jax.io.sparse import SparseFile

__all__ = [
    "ARCHITECTURES",
    "GGUFArchitecture",
    "GGUFCheckpoint",
    "GGUFSource",
    "find_gguf",
    "gguf_tokens",
    "select_model",
]

GGUF_SUFFIX = ".gguf"
_SPLIT = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_MAGIC = b"GGUF"


@dataclasses.dataclass(frozen=True)
class GGUFArchitecture:
    """How one ``general.architecture`` maps onto a layout.

    Attributes:
      architectures: the Hugging Face ``architectures`` entry the layouts detect.
      model_type: the Hugging Face ``model_type``.
      names: GGUF tensor-name template (``{i}`` the block) -> Hugging Face name.
    """

    architectures: tuple[str, ...]
    model_type: str
    names: Mapping[str, str]


_EMBED = {"token_embd.weight": "model.embed_tokens.weight"}
_QK = {"blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
       "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight"}
_GATED = {"blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
          "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight"}


#: Pre-norm RMSNorm gains, for architectures whose converter stores them as transformers does
#: (llama.cpp adds 1 to Gemma's, so Gemma's are not mapped: their gains are not folded).
_NORMS = {"blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
          "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight"}


def _llama_like(hf: str, model_type: str, mlp: Mapping[str, str] = _GATED, norms: Mapping[str, str] = {}) -> GGUFArchitecture:  # noqa: B006
    return GGUFArchitecture((hf,), model_type, {**_EMBED, **_QK, **mlp, **norms})


#: ``general.architecture`` -> layout mapping (llama.cpp's names).
ARCHITECTURES: Mapping[str, GGUFArchitecture] = {
    "llama": _llama_like("LlamaForCausalLM", "llama", norms=_NORMS),
    "mistral": _llama_like("MistralForCausalLM", "mistral", norms=_NORMS),
    "qwen2": _llama_like("Qwen2ForCausalLM", "qwen2", norms=_NORMS),
    "qwen3": _llama_like("Qwen3ForCausalLM", "qwen3", norms=_NORMS),
    "gemma": _llama_like("GemmaForCausalLM", "gemma"),
    "gemma2": _llama_like("Gemma2ForCausalLM", "gemma2"),
    "gemma3": _llama_like("Gemma3ForCausalLM", "gemma3_text"),
    "olmo": _llama_like("OlmoForCausalLM", "olmo"),
    "olmo2": _llama_like("Olmo2ForCausalLM", "olmo2"),
    "stablelm": _llama_like("StableLmForCausalLM", "stablelm"),
    "command-r": _llama_like("CohereForCausalLM", "cohere"),
    "starcoder2": _llama_like("Starcoder2ForCausalLM", "starcoder2",
                              {"blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.c_fc.weight"}),
    "phi3": GGUFArchitecture(("Phi3ForCausalLM",), "phi3", {
        **_EMBED, "blk.{i}.attn_qkv.weight": "model.layers.{i}.self_attn.qkv_proj.weight",
        "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.gate_up_proj.weight"}),
}


def _module():
    """The ``gguf`` package, or a one-line UsageError saying how to install it."""
    try:
        import gguf
    except ImportError:
        raise UsageError("reading GGUF files needs the 'gguf' package: pip install 'awm_jax[gguf]' (or pip install gguf)") from None
    return gguf


# -- which files ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GGUFSource:
    """A GGUF model on disk.

    Attributes:
      files: its files, first shard first.
    """

    files: tuple[Path, ...]


def _models(names: list[str]) -> dict[str, list[str]]:
    """GGUF models among file names: model name (the single file, or the split set's first file) -> file names."""
    models: dict[str, list[str]] = {}
    for name in sorted(n for n in names if n.endswith(GGUF_SUFFIX)):
        m = _SPLIT.match(name)
        key = f"{m['base']}-00001-of-{m['count']}.gguf" if m else name
        models.setdefault(key, []).append(name)
    return models


def _models_in(folder: Path) -> dict[str, list[str]]:
    """:func:`_models` of a folder's files."""
    try:
        return _models(os.listdir(folder))
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot list the folder ({e.strerror or e}); check its permissions") from None


def _split_names(first: str, where: str) -> list[str]:
    """Every file name of the split set ``first`` belongs to (any of its names may be given), in order."""
    m = _SPLIT.match(first)
    if m is None:
        return [first]
    count = int(m["count"])
    if count == 0 or int(m["no"]) == 0:
        raise CheckpointError(f"{where}/{first}: split number {m['no']} of {m['count']} is not a valid GGUF split name; "
                              "rename it")
    return [f"{m['base']}-{k:05d}-of-{m['count']}.gguf" for k in range(1, count + 1)]


def select_model(names: list[str], selector: str | None, where: str, available: str = "") -> list[str]:
    """The file names of the GGUF model ``selector`` chooses among file names (a folder's or a hub repository's).

    Args:
      names: file names (the ``.gguf`` ones are considered).
      selector: a file name, or a quantisation type found whole in exactly one model's name
        (``Q4_K_M``, case-insensitive); ``None``: the only model.
      where: the folder or repository, for messages.
      available: what to list in messages (default: the models' names).

    Returns:
      The model's file names, first file first (a split set whole).

    Raises:
      CheckpointError: the selector names no model or several, there are several models and no
        selector, or a split set is incomplete.
    """
    models = _models(names)
    listing = available or f"models: {', '.join(list(models)[:6])}"
    if selector is None:
        if len(models) > 1:
            raise CheckpointError(
                f"{where}: holds {len(models)} GGUF models ({listing}); choose one with {where}:FILE or "
                f"{where}:QUANT (e.g. {where}:Q4_K_M)"
            )
        chosen = next(iter(models))
    elif selector in models or any(selector in files for files in models.values()):
        chosen = selector
    else:
        token = re.compile(rf"(?<![A-Za-z0-9]){re.escape(selector)}(?![A-Za-z0-9_])", re.IGNORECASE)
        matches = [name for name in models if token.search(name.removesuffix(GGUF_SUFFIX))]
        if len(matches) != 1:
            what = "no" if not matches else f"{len(matches)}"
            raise CheckpointError(
                f"{where}: {what} GGUF model(s) match {selector!r} ({listing}); give a file name or a quantisation "
                "type that names exactly one"
            )
        chosen = matches[0]
    files = _split_names(chosen, where)
    missing = [f for f in files if f not in names]
    if missing:
        raise CheckpointError(
            f"{where}/{chosen}: belongs to a split GGUF model of {len(files)} files but {len(missing)} of them "
            f"{'is' if len(missing) == 1 else 'are'} missing (first: {missing[0]}); fetch them all"
        )
    return files


def _split_files(first: Path) -> tuple[Path, ...]:
    """All files of the split set ``first`` belongs to (any of its files may be given)."""
    files = _split_names(first.name, str(first.parent))
    missing = [f for f in files if not (first.parent / f).exists()]
    if missing:
        raise CheckpointError(
            f"{first}: belongs to a split GGUF model of {len(files)} files but {len(missing)} of them "
            f"{'is' if len(missing) == 1 else 'are'} missing (first: {missing[0]}); fetch them all"
        )
    return tuple(first.parent / f for f in files)


def find_gguf(spec: str | os.PathLike) -> GGUFSource | None:
    """The GGUF model ``spec`` names, or ``None`` when it names something else (a safetensors folder, a hub id).

    ``spec`` is a ``.gguf`` file (any file of a split set), a folder holding GGUF files and no
    safetensors weights, or ``PATH:SELECTOR`` with ``SELECTOR`` a file name in folder ``PATH`` or
    a quantisation type in the file names (``Q4_K_M``, case-insensitive; :func:`select_model`).

    Raises:
      CheckpointError: the folder holds several GGUF models and no selector says which, or the
        selector matches none or several, or a split set is incomplete.
    """
    text = os.fspath(spec)
    path, selector = Path(text), None
    if not os.path.lexists(text) and ":" in text:
        head, _, tail = text.rpartition(":")
        if head and tail and os.sep not in tail and os.path.isdir(head):
            path, selector = Path(head), tail
    if path.is_file():
        return GGUFSource(_split_files(path)) if path.name.endswith(GGUF_SUFFIX) else None
    if not path.is_dir():
        return None
    models = _models_in(path)
    if not models:
        if selector is not None:
            raise CheckpointError(f"{path}: holds no *.gguf files, so {selector!r} selects nothing; check the path")
        return None
    if selector is None:
        names = os.listdir(path)
        if "model.safetensors" in names or "model.safetensors.index.json" in names:
            return None  # the folder's safetensors release is read; PATH:SELECTOR picks a GGUF file
    files = select_model([f for fs in models.values() for f in fs], selector, str(path))
    return GGUFSource(_split_files(path / files[0]))


# -- reading -----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _reader(path: str, size: int, mtime_ns: int) -> Any:
    """The ``gguf`` reader of one file (cached per path, size and modification time)."""
    gguf = _module()
    with open_regular(path) as f:  # a FIFO or device is refused before it is mapped
        head = f.read(4)
    if head != _MAGIC:
        raise CheckpointError(f"{path}: does not start with the GGUF magic bytes; the file is not GGUF or is corrupt: fetch it again")
    try:
        return gguf.GGUFReader(path, "r")
    except Exception as e:  # noqa: BLE001 - the reader raises many types for truncated or malformed files
        raise CheckpointError(
            f"{path}: is not a readable GGUF file ({type(e).__name__}: {str(e)[:100]}); the file is truncated or "
            "corrupt: fetch it again"
        ) from None


def _open(path: Path) -> Any:
    try:
        st = os.stat(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror or e}); check the path") from None
    return _reader(str(path), st.st_size, st.st_mtime_ns)


def _field(reader: Any, key: str, path: Path) -> Any:
    """The value of metadata ``key`` (``None`` when absent)."""
    field = reader.fields.get(key)
    if field is None:
        return None
    try:
        return field.contents()
    except Exception:  # noqa: BLE001 - malformed field parts
        raise CheckpointError(f"{path}: metadata {key!r} is malformed; the file is corrupt: fetch it again") from None


def gguf_tokens(path: str | os.PathLike) -> list[str]:
    """The vocabulary of a GGUF model (token id = position), from ``tokenizer.ggml.tokens``.

    Raises:
      VocabularyError: the file has no token list, or it is not a list of strings.
    """
    source = find_gguf(path)
    first = source.files[0] if source is not None else Path(path)
    try:
        reader = _open(first)
    except CheckpointError as e:
        raise VocabularyError(str(e)) from None
    tokens = _field(reader, "tokenizer.ggml.tokens", first)
    if tokens is None:
        raise VocabularyError(
            f"{first}: has no tokenizer.ggml.tokens metadata, so its vocabulary is unknown; use a GGUF file converted "
            "with its tokenizer"
        )
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise VocabularyError(f"{first}: tokenizer.ggml.tokens is not a list of strings; the file is corrupt: fetch it again")
    return tokens


def _size(value: Any, key: str, file: Path) -> int | None:
    """A size from the metadata: a non-negative integer (or a list of equal ones, per layer)."""
    if value is None:
        return None
    if isinstance(value, list) and value and all(v == value[0] for v in value):
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= MAX_CONFIG_INT:
        raise CheckpointError(
            f"{file}: metadata {key} is {str(value)[:40]}, expected one non-negative integer (the same for every "
            "layer); the file is corrupt or of an architecture awm_jax does not read"
        )
    return int(value)


class GGUFCheckpoint(TensorTable):
    """A GGUF model presented as a checkpoint: ``config``, ``tensors`` (Hugging Face names) and lazy reads.

    Args:
      source: the model's files (:func:`find_gguf`).

    Raises:
      CheckpointError: a file is not readable GGUF, its architecture is not one of
        :data:`ARCHITECTURES`, its sizes are malformed, or tensors repeat across files.
      UsageError: the ``gguf`` package is not installed.
    """

    def __init__(self, source: GGUFSource):
        self.files = list(source.files)
        self.root = Path(os.path.abspath(self.files[0]))  # not resolved: a hub snapshot links to a blob without .gguf
        readers = [_open(f) for f in self.files]
        first = readers[0]
        arch = _field(first, "general.architecture", self.root)
        if not isinstance(arch, str):
            raise CheckpointError(f"{self.root}: has no general.architecture metadata; the file is corrupt or not a model")
        if arch not in ARCHITECTURES:
            raise CheckpointError(
                f"{self.root}: GGUF architecture {arch[:40]!r} is not mapped onto a layout (mapped: "
                f"{', '.join(ARCHITECTURES)}); convert the model to safetensors, or compare its float release"
            )
        count = _size(_field(first, "split.count", self.root), "split.count", self.root)
        if count is not None and count not in (0, len(self.files)):
            raise CheckpointError(f"{self.root}: split.count says {count} files, {len(self.files)} found; fetch them all")
        self.architecture = arch
        spec = ARCHITECTURES[arch]
        self.config = self._config(first, arch, spec)
        self._tensors: dict[str, Any] = {}
        self.tensors: dict[str, TensorInfo] = {}
        self.types: dict[str, str] = {}
        patterns = [(re.compile("^" + re.escape(g).replace(r"\{i\}", r"(\d+)") + "$"), hf) for g, hf in spec.names.items()]
        for file, reader in zip(self.files, readers):
            for t in reader.tensors:
                for pattern, hf in patterns:
                    m = pattern.match(t.name)
                    if m is None:
                        continue
                    name = hf.format(i=int(m.group(1))) if m.groups() else hf
                    if name in self.tensors:
                        raise CheckpointError(f"{file}: tensor {t.name!r} appears twice in the split set; fetch the files again")
                    self._tensors[name] = t
                    self.types[name] = t.tensor_type.name
                    shape = tuple(int(d) for d in reversed([int(x) for x in t.shape]))
                    dtype = "F16" if t.tensor_type.name == "F16" else "F32"
                    self.tensors[name] = TensorInfo(name, file, dtype, shape, int(t.data_offset), int(t.n_bytes))
        self.sparse: dict[Path, SparseFile] = {}  # a partial hub download: the ranges present (awm_jax.io.sparse)
        self.reload_ranges()

    def reload_ranges(self) -> None:
        """Reads the range records of the sparse (partially downloaded) files again."""
        self.sparse = {f: sparse for f in self.files if (sparse := SparseFile.load(f)) is not None}

    def _config(self, reader: Any, arch: str, spec: GGUFArchitecture) -> dict[str, Any]:
        config: dict[str, Any] = {"architectures": list(spec.architectures), "model_type": spec.model_type}
        keys = {"hidden_size": "embedding_length", "num_hidden_layers": "block_count",
                "num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
                "head_dim": "attention.key_length", "intermediate_size": "feed_forward_length"}
        for hf, key in keys.items():
            value = _size(_field(reader, f"{arch}.{key}", self.root), f"{arch}.{key}", self.root)
            if value is not None:
                config[hf] = value
        file_type = _field(reader, "general.file_type", self.root)
        config["gguf"] = {"architecture": arch, "file_type": file_type if isinstance(file_type, int) else None}
        return config

    @property
    def form(self) -> str:
        """What was read, for reports: ``"GGUF llama, Q8_0 x 9, F32 x 1"`` (the types of the tensors AWM reads)."""
        counts: dict[str, int] = {}
        for kind in self.types.values():
            counts[kind] = counts.get(kind, 0) + 1
        shown = ", ".join(f"{k} x {n}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"GGUF {self.architecture}, {shown}"

    def __repr__(self) -> str:
        return f"GGUFCheckpoint({str(self.root)!r}, {len(self.tensors)} tensors read of {len(self.files)} file(s))"

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Reads one tensor (or a contiguous block of its rows), dequantised: float16 for ``F16``, else float32.

        Raises:
          CheckpointError: the tensor's type cannot be dequantised by the installed ``gguf``, or
            it is larger than the memory of this machine.
        """
        info = self.info(name)
        t = self._tensors[name]
        data = t.data
        traced = self._traced(info, rows)
        if traced is not None:
            return traced
        sparse = self.sparse.get(info.file)
        if sparse is not None:  # a hole is never read as weights
            sparse.require(info.start, info.start + info.nbytes, t.name)
        if rows is not None:
            r0, r1, step = rows.indices(info.shape[0])
            if step != 1:
                raise ValueError("rows must be a contiguous slice")
            data = data[r0:max(r1, r0)]
        limit = memory_limit()
        elements = math.prod(info.shape[1:]) * len(data)
        if limit is not None and elements * 4 > limit:
            raise CheckpointError(
                f"{info.file}: tensor {t.name!r} ({list(info.shape)}) needs {elements * 4 / 2**30:.1f} GiB dequantised, "
                f"more than the {limit / 2**30:.1f} GiB of memory here; use a larger machine"
            )
        kind = self.types[name]
        if kind == "F32":
            return np.array(data, dtype=np.float32)
        if kind == "F16":
            return np.array(data, dtype=np.float16)
        gguf = _module()
        try:
            out = gguf.quants.dequantize(np.asarray(data), t.tensor_type)
        except NotImplementedError:
            raise CheckpointError(
                f"{info.file}: tensor {t.name!r} is stored as GGML type {kind}, which the installed gguf "
                f"{getattr(gguf, '__version__', '')} cannot dequantise; upgrade gguf (pip install -U gguf)"
            ) from None
        except (ValueError, IndexError) as e:
            raise CheckpointError(f"{info.file}: tensor {t.name!r} ({kind}) cannot be dequantised ({e}); the file is "
                                  "corrupt: fetch it again") from None
        return np.ascontiguousarray(out, dtype=np.float32).reshape([len(data), *info.shape[1:]])

    def map(self, name: str) -> np.ndarray:
        """The whole tensor: the read-only memory map for ``F32``/``F16``, else dequantised in memory."""
        info = self.info(name)
        if self.types[name] in ("F32", "F16") and _TRACE.get() is None:
            sparse = self.sparse.get(info.file)
            if sparse is not None:
                sparse.require(info.start, info.start + info.nbytes, self._tensors[name].name)
            return self._tensors[name].data
        return self.read(name)

    def _traced(self, info: TensorInfo, rows: slice | None) -> np.ndarray | None:
        """Under :func:`~awm_jax.io.checkpoint.tracing`: records the name, returns zeros of the read's shape."""
        trace = _TRACE.get()
        if trace is None:
            return None
        trace.add(info.name)
        n = info.shape[0] if rows is None else len(range(*rows.indices(info.shape[0])))
        return np.zeros([n, *info.shape[1:]], np.float16 if info.dtype == "F16" else np.float32)
