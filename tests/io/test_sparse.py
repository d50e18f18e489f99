"""awm_jax.io.sparse: range records of partially downloaded shards."""

from __future__ import annotations

import json

import pytest

from awm_jax.errors import CheckpointError
from awm_jax.io.sparse import MissingRange, SparseFile, ranges_path, write_range


@pytest.fixture
def sparse(tmp_path):
    return SparseFile.create(tmp_path / "s.safetensors", 1000, {"repo_id": "o/n", "etag": "e"}, b"H" * 100)


def test_missing_spans_and_presence(sparse):
    assert sparse.missing(0, 100) == [] and sparse.missing(50, 300) == [(100, 300)]
    s = sparse.with_ranges([write_range(sparse.path, 200, b"x" * 100), write_range(sparse.path, 500, b"y" * 10)])
    s.save()
    s = SparseFile.load(sparse.path)
    assert s.missing(0, 1000) == [(100, 200), (300, 500), (510, 1000)]
    assert s.present_bytes() == 210 and not s.complete()
    s.require(200, 300, "t")  # present and verified
    with pytest.raises(MissingRange, match="tensor 't' was not fetched .* 100 bytes are missing"):
        s.require(250, 400, "t")
    assert s.with_ranges([write_range(sparse.path, 0, b"z" * 1000)]).complete()


def test_overlapping_ranges_are_replaced(sparse):
    s = sparse.with_ranges([write_range(sparse.path, 90, b"a" * 20)])
    assert [(r.start, r.end) for r in s.ranges] == [(90, 110)]  # the header range it overlaps is replaced


def test_changed_bytes_fail_the_check(sparse):
    with open(sparse.path, "r+b") as f:
        f.seek(3)
        f.write(b"X")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        SparseFile.load(sparse.path).require(0, 10, "t")


@pytest.mark.parametrize("damage", [
    lambda d: d.update(format="other"),
    lambda d: d.update(ranges=[[10, 5, "x"]]),
    lambda d: d.update(ranges=[[0, 50, "x"], [40, 60, "y"]]),
    lambda d: d.update(ranges=[[0, 5000, "x"]]),
    lambda d: d.pop("size"),
])
def test_a_damaged_record_is_refused(sparse, damage):
    record = ranges_path(sparse.path)
    data = json.loads(record.read_text())
    damage(data)
    record.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a valid range record"):
        SparseFile.load(sparse.path)


def test_a_file_of_another_size_is_refused(sparse):
    with open(sparse.path, "ab") as f:
        f.write(b"more")
    with pytest.raises(CheckpointError, match="1004 bytes but its range record says 1000"):
        SparseFile.load(sparse.path)


def test_a_complete_file_has_no_record(tmp_path):
    (tmp_path / "m.safetensors").write_bytes(b"x")
    assert SparseFile.load(tmp_path / "m.safetensors") is None
