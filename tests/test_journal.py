"""The audit journal never trusts a damaged progress file and never fails on one: damaged lines
and records the audit cannot use are dropped with one warning (their work is done again), a
damaged header starts the audit afresh, and the file is rewritten clean."""

from __future__ import annotations

import os

import pytest

from awm_jax.audit.journal import Journal
from awm_jax.errors import UsageError


def in_range(count: int):
    return lambda record: record.get("kind") == "align" and 0 <= record["pair"] < count


def write(folder, pairs) -> bytes:
    with Journal(folder, "k") as j:
        for k in pairs:
            j.append({"kind": "align", "pair": k})
    return (folder / "progress.jsonl").read_bytes()


def warnings(capsys) -> list[str]:
    lines = capsys.readouterr().err.splitlines()
    assert all(line.startswith("awm_jax: warning: ") for line in lines), lines
    return lines


def test_damaged_middle_line_is_dropped_and_the_file_rewritten(tmp_path, capsys):
    lines = write(tmp_path, [0, 1, 2]).split(b"\n")
    lines[2] = lines[2].replace(b'"pair":1', b'"pair":7')  # checksum no longer matches
    (tmp_path / "progress.jsonl").write_bytes(b"\n".join(lines))
    with Journal(tmp_path, "k") as j:
        assert [r["pair"] for r in j.records] == [0, 2]
        j.append({"kind": "align", "pair": 1})
    got = warnings(capsys)
    assert len(got) == 1 and "1 damaged or unusable line(s) dropped (line 3 first)" in got[0], got
    assert [r["pair"] for r in Journal(tmp_path, "k").records] == [0, 2, 1]
    assert warnings(capsys) == []


def test_damaged_header_starts_afresh(tmp_path, capsys):
    data = write(tmp_path, [0, 1])
    (tmp_path / "progress.jsonl").write_bytes(b"X" + data[1:])
    with Journal(tmp_path, "k") as j:
        assert j.records == []
        j.append({"kind": "align", "pair": 5})
    got = warnings(capsys)
    assert len(got) == 1 and "header" in got[0] and "starts afresh" in got[0], got
    assert [r["pair"] for r in Journal(tmp_path, "k").records] == [5]


def test_records_the_audit_cannot_use_are_dropped(tmp_path, capsys):
    write(tmp_path, [0, 1, 99, 2])  # checksum intact, pair index out of range
    with open(tmp_path / "progress.jsonl", "ab") as f:
        f.write(b'{"kind":"align","pair":"x"}\t' + b"%08x\n" % __import__("zlib").crc32(b'{"kind":"align","pair":"x"}'))
    j = Journal(tmp_path, "k", accept=in_range(3))
    j.close()
    assert [r["pair"] for r in j.records] == [0, 1, 2]
    got = warnings(capsys)
    assert len(got) == 1 and "2 damaged or unusable line(s) dropped (line 4 first)" in got[0], got


def test_a_reader_drops_in_memory_and_leaves_the_file(tmp_path, capsys):
    data = write(tmp_path, [0, 1])
    lines = data.split(b"\n")
    lines[1] = b"garbage"
    damaged = b"\n".join(lines)
    (tmp_path / "progress.jsonl").write_bytes(damaged)
    assert [r["pair"] for r in Journal(tmp_path, "k", writer=False).records] == [1]
    assert (tmp_path / "progress.jsonl").read_bytes() == damaged
    assert len(warnings(capsys)) == 1


def test_fifo_or_folder_in_place_of_the_journal_is_refused(tmp_path):
    os.mkfifo(tmp_path / "progress.jsonl")
    with pytest.raises(UsageError, match="not a regular file"):
        Journal(tmp_path, "k")  # does not wait for a writer
    (tmp_path / "progress.jsonl").unlink()
    (tmp_path / "progress.jsonl").mkdir()
    with pytest.raises(UsageError, match="not a regular file"):
        Journal(tmp_path, "k")
    with pytest.raises(UsageError, match="--fresh"):
        Journal(tmp_path, "k", fresh=True)
