"""GGUF models: read through the layouts, lazily and dequantised by the ``gguf`` package.

Fixtures are written here with ``gguf.GGUFWriter`` from the float weights of the parity models,
as llama.cpp's converter writes them: shapes in GGUF's ``ne`` order, Llama Q/K rows permuted
for llama.cpp's RoPE convention, the vocabulary in ``tokenizer.ggml.tokens``, and the types the
``gguf`` package can quantise (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1). The package cannot
quantise K- or I-quants; Q4_K and Q6_K fixtures come from packers written below from llama.cpp's
block layouts (each checked against ``gguf.quants.dequantize``); other K- and I-quants go through
the same dequantisation call but have no fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

import awm_jax  # noqa: E402
from awm_jax.errors import CheckpointError, VocabularyError  # noqa: E402
from awm_jax.io.checkpoint import Checkpoint  # noqa: E402
from awm_jax.io.gguf import GGUFCheckpoint, find_gguf  # noqa: E402
from awm_jax.io.vocab import load_vocabulary  # noqa: E402
from awm_jax.layouts import detect  # noqa: E402

T = gguf.GGMLQuantizationType


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` of Q/K rows: per head, interleaved halves -> rotate-half order."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _tokens(folder: Path) -> list[str]:
    vocab = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    tokens = [""] * (max(vocab.values()) + 1)
    for tok, i in vocab.items():
        tokens[i] = tok
    return tokens


def write_gguf(parent: Path, path: Path, qtype=T.Q8_0, arch: str = "llama", permute: bool = True,
               split: int = 1, tokens: bool = True, embed_type=None) -> Path:
    """``parent`` (a Llama safetensors folder) written as GGUF; ``split`` > 1 writes a split set."""
    ckpt = Checkpoint(parent)
    cfg = ckpt.config
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    tensors = []
    for name in ckpt.tensors:
        w = np.asarray(ckpt.read(name), np.float32)
        if name == "model.embed_tokens.weight":
            tensors.append(("token_embd.weight", w, embed_type or qtype))
            continue
        parts = name.split(".")
        if len(parts) < 5 or parts[1] != "layers":
            continue
        i, module = parts[2], parts[4]
        gname = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                 "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}.get(module)
        if gname is None or w.ndim != 2:
            continue
        if permute and module in ("q_proj", "k_proj"):
            w = llama_cpp_permute(w, heads if module == "q_proj" else kv)
        tensors.append((f"blk.{i}.{gname}.weight", w, qtype))
    chunks = [tensors[k::split] for k in range(split)]
    paths = [path] if split == 1 else [path.with_name(f"{path.stem}-{k + 1:05d}-of-{split:05d}.gguf") for k in range(split)]
    for k, (chunk, out) in enumerate(zip(chunks, paths)):
        writer = gguf.GGUFWriter(out, arch)
        if k == 0:
            writer.add_block_count(cfg["num_hidden_layers"])
            writer.add_embedding_length(cfg["hidden_size"])
            writer.add_head_count(heads)
            writer.add_head_count_kv(kv)
            writer.add_feed_forward_length(cfg["intermediate_size"])
            writer.add_file_type(int(qtype))
            if tokens:
                writer.add_tokenizer_model("gpt2")
                writer.add_token_list(_tokens(parent))
        if split > 1:
            writer.add_uint16("split.no", k)
            writer.add_uint16("split.count", split)
        for gname, w, t in chunk:
            if t == T.F32:
                writer.add_tensor(gname, w)
            elif t == T.F16:
                writer.add_tensor(gname, w.astype(np.float16))
            else:
                q = gguf.quants.quantize(w, t)
                writer.add_tensor(gname, q, raw_shape=q.shape, raw_dtype=t)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return paths[0]




def _compare(a, b):
    return awm_jax.compare(a, b, cache=False, device="cpu")


def test_shapes_are_numpy_order_and_rows_are_the_permuted_float_rows(parity, tmp_path):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", T.F32)
    ckpt = GGUFCheckpoint(find_gguf(path))
    ref = Checkpoint(parity / "llama_a")
    for name in ("model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight",
                 "model.layers.3.self_attn.k_proj.weight", "model.layers.1.mlp.gate_proj.weight"):
        assert ckpt.info(name).shape == ref.info(name).shape
    q_ref = np.asarray(ref.read("model.layers.0.self_attn.q_proj.weight"), np.float32)
    q = ckpt.read("model.layers.0.self_attn.q_proj.weight")
    np.testing.assert_array_equal(q, llama_cpp_permute(q_ref, ref.config["num_attention_heads"]))
    assert not np.array_equal(q, q_ref)  # the permutation is real
    # the Gram over input dimensions is unchanged: (P W)^T (P W) = W^T W
    np.testing.assert_allclose(q.T.astype(np.float64) @ q, q_ref.T.astype(np.float64) @ q_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ckpt.read("model.embed_tokens.weight", slice(5, 9)),
                                  np.asarray(ref.read("model.embed_tokens.weight", slice(5, 9)), np.float32))


def test_float_gguf_scores_one_against_its_parent(parity, tmp_path):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", T.F32)
    result = _compare(parity / "llama_a", path)
    for value in (result.mean, result.wq, result.wk):
        assert abs(value - 1.0) <= 1e-5
    assert result.model_b.form.startswith("GGUF llama") and "read as GGUF llama" in result.render_text()


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q5_1, T.Q4_0])
def test_quantised_block_rows_equal_the_whole_tensor(parity, tmp_path, qtype):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", qtype)
    ckpt = GGUFCheckpoint(find_gguf(path))
    whole = ckpt.read("model.embed_tokens.weight")
    assert whole.dtype == np.float32 and whole.shape == (1024, 128)
    np.testing.assert_array_equal(ckpt.read("model.embed_tokens.weight", slice(100, 164)), whole[100:164])
    ref = np.asarray(Checkpoint(parity / "llama_a").read("model.embed_tokens.weight"), np.float32)
    assert np.abs(whole - ref).max() < 0.2 * np.abs(ref).max()


def test_q8_0_scores_as_its_float_parent_and_not_as_an_independent_model(parity, tmp_path):
    path = write_gguf(parity / "llama_a", tmp_path / "m-Q8_0.gguf", T.Q8_0)
    parent = _compare(parity / "llama_a", path)
    assert parent.mean >= 0.99 and parent.verdict == "derived", parent.mean
    independent = _compare(parity / "llama_b", path)
    assert independent.verdict != "derived", independent.mean


def test_q4_0_scores_as_its_float_parent(parity, tmp_path):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", T.Q4_0, embed_type=T.Q8_0)
    result = _compare(parity / "llama_a", path)
    assert result.mean >= 0.95 and result.verdict == "derived", result.mean


def test_split_set_and_folder_selection(parity, tmp_path):
    folder = tmp_path / "repo"
    folder.mkdir()
    first = write_gguf(parity / "llama_a", folder / "m-Q8_0.gguf", T.Q8_0, split=3)
    write_gguf(parity / "llama_a", folder / "m-F16.gguf", T.F16)
    assert [p.name for p in find_gguf(first).files] == [f"m-Q8_0-0000{k}-of-00003.gguf" for k in (1, 2, 3)]
    assert find_gguf(folder / "m-Q8_0-00002-of-00003.gguf").files[0] == first  # any file names the set
    assert find_gguf(f"{folder}:q8_0").files[0] == first
    with pytest.raises(CheckpointError, match="no GGUF model"):
        find_gguf(f"{folder}:Q8")  # a type is matched whole: Q8 is not Q8_0
    assert find_gguf(f"{folder}:m-F16.gguf").files == (folder / "m-F16.gguf",)
    with pytest.raises(CheckpointError, match="holds 2 GGUF models.*:Q4_K_M"):
        find_gguf(folder)
    with pytest.raises(CheckpointError, match="no GGUF model"):
        find_gguf(f"{folder}:Q4_K_M")
    result = _compare(parity / "llama_a", f"{folder}:Q8_0")
    assert result.mean >= 0.99
    (folder / "m-Q8_0-00003-of-00003.gguf").unlink()
    with pytest.raises(CheckpointError, match="1 of them is missing"):
        find_gguf(first)


def test_vocabulary_comes_from_the_metadata(parity, tmp_path):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", T.F16)
    vocab = load_vocabulary(path)
    assert vocab.kind == "gguf" and dict(vocab.tokens) == dict(load_vocabulary(parity / "llama_a").tokens)
    bare = write_gguf(parity / "llama_a", tmp_path / "bare.gguf", T.F16, tokens=False)
    with pytest.raises(VocabularyError, match="no tokenizer.ggml.tokens"):
        load_vocabulary(bare)


def test_qwen2_architecture_maps_onto_its_layout(parity, tmp_path):
    path = write_gguf(parity / "qwen2_a", tmp_path / "q.gguf", T.F32, arch="qwen2", permute=False)
    resolved = detect(GGUFCheckpoint(find_gguf(path)))
    assert resolved.name == "qwen2" and resolved.num_layers == 4
    assert abs(_compare(parity / "qwen2_a", path).mean - 1.0) <= 1e-5


@pytest.mark.parametrize("cut", [3, 40, 600, -100])
def test_truncated_files_are_refused_with_one_line(parity, tmp_path, cut):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", T.Q8_0)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(CheckpointError, match="fetch it again") as err:
        GGUFCheckpoint(find_gguf(path))
    assert "\n" not in str(err.value)


def test_unmapped_architecture_is_refused_by_name(tmp_path):
    writer = gguf.GGUFWriter(tmp_path / "x.gguf", "mamba")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match="GGUF architecture 'mamba' is not mapped"):
        GGUFCheckpoint(find_gguf(tmp_path / "x.gguf"))


# -- K-quants: the gguf package dequantises them but cannot quantise them; a Q4_K packer written
# -- from llama.cpp's block_q4_K (ggml-common.h, dequantize_row_q4_K) makes the fixtures.


def pack_q4_k(w: np.ndarray) -> np.ndarray:
    """Quantises ``[rows, n]`` (``n`` a multiple of 256) into llama.cpp ``block_q4_K`` bytes ``[rows, n / 256 * 144]``.

    Per super-block of 256: ``d``, ``dmin`` (float16), 12 bytes of 6-bit sub-block scales and mins,
    128 bytes of 4-bit codes; value ``d * sc * q - dmin * m`` per sub-block of 32.
    """
    rows, n = w.shape
    x = w.reshape(rows, n // 256, 8, 32).astype(np.float64)
    mins = np.maximum(-x.min(-1), 0.0)  # [rows, B, 8]
    scales = np.maximum((x.max(-1) + mins) / 15.0, 1e-12)
    d = (scales.max(-1) / 63.0).astype(np.float16)
    dmin = (mins.max(-1) / 63.0).astype(np.float16)
    df, dminf = np.maximum(d.astype(np.float64), 1e-12), np.maximum(dmin.astype(np.float64), 1e-12)
    sc = np.clip(np.round(scales / df[..., None]), 1, 63).astype(np.uint8)
    m = np.clip(np.round(mins / dminf[..., None]), 0, 63).astype(np.uint8)
    step = d.astype(np.float64)[..., None] * sc
    offset = dmin.astype(np.float64)[..., None] * m
    q = np.clip(np.round((x + offset[..., None]) / step[..., None]), 0, 15).astype(np.uint8)  # [rows, B, 8, 32]
    packed_scales = np.zeros((rows, n // 256, 12), np.uint8)
    for j in range(4):
        packed_scales[..., j] = sc[..., j] | ((sc[..., j + 4] >> 4) << 6)
        packed_scales[..., j + 4] = m[..., j] | ((m[..., j + 4] >> 4) << 6)
        packed_scales[..., j + 8] = (sc[..., j + 4] & 0xF) | ((m[..., j + 4] & 0xF) << 4)
    qs = (q[..., 0::2, :] | (q[..., 1::2, :] << 4)).reshape(rows, n // 256, 128)
    block = np.concatenate([d[..., None].view(np.uint8), dmin[..., None].view(np.uint8), packed_scales, qs], axis=-1)
    return block.reshape(rows, n // 256 * 144)


def pack_q6_k(w: np.ndarray) -> np.ndarray:
    """Quantises ``[rows, n]`` into llama.cpp ``block_q6_K`` bytes ``[rows, n / 256 * 210]``: ``ql`` (128 bytes,
    low 4 bits), ``qh`` (64 bytes, high 2 bits), 16 int8 sub-block scales, ``d`` (float16); value
    ``d * scale[s] * (q - 32)`` per sub-block of 16 (``dequantize_row_q6_K``)."""
    rows, n = w.shape
    x = w.reshape(rows, n // 256, 16, 16).astype(np.float64)
    amax = np.abs(x).max(-1)  # [rows, B, 16]
    sub = np.maximum(amax / 31.0, 1e-12)
    d = (sub.max(-1) / 127.0).astype(np.float16)
    df = np.maximum(d.astype(np.float64), 1e-12)
    sc = np.clip(np.round(sub / df[..., None]), 1, 127).astype(np.int8)
    step = d.astype(np.float64)[..., None] * sc
    q = (np.clip(np.round(x / step[..., None]), -32, 31) + 32).astype(np.uint8).reshape(rows, n // 256, 256)
    ql = np.zeros((rows, n // 256, 128), np.uint8)
    qh = np.zeros((rows, n // 256, 64), np.uint8)
    for half in range(2):  # 128 values per half: ql 64 bytes, qh 32 bytes
        v = q[..., 128 * half:128 * (half + 1)]
        q1, q2, q3, q4 = v[..., 0:32], v[..., 32:64], v[..., 64:96], v[..., 96:128]
        ql[..., 64 * half:64 * half + 32] = (q1 & 0xF) | ((q3 & 0xF) << 4)
        ql[..., 64 * half + 32:64 * half + 64] = (q2 & 0xF) | ((q4 & 0xF) << 4)
        qh[..., 32 * half:32 * half + 32] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6)
    block = np.concatenate([ql, qh, sc.view(np.uint8), d[..., None].view(np.uint8)], axis=-1)
    return block.reshape(rows, n // 256 * 210)


def test_q6_k_packer_round_trips_through_gguf_dequantize():
    w = np.random.default_rng(1).standard_normal((8, 512)).astype(np.float32)
    back = gguf.quants.dequantize(pack_q6_k(w), T.Q6_K)
    assert back.shape == w.shape
    assert np.abs(back - w).max() < 0.06 * np.abs(w).max()
    assert np.corrcoef(back.ravel(), w.ravel())[0, 1] > 0.999


def test_q4_k_packer_round_trips_through_gguf_dequantize():
    w = np.random.default_rng(0).standard_normal((8, 512)).astype(np.float32)
    back = gguf.quants.dequantize(pack_q4_k(w), T.Q4_K)
    assert back.shape == w.shape
    assert np.abs(back - w).max() < 0.25 * np.abs(w).max()
    assert np.corrcoef(back.ravel(), w.ravel())[0, 1] > 0.99


def _random_llama(folder: Path, seed: int, hidden: int = 256, layers: int = 3, vocab: int = 512) -> Path:
    from awm_jax.synthetic import llama_config, write_model

    rng = np.random.default_rng(seed)
    specs = [("model.embed_tokens.weight", (vocab, hidden), np.float32,
              lambda: rng.standard_normal((vocab, hidden)).astype(np.float32))]
    for i in range(layers):
        for p, rows in (("q_proj", hidden), ("k_proj", hidden // 2)):
            specs.append((f"model.layers.{i}.self_attn.{p}.weight", (rows, hidden), np.float32,
                          lambda rows=rows: (rng.standard_normal((rows, hidden)) / 16).astype(np.float32)))
    return write_model(folder, specs, llama_config(vocab, hidden, layers, 4, 2, 64, dtype="float32"),
                       [f"tok{i}" for i in range(vocab)])


def _write_q4_k(parent: Path, path: Path, embedding_q6_k: bool = False) -> Path:
    ckpt = Checkpoint(parent)
    cfg = ckpt.config
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_head_count(cfg["num_attention_heads"])
    writer.add_head_count_kv(cfg["num_key_value_heads"])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(_tokens(parent))
    for name in ckpt.tensors:
        w = np.asarray(ckpt.read(name), np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        else:
            i, module = name.split(".")[2], name.split(".")[4]
            gname = f"blk.{i}.{'attn_q' if module == 'q_proj' else 'attn_k'}.weight"
            heads = cfg["num_attention_heads"] if module == "q_proj" else cfg["num_key_value_heads"]
            w = llama_cpp_permute(w, heads)
        q6 = embedding_q6_k and gname == "token_embd.weight"
        block = pack_q6_k(w) if q6 else pack_q4_k(w)
        writer.add_tensor(gname, block, raw_shape=block.shape, raw_dtype=T.Q6_K if q6 else T.Q4_K)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("embedding_q6_k", [False, True])
def test_q4_k_scores_as_its_float_parent_and_not_as_an_independent_model(tmp_path, embedding_q6_k):
    parent = _random_llama(tmp_path / "parent", 0)
    path = _write_q4_k(parent, tmp_path / "m-Q4_K.gguf", embedding_q6_k)
    types = GGUFCheckpoint(find_gguf(path)).types
    assert types["model.layers.0.self_attn.q_proj.weight"] == "Q4_K"
    assert types["model.embed_tokens.weight"] == ("Q6_K" if embedding_q6_k else "Q4_K")
    result = _compare(parent, path)
    assert result.mean >= 0.95 and result.verdict == "derived", result.mean
    independent = _compare(_random_llama(tmp_path / "other", 1), path)
    assert independent.verdict != "derived", independent.mean


def test_the_checkpoint_says_what_types_it_read(parity, tmp_path):
    path = write_gguf(parity / "llama_a", tmp_path / "m.gguf", T.Q8_0, embed_type=T.F16)
    assert GGUFCheckpoint(find_gguf(path)).form == "GGUF llama, Q8_0 x 16, F16 x 1"  # Q, K, gate, up of 4 layers


def test_corrupted_bytes_give_one_line_errors_or_a_reading(parity, tmp_path):
    """Random byte mutations of a valid file: every outcome is a reading or one AWMError line, quickly."""
    import time

    from awm_jax.errors import AWMError

    good = write_gguf(parity / "llama_a", tmp_path / "good.gguf", T.Q8_0).read_bytes()
    rng = np.random.default_rng(0)
    header_end = 4096  # metadata and tensor infos: where a mutation changes structure
    for k in range(60):
        raw = bytearray(good)
        for pos in rng.integers(0, header_end, size=int(rng.integers(1, 4))):
            raw[pos] = int(rng.integers(0, 256))
        path = tmp_path / f"m{k}.gguf"
        path.write_bytes(bytes(raw))
        t = time.perf_counter()
        try:
            ckpt = GGUFCheckpoint(find_gguf(path))
            for name in list(ckpt.tensors)[:3]:
                ckpt.read(name)
            load_vocabulary(path)
        except AWMError as e:
            assert "\n" not in str(e)
        assert time.perf_counter() - t < 10
