"""Synchronous sealing, and the worker process that runs it for the vault.

``pyrage`` holds the GIL for a whole file, so the server seals in child processes
(``python -m fs_consent.secure.seal_worker``), one JSON line per request and per reply::

    -> {"plaintext": "/spool/<id>.wav", "out": "/store/<id>.age", "recipients": ["age1..."]}
    <- {"size": 123, "sha256": "<hex of the ciphertext>"}   or   {"error": "<message>"}

The worker exits at end of input. It ignores SIGINT and SIGTERM: its parent decides
when it stops, so a Ctrl-C or a service stop does not cut a seal in half.

This module imports neither gevent nor the rest of fs-consent (but the stdlib-only
``files``), to keep workers light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pyrage

from .files import PRIVATE_MODE, fsync_dir

_BUFFER = 1 << 20


class VaultError(Exception):
    """Sealing, opening or deleting a recording failed; the message says what and where."""


@dataclass(frozen=True)
class Sealed:
    path: Path
    size: int  # of the ciphertext file
    sha256: str  # of the ciphertext file, hex


class HashingWriter:
    """Passes writes to a file, counting and hashing them on the way."""

    def __init__(self, file):
        self._file = file
        self.size = 0
        self.hash = hashlib.sha256()

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self._file.write(data)


def parse_recipients(recipients: list[str]) -> list[pyrage.x25519.Recipient]:
    if not recipients:
        raise VaultError("no age recipients configured: recordings cannot be sealed")
    try:
        return [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    except pyrage.RecipientError:
        raise VaultError("an age recipient is invalid (expected age1...)") from None


def seal_file(plaintext: Path, out_path: Path, recipients: list[str]) -> Sealed:
    """Encrypt ``plaintext`` to ``out_path`` (age v1), durably, then remove the plaintext.

    Writes ``<out_path>.tmp``, fsyncs it, renames it over ``out_path`` and fsyncs the
    directory; only then unlinks the plaintext and fsyncs its directory. If anything
    fails before the rename, no ``.tmp`` is left and the plaintext stays, so sealing can
    be retried. Sealing again after a crash between rename and unlink replaces the
    ciphertext with an equivalent one.
    """
    parsed = parse_recipients(recipients)
    tmp = out_path.with_name(out_path.name + ".tmp")
    try:
        src = open(plaintext, "rb", buffering=_BUFFER)
    except FileNotFoundError:
        raise VaultError(f"plaintext {plaintext} is missing") from None
    except OSError as exc:
        raise VaultError(f"cannot read plaintext {plaintext}: {exc.strerror}") from None
    with src:
        try:
            # not O_EXCL: a .tmp a killed worker left is ours to replace
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_MODE)
            with open(fd, "wb", buffering=_BUFFER) as dst:
                writer = HashingWriter(dst)
                pyrage.encrypt_io(src, writer, parsed)
                dst.flush()
                os.fsync(dst.fileno())
            os.rename(tmp, out_path)
        except BaseException as exc:
            discard(tmp)
            if isinstance(exc, OSError):
                raise VaultError(
                    f"cannot seal {plaintext} to {out_path}: {exc.strerror or exc}"
                ) from None
            if isinstance(exc, pyrage.EncryptError):
                raise VaultError(f"encrypting {plaintext} to {tmp} failed: {exc}") from None
            raise
    try:
        fsync_dir(out_path.parent)
        plaintext.unlink()
        fsync_dir(plaintext.parent)
    except OSError as exc:
        raise VaultError(
            f"sealed {out_path} but could not remove the plaintext {plaintext}: {exc.strerror or exc}"
        ) from None
    return Sealed(out_path, writer.size, writer.hash.hexdigest())


def discard(path: Path) -> None:
    """Best-effort removal on an error path: must not mask the error being handled."""
    with contextlib.suppress(OSError):
        path.unlink()


def _handle(line: bytes) -> dict:
    try:
        request = json.loads(line)
        sealed = seal_file(Path(request["plaintext"]), Path(request["out"]), request["recipients"])
    except VaultError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a reply, not a dead worker: the parent raises it as VaultError
        return {"error": f"seal worker: {type(exc).__name__}: {exc}"}
    return {"size": sealed.size, "sha256": sealed.sha256}


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for line in sys.stdin.buffer:
        sys.stdout.write(json.dumps(_handle(line)) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
