"""Checkpoint reading: single and sharded files, lazy reads, malformed headers."""

import json
import struct

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from awm_jax.io.checkpoint import MAX_HEADER_BYTES, Checkpoint
from awm_jax.errors import CheckpointError
from awm_jax.synthetic import write_model, write_safetensors


def test_streaming_writer_is_read_by_safetensors_and_by_checkpoint(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = (np.arange(6, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16).reshape(2, 3)
    write_safetensors(tmp_path / "model.safetensors", [("a", a.shape, np.float32, lambda: a),
                                                       ("b", b.shape, ml_dtypes.bfloat16, lambda: b)])
    ref = load_file(tmp_path / "model.safetensors")
    np.testing.assert_array_equal(ref["a"], a)
    ck = Checkpoint(tmp_path)
    np.testing.assert_array_equal(ck.read("a"), a)
    np.testing.assert_array_equal(ck.read("a", slice(1, 3)), a[1:3])
    np.testing.assert_array_equal(ck.read("b").astype(np.float32), b.astype(np.float32))
    assert ck.info("b").dtype == "BF16"


def test_index_names_exactly_the_shards_read(tmp_path):
    specs = [(f"t{i}", (4, 4), np.float32, (lambda i=i: np.full((4, 4), i, np.float32))) for i in range(6)]
    write_model(tmp_path, specs, {"hidden_size": 4}, shard_bytes=100)
    # A stray file that is not in the index (an adapter, a duplicate) must be ignored.
    save_file({"t0": np.zeros((4, 4), np.float32)}, str(tmp_path / "adapter_model.safetensors"))
    ck = Checkpoint(tmp_path)
    assert len(ck.files) == 6 and all("adapter" not in f.name for f in ck.files)
    np.testing.assert_array_equal(ck.read("t5"), np.full((4, 4), 5, np.float32))


def _raw_file(path, header: bytes, data: bytes = b"", length: int | None = None):
    path.write_bytes(struct.pack("<Q", len(header) if length is None else length) + header + data)


@pytest.mark.parametrize(
    "header, data, length, message",
    [
        (b"{not json", b"", None, "not valid JSON"),
        (b"{}", b"", 10**6, "runs past the end"),
        (b"{}", b"", MAX_HEADER_BYTES + 1, "limit"),
        (json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode(), b"1234", None, "outside"),
        (json.dumps({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}).encode(), b"12345678", None, "needs"),
        (json.dumps({"x": {"dtype": 4, "shape": [2], "data_offsets": [0, 8]}}).encode(), b"12345678", None, "not a dtype name"),
        (json.dumps({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                     "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode(), b"123456789012", None, "overlap"),
        (json.dumps([1, 2]).encode(), b"", None, "not a JSON object"),
    ],
)
def test_malformed_headers_are_one_line_errors(tmp_path, header, data, length, message):
    _raw_file(tmp_path / "model.safetensors", header, data, length)
    with pytest.raises(CheckpointError, match=message) as e:
        Checkpoint(tmp_path)
    assert "\n" not in str(e.value) and "model.safetensors" in str(e.value)


def test_truncated_file_and_missing_shard_and_escaping_index(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        Checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "missing.safetensors"}}))
    with pytest.raises(CheckpointError, match="missing"):
        Checkpoint(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(CheckpointError, match="leaves the model folder"):
        Checkpoint(tmp_path)


def test_folder_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no such"):
        Checkpoint(tmp_path / "absent")
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        Checkpoint(tmp_path / "f")
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        Checkpoint(tmp_path / "d")
    (tmp_path / "d" / "pytorch_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(CheckpointError, match="pickle"):
        Checkpoint(tmp_path / "d")


def test_tensor_cut_short_after_header_validation(tmp_path):
    a = np.ones((4, 4), np.float32)
    write_safetensors(tmp_path / "model.safetensors", [("a", a.shape, np.float32, lambda: a)])
    ck = Checkpoint(tmp_path)
    with open(tmp_path / "model.safetensors", "r+b") as f:  # truncated after opening
        f.truncate(f.seek(0, 2) - 8)
    with pytest.raises(CheckpointError, match="cut short"):
        ck.read("a")
    with pytest.raises(CheckpointError, match="cut short"):
        ck.map("a")


def test_map_is_a_read_only_view_equal_to_read(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = (np.arange(6, dtype=np.float32) / 7).astype(ml_dtypes.bfloat16).reshape(2, 3)
    write_safetensors(tmp_path / "model.safetensors", [("a", a.shape, np.float32, lambda: a),
                                                       ("b", b.shape, ml_dtypes.bfloat16, lambda: b)])
    ck = Checkpoint(tmp_path)
    for name in ("a", "b"):
        mapped = ck.map(name)
        assert isinstance(mapped, np.memmap) and not mapped.flags.writeable
        assert mapped.dtype == ck.read(name).dtype and mapped.shape == ck.read(name).shape
        np.testing.assert_array_equal(mapped, ck.read(name))
