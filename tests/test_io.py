"""Atomic writes: all or nothing, and ordinary file permissions."""

import json
import os
import stat

import pytest

from debias.core.io import atomic_write, atomic_write_json


def test_atomic_write_json_round_trips_with_ordinary_permissions(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "a.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_json(tmp_path / "a.json", {"x": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
