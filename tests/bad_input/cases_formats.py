"""The bad-input corpus for published model formats: GGUF files, integer-quantised checkpoints
(GPTQ, AWQ, bitsandbytes, compressed-tensors), LoRA adapters and tensors of unknown dtype.

Each case follows :mod:`cases`: it writes a broken model under ``root/bad`` (the valid partner is
``root/good``), returns the CLI arguments, and declares the exit code and a fragment of the one
line awm_jax must print. ``test_corpus_formats.py`` runs them. GGUF cases need the ``gguf``
package (the ``gguf`` extra) and are skipped without it.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .cases import EMB, HIDDEN, LAYERS, VOCAB, Case, _arrays, _model, _pair

__all__ = ["FORMAT_CASES", "NEEDS_GGUF"]

FORMAT_CASES: list[Case] = []
#: Names of the cases that write GGUF files (skipped when ``gguf`` is not installed).
NEEDS_GGUF: set[str] = set()


def _case(name: str, input: str, code: int, fragment: str, names: str = "bad", gguf: bool = False):
    def register(build):
        FORMAT_CASES.append(Case(name, input, code, fragment, names, build))
        if gguf:
            NEEDS_GGUF.add(name)
        return build

    return register


# -- GGUF -------------------------------------------------------------------------------------------


def _gguf(path: Path, arch: str = "llama", tokens: bool = True, hidden: object = HIDDEN) -> Path:
    """A small Llama-shaped GGUF file (Q8_0 projections, F32 embedding)."""
    import gguf

    emb, qs, ks = _arrays(seed=0)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_block_count(LAYERS)
    if isinstance(hidden, int):
        writer.add_embedding_length(hidden)
    else:
        writer.add_int32(f"{arch}.embedding_length", -1)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    if tokens:
        writer.add_tokenizer_model("gpt2")
        writer.add_token_list([f"tok{i}" for i in range(VOCAB)])
    writer.add_tensor("token_embd.weight", emb)
    for i, (q, k) in enumerate(zip(qs, ks)):
        for name, w in (("attn_q", q), ("attn_k", k)):
            packed = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(f"blk.{i}.{name}.weight", packed, raw_shape=packed.shape,
                              raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _bad_folder(root: Path) -> Path:
    bad = root / "bad"
    bad.mkdir()
    return bad


@_case("gguf_truncated", "a GGUF file cut short (truncated download)", 3, "truncated or corrupt", "bad/m.gguf", gguf=True)
def _gguf_truncated(root):
    path = _gguf(_bad_folder(root) / "m.gguf")
    path.write_bytes(path.read_bytes()[:-200])
    return _pair(path, root)


@_case("gguf_not_gguf", "a .gguf file of random bytes", 3, "GGUF magic", "bad/m.gguf", gguf=True)
def _gguf_not_gguf(root):
    path = _bad_folder(root) / "m.gguf"
    path.write_bytes(np.random.default_rng(0).bytes(512))
    return _pair(path, root)


@_case("gguf_unmapped_architecture", "a GGUF file of an architecture no layout reads (mamba)", 3,
       "not mapped onto a layout", "bad/m.gguf", gguf=True)
def _gguf_unmapped(root):
    return _pair(_gguf(_bad_folder(root) / "m.gguf", arch="mamba"), root)


@_case("gguf_negative_size", "GGUF metadata with a negative embedding length", 3, "expected one non-negative integer",
       "bad/m.gguf", gguf=True)
def _gguf_negative(root):
    return _pair(_gguf(_bad_folder(root) / "m.gguf", hidden=None), root)


@_case("gguf_no_vocabulary", "a GGUF file without tokenizer.ggml.tokens", 5, "no tokenizer.ggml.tokens", "bad/m.gguf",
       gguf=True)
def _gguf_no_vocab(root):
    return _pair(_gguf(_bad_folder(root) / "m.gguf", tokens=False), root)


@_case("gguf_several_models", "a folder of two GGUF files and no selector", 3, "choose one with", "bad", gguf=True)
def _gguf_several(root):
    bad = _bad_folder(root)
    _gguf(bad / "m-Q8_0.gguf")
    _gguf(bad / "m-F16.gguf")
    return _pair(bad, root)


@_case("gguf_selector_matches_nothing", "PATH:Q4_K_M where no file is Q4_K_M", 3, "match 'Q4_K_M'", "bad", gguf=True)
def _gguf_selector(root):
    bad = _bad_folder(root)
    _gguf(bad / "m-Q8_0.gguf")
    return [f"{bad}:Q4_K_M", str(_pair(bad, root)[1])]


@_case("gguf_split_incomplete", "a split GGUF set with a file missing", 3, "is missing", "bad/m-00001-of-00002.gguf",
       gguf=True)
def _gguf_split(root):
    return _pair(_gguf(_bad_folder(root) / "m-00001-of-00002.gguf"), root)


# -- integer-quantised safetensors -------------------------------------------------------------------

_STEM = "model.layers.{i}.self_attn.q_proj"


def _quantised(root: Path, tensors_of, config: dict) -> list[str]:
    """The corpus model with every layer's q_proj replaced by ``tensors_of(q)`` (suffix -> array)."""
    from awm_jax.synthetic import llama_config, write_model

    emb, qs, ks = _arrays()
    specs = [(EMB, emb.shape, np.float32, lambda: emb)]
    for i, (q, k) in enumerate(zip(qs, ks)):
        for suffix, t in tensors_of(q).items():
            specs.append((f"{_STEM.format(i=i)}.{suffix}", t.shape, t.dtype, lambda t=t: t))
        specs.append((f"model.layers.{i}.self_attn.k_proj.weight", k.shape, np.float32, lambda k=k: k))
    cfg = llama_config(VOCAB, HIDDEN, LAYERS, 2, 1, 16, dtype="float32")
    cfg["quantization_config"] = config
    write_model(root / "bad", specs, cfg, [f"tok{i}" for i in range(VOCAB)])
    return _pair(root / "bad", root)


def _gptq_tensors(q: np.ndarray, drop: tuple[str, ...] = (), g_idx: int | None = None) -> dict:
    out, n = q.shape
    t = {"qweight": np.zeros((n // 8, out), np.int32), "qzeros": np.full((1, out // 8), 0x77777777, np.int32),
         "scales": np.full((1, out), 0.01, np.float16),
         "g_idx": np.full(n, 0 if g_idx is None else g_idx, np.int32)}
    return {k: v for k, v in t.items() if k not in drop}


_GPTQ = {"quant_method": "gptq", "bits": 4, "group_size": -1}


@_case("gptq_missing_qzeros", "GPTQ weights without their qzeros", 4, "qzeros is missing")
def _gptq_missing(root):
    return _quantised(root, lambda q: _gptq_tensors(q, drop=("qzeros",)), _GPTQ)


@_case("gptq_3bit", "3-bit GPTQ (a packing awm_jax does not dequantise)", 4, "3-bit GPTQ")
def _gptq_3bit(root):
    return _quantised(root, _gptq_tensors, {**_GPTQ, "bits": 3})


@_case("gptq_g_idx_out_of_range", "GPTQ g_idx naming a group that has no scales", 4, "group indices outside")
def _gptq_g_idx(root):
    return _quantised(root, lambda q: _gptq_tensors(q, g_idx=5), _GPTQ)


@_case("awq_unknown_version", "AWQ of version gemv_fast (a packing awm_jax does not dequantise)", 4,
       "version 'gemv_fast'")
def _awq_version(root):
    return _quantised(root, _gptq_tensors, {"quant_method": "awq", "bits": 4, "group_size": 32, "version": "gemv_fast"})


@_case("bnb_quant_state_not_json", "bitsandbytes NF4 whose quant state is not JSON", 4, "not the JSON quant state")
def _bnb_state(root):
    def tensors(q):
        return {"weight": np.zeros((q.size // 2, 1), np.uint8), "weight.absmax": np.ones(q.size // 64, np.float32),
                "weight.quant_state.bitsandbytes__nf4": np.frombuffer(b"\xff\xfenot json", np.uint8).copy()}

    return _quantised(root, tensors, {"quant_method": "bitsandbytes", "load_in_4bit": True})


@_case("compressed_tensors_wrong_shape", "compressed-tensors weight_packed smaller than its weight_shape", 4,
       "does not hold")
def _ct_shape(root):
    def tensors(q):
        return {"weight_packed": np.zeros((q.shape[0], 1), np.int32), "weight_scale": np.ones((q.shape[0], 1), np.float16),
                "weight_shape": np.array(q.shape, np.int32)}

    config = {"quant_method": "compressed-tensors", "format": "pack-quantized",
              "config_groups": {"g": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
                                                                        "strategy": "channel", "symmetric": True}}}}
    return _quantised(root, tensors, config)


# -- LoRA adapters ----------------------------------------------------------------------------------


def _adapter(root: Path, config: dict | None = None, rank: int = 4, drop_b: bool = False, cols: int = HIDDEN) -> list[str]:
    """A LoRA adapter folder ``root/bad`` over the corpus model ``root/base``."""
    from awm_jax.synthetic import write_safetensors

    base = _model(root / "base")
    bad = _bad_folder(root)
    rng = np.random.default_rng(0)
    specs = []
    for i in range(LAYERS):
        module = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        a = rng.standard_normal((rank, cols)).astype(np.float32)
        b = rng.standard_normal((HIDDEN, rank)).astype(np.float32)
        specs.append((f"{module}.lora_A.weight", a.shape, np.float32, lambda a=a: a))
        if not drop_b:
            specs.append((f"{module}.lora_B.weight", b.shape, np.float32, lambda b=b: b))
    write_safetensors(bad / "adapter_model.safetensors", specs)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 8, "target_modules": ["q_proj"],
           "base_model_name_or_path": str(base)}
    cfg.update(config or {})
    (bad / "adapter_config.json").write_text(json.dumps(cfg))
    return _pair(bad, root)


@_case("adapter_without_base", "a LoRA adapter whose config names no base model", 3, "names no base_model_name_or_path",
       "bad/adapter_config.json")
def _adapter_no_base(root):
    return _adapter(root, {"base_model_name_or_path": None})


@_case("adapter_base_is_itself", "a LoRA adapter naming its own folder as its base", 3, "is itself an adapter folder",
       "bad/adapter_config.json")
def _adapter_self(root):
    return _adapter(root, {"base_model_name_or_path": "."})


@_case("adapter_dora", "a DoRA adapter (use_dora)", 3, "DoRA", "bad/adapter_config.json")
def _adapter_dora(root):
    return _adapter(root, {"use_dora": True})


@_case("adapter_half_pair", "a LoRA adapter with lora_A but no lora_B", 3, "only one of lora_A/lora_B",
       "bad/adapter_model.safetensors")
def _adapter_half(root):
    return _adapter(root, drop_b=True)


@_case("adapter_other_base", "a LoRA adapter whose matrices do not fit the base's weights", 3,
       "belongs to another base model", "bad/adapter_model.safetensors")
def _adapter_other_base(root):
    return _adapter(root, cols=HIDDEN * 2)


@_case("adapter_rank_mismatch", "adapter_config.json r disagreeing with the lora_A rank", 3, "do not fit its lora_A",
       "bad/adapter_config.json")
def _adapter_rank(root):
    return _adapter(root, {"r": 16})


# -- unknown dtypes ---------------------------------------------------------------------------------


@_case("read_tensor_unknown_dtype", "a query projection of a dtype awm_jax does not know (F8_E8M0)", 3,
       "unsupported dtype 'F8_E8M0'", "bad/model.safetensors")
def _unknown_dtype(root):
    bad = _model(root / "bad")
    path = bad / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["model.layers.0.self_attn.q_proj.weight"]["dtype"] = "F8_E8M0"  # 4 bytes per element, as F32
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    return _pair(bad, root)


if len({c.name for c in FORMAT_CASES}) != len(FORMAT_CASES):  # pragma: no cover - a guard on the corpus itself
    raise RuntimeError("duplicate case names in the formats corpus")
