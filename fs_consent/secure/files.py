"""File helpers: private (0600) files, checked and created, and durable directory entries.

Stdlib only: the seal worker imports it and must stay light.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_MODE = 0o600


class NotPrivate(PermissionError):
    """A secret file or directory others may reach; the message names it and the fix."""


def check_private(path: Path, *, fd: int | None = None, error: type[Exception] = NotPrivate) -> None:
    """Refuse, raising ``error``, a secret file that is not a regular file of ours that only we
    may access (0600 or tighter). ``fd``: check the file already open there, not the name."""
    st = _stat(path if fd is None else fd, path, error)
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} is not a regular file")
    _only_ours(path, st, "600", error)


def check_private_dir(path: Path, *, error: type[Exception] = NotPrivate) -> None:
    """The same for a directory of secrets (the keys): ours, 0700 or tighter."""
    st = _stat(path, path, error)
    if not stat.S_ISDIR(st.st_mode):
        raise error(f"{path} is not a directory")
    _only_ours(path, st, "700", error)


def _stat(target: Path | int, path: Path, error: type[Exception]) -> os.stat_result:
    try:
        return os.stat(target)
    except FileNotFoundError:
        raise error(f"{path} does not exist") from None


def _only_ours(path: Path, st: os.stat_result, fix: str, error: type[Exception]) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise error(f"{path} is accessible by group/others (mode {mode:04o}); run: chmod {fix} {path}")
    if st.st_uid != os.geteuid():
        raise error(f"{path} is owned by uid {st.st_uid}, not by the user running fs-consent "
                    f"(uid {os.geteuid()}); run: chown {os.geteuid()} {path}")


def create_private(path: Path) -> int:
    """Create ``path`` 0600 for writing, never over an existing file (``FileExistsError``); the fd."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_MODE)


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (a new, renamed or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
