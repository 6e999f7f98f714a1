"""What the labelling server trusts: the host a request names, and the files it may hand out.

Both guard against a run folder or a web page that is not what it seems. A page on another name that reaches the
server through DNS rebinding sends that other name in its Host header (:func:`host_allowed`); an ``audit.json`` or
``images/`` that someone with write access changed may point at any file, through ``..``, an absolute path or a
symbolic link (:func:`read_run_png`). Pure standard library, and nothing here knows about HTTP handlers.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from pathlib import Path
from typing import Iterable
from urllib.parse import urlsplit

MAX_IMAGE = 64 << 20     # bytes of one image
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ run files
def read_run_png(root: str | os.PathLike, relative: str) -> bytes:
    """The PNG at ``relative`` (a path as ``audit.json`` gives it) inside the folder ``root``.

    ``PermissionError`` when the path is absolute, climbs out with ``..``, resolves outside ``root``, passes
    through a symbolic link (any component, the file included: each is opened with ``O_NOFOLLOW`` beneath the
    one before), or is not a regular file starting with the PNG signature. Why: ``audit.json`` and ``images/``
    are files anyone with write access to the run can change, and the server must not hand out other files.
    """
    base, path = Path(root).resolve(), Path(relative.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or not (base / path).resolve().is_relative_to(base):
        raise PermissionError(f"{relative}: not a path inside the run folder")
    fd = _open_beneath(base, path.parts)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PermissionError(f"{relative}: not a regular file")
        data = fh.read(MAX_IMAGE + 1)
    if len(data) > MAX_IMAGE or not data.startswith(PNG_SIGNATURE):
        raise PermissionError(f"{relative}: not a PNG image")
    return data


def _open_beneath(base: Path, parts: tuple[str, ...]) -> int:
    """Open ``base/parts…`` for reading, refusing a symbolic link at any step (``ELOOP`` / ``ENOTDIR``)."""
    if os.open not in os.supports_dir_fd or not hasattr(os, "O_NOFOLLOW"):  # no openat: check, then open
        path = base
        for part in parts:
            path = path / part
            if path.is_symlink():
                raise PermissionError(f"{path}: a symbolic link")
        return os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    folder = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_DIRECTORY", 0), dir_fd=folder)
            os.close(folder)
            folder = inner
        # O_NONBLOCK: a FIFO planted under the image's name must not hold the thread
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    finally:
        os.close(folder)


# ------------------------------------------------------------------------------------------ host names
def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str]:
    """The host names requests may name: localhost, the bound address (unless it is every address: 0.0.0.0,
    ::), and ``extra`` (``--allow-host``). Loopback addresses are always allowed (:func:`host_allowed`)."""
    names = {"localhost", *(_canonical(name) for name in extra)}
    if not _is_wildcard(host):
        names.add(_canonical(host))
    return frozenset(names)


def host_allowed(header: str, allowed: frozenset[str]) -> bool:
    """Whether a Host header (``name[:port]``) names an allowed host: a page on another name reaching this
    server through DNS rebinding sends that other name, and is refused."""
    try:
        name = urlsplit("//" + header.strip()).hostname or ""
    except ValueError:  # "[::1" and the like
        return False
    name = _canonical(name)
    return bool(name) and (name in allowed or is_loopback(name))


def _canonical(name: str) -> str:
    name = name.strip().strip("[]").lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _is_wildcard(host: str) -> bool:
    try:
        return not host or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False
