from __future__ import annotations

import pytest

from robofm.atomic import atomic_dir, atomic_write_text


def test_atomic_dir_publishes_only_complete_directories(tmp_path):
    target = tmp_path / "ckpt"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("killed while writing")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is cleaned up

    with atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"

    with pytest.raises(FileExistsError), atomic_dir(target):
        pass

    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_failed_overwrite_keeps_the_old_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_dir(target) as tmp:
        (tmp / "good.txt").write_text("ok")
    with pytest.raises(OSError), atomic_dir(target, overwrite=True) as tmp:
        raise OSError("No space left on device")
    assert (target / "good.txt").read_text() == "ok"


def test_atomic_write_text_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "f.json"
    atomic_write_text(path, "old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]
