"""face3d.io_utils: the shared atomic writer (temp file + os.replace) used by image, mesh,
model and download writers."""
from __future__ import annotations

import errno

import pytest

from face3d.errors import OutputError
from face3d.io_utils import atomic_write, write_bytes_atomic


def test_write_bytes_creates_folders_and_sets_normal_permissions(tmp_path):
    dst = tmp_path / "a" / "b" / "m.npz"
    assert write_bytes_atomic(dst, b"123") == dst
    assert dst.read_bytes() == b"123"
    # mkstemp alone would leave 0o600; a fresh file gets what open() would give (0o666 less umask)
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert dst.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    dst.chmod(0o640)
    write_bytes_atomic(dst, b"456")  # replacing keeps the old file's mode
    assert dst.read_bytes() == b"456" and dst.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in dst.parent.iterdir()) == ["m.npz"]


def test_missing_folder_is_an_error_without_make_parents(tmp_path):
    dst = tmp_path / "missing" / "x.bin"
    with pytest.raises(OutputError) as ei:
        write_bytes_atomic(dst, b"x", make_parents=False)
    assert str(ei.value) == f"{dst}: output directory {dst.parent} does not exist"
    assert not dst.parent.exists()


def test_blocking_file_and_custom_error(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("x")

    class MyError(OutputError):
        pass

    with pytest.raises(MyError) as ei:
        write_bytes_atomic(blocker / "sub" / "x.bin", b"x", error=lambda p, r: MyError(f"cannot write {p}: {r}"))
    assert str(ei.value) == f"cannot write {blocker / 'sub' / 'x.bin'}: {blocker} is a file, not a directory"
    assert ei.value.errno in (errno.EEXIST, errno.ENOTDIR)


def test_failure_in_body_or_rename_leaves_no_temp_file(tmp_path):
    dst = tmp_path / "d.part_target"
    dst.write_bytes(b"old")
    with pytest.raises(ValueError):
        with atomic_write(dst, suffix=".part") as tmp:
            assert tmp.name.startswith(".d.part_target.") and tmp.name.endswith(".part")
            tmp.write_bytes(b"half")
            raise ValueError("hash mismatch")
    assert dst.read_bytes() == b"old"
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        write_bytes_atomic(tmp_path / "dir", b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.part_target", "dir"]
