"""Output files: what ``--json`` and the audit's outputs may replace (regular files only, symlinks
resolved deliberately), the permissions they get, and list files read with a bound and without a
byte-order mark sneaking into the first path."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from pathlib import Path

import pytest

from awm_jax.cli.audit import read_model_list
from awm_jax.errors import UsageError
from awm_jax.io.atomic import atomic_write, discard_pending, pending, write_target


@pytest.fixture
def umask():
    """Sets the process umask for a test, restoring it after."""
    saved = os.umask(0o022)
    os.umask(saved)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_umask_permissions(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "out.json", b"{}")
    assert stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode) == mode
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left


def test_a_replaced_file_keeps_its_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    target.chmod(0o604)
    atomic_write(target, b"new")
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o604


def test_a_symlink_the_user_named_is_written_through_and_kept(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "run1.json").write_text("old")
    link = tmp_path / "latest.json"
    link.symlink_to(results / "run1.json")
    assert write_target(link, follow_symlinks=True) == (results / "run1.json").resolve()
    atomic_write(link, b"new", follow_symlinks=True)
    assert link.is_symlink() and os.readlink(link) == str(results / "run1.json")
    assert (results / "run1.json").read_bytes() == b"new"
    assert sorted(p.name for p in results.iterdir()) == ["run1.json"]


def test_a_symlink_in_awm_jax_own_folders_is_replaced_never_written_through(tmp_path):
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("untouched")
    (tmp_path / "cache").mkdir()
    planted = tmp_path / "cache" / "index.json"
    planted.symlink_to(victim)
    atomic_write(planted, b"{}")
    assert not planted.is_symlink() and planted.read_bytes() == b"{}"
    assert victim.read_text() == "untouched"
    loop = tmp_path / "cache" / "loop.json"
    loop.symlink_to("loop.json")
    atomic_write(loop, b"{}")
    assert loop.read_bytes() == b"{}"


def test_a_dangling_symlink_creates_its_target(tmp_path):
    link = tmp_path / "latest.json"
    link.symlink_to("made.json")
    atomic_write(link, b"new", follow_symlinks=True)
    assert link.is_symlink() and (tmp_path / "made.json").read_bytes() == b"new"


def test_a_symlink_loop_is_refused_when_followed(tmp_path):
    loop = tmp_path / "loop.json"
    loop.symlink_to("loop.json")
    with pytest.raises(OSError, match="symlink loop") as info:
        atomic_write(loop, b"x", follow_symlinks=True)
    assert info.value.errno == errno.ELOOP and loop.is_symlink()


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "pipe")
    return tmp_path / "pipe"


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "dir").mkdir()
    return tmp_path / "dir"


def _unix_socket(tmp_path: Path) -> Path:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    return tmp_path / "sock"


def _link_to_null(tmp_path: Path) -> Path:
    (tmp_path / "null.json").symlink_to(os.devnull)
    return tmp_path / "null.json"


@pytest.mark.parametrize("make, kind", [
    (lambda tmp: Path(os.devnull), "a character device"),
    (_link_to_null, "a character device (the symlink leads to /dev/null)"),
    (_fifo, "a named pipe"),
    (_folder, "a folder"),
    (_unix_socket, "a socket"),
], ids=["dev-null", "link-to-dev-null", "fifo", "folder", "socket"])
def test_anything_but_a_regular_file_is_refused_and_left_alone(tmp_path, make, kind):
    path = make(tmp_path)
    before = os.lstat(path)
    with pytest.raises(OSError, match="refusing to replace it") as info:
        atomic_write(path, b"x", follow_symlinks=True)
    assert kind in info.value.strerror
    if not path.is_symlink():  # refused whether links are followed or not
        with pytest.raises(OSError, match="refusing to replace it"):
            atomic_write(path, b"x")
    after = os.lstat(path)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_missing_folder_is_reported_before_writing(tmp_path):
    with pytest.raises(OSError, match="does not exist"):
        write_target(tmp_path / "nowhere" / "out.json")


def test_pending_temporaries_are_discarded(tmp_path):
    (tmp_path / ".out.json.tmp").write_text("partial")
    (tmp_path / ".tmp-entry").mkdir()
    (tmp_path / ".tmp-entry" / "grams").write_bytes(b"partial")
    with pending(tmp_path / ".out.json.tmp"), pending(tmp_path / ".tmp-entry"):
        discard_pending()
    assert list(tmp_path.iterdir()) == []
    discard_pending()  # nothing pending any more: a no-op


def test_compare_json_through_a_symlink(tmp_path):
    from awm_jax.cli.compare import main

    (tmp_path / "runs").mkdir()
    link = tmp_path / "latest.json"
    link.symlink_to(tmp_path / "runs" / "result.json")
    assert main(["--example", "--quiet", "--no-cache", "--json", str(link)]) == 0
    assert link.is_symlink()
    assert len(json.loads((tmp_path / "runs" / "result.json").read_text())["pairs"]) == 2


# -- list files ----------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_bytes("\ufefforg/a\n# comment\norg/b\n".encode())
    assert read_model_list(str(plain)) == ["org/a", "org/b"]
    named = tmp_path / "named.txt"
    named.write_bytes("\ufeffbase\torg/a\nchat\torg/b\n".encode())
    assert read_model_list(str(named)) == {"base": "org/a", "chat": "org/b"}


@pytest.mark.parametrize("make, message", [
    (lambda tmp: Path("/dev/zero"), "is a device"),
    (_fifo, "named pipe"),
    (_folder, "is a folder"),
])
def test_a_list_that_is_not_a_regular_file_is_refused(tmp_path, make, message):
    with pytest.raises(UsageError, match=message) as info:
        read_model_list(str(make(tmp_path)))
    assert str(info.value).startswith("--list ")


def test_a_list_at_the_size_limit_is_read(tmp_path, monkeypatch):
    import awm_jax.cli.audit as audit_cli

    monkeypatch.setattr(audit_cli, "MAX_LIST_BYTES", 64)
    exact = tmp_path / "exact.txt"
    exact.write_text("org/a\n" * 10 + "org/b\n"[:4])  # 64 bytes
    assert read_model_list(str(exact))[:2] == ["org/a", "org/a"]
    exact.write_text("org/a\n" * 11)  # 66 bytes
    with pytest.raises(UsageError, match="too large"):
        read_model_list(str(exact))
