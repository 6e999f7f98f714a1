"""Atomic file writes: a crash or Ctrl-C never leaves a half-written file behind.

Each writer writes to a temporary file in the destination folder and then ``os.replace``s it,
which is atomic on POSIX and Windows within one filesystem.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _default_mode() -> int:
    """Permissions a plain ``open(path, "w")`` would give (``mkstemp`` makes files private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, mode: int | None = None) -> Path:
    """Call ``write(tmp_path)`` and move the result onto ``path`` in one step.

    ``mode``: the file's permissions (e.g. ``0o600`` for a file only its owner may read); default, what a plain
    ``open`` would give. A symbolic link at ``path`` is replaced by the file, never written through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, _default_mode() if mode is None else mode)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"), mode=mode)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, mode: int | None = None) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", mode=mode)
