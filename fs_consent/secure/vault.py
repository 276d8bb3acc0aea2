"""The store of sealed recordings: ``<store>/<recording_id>.age``, age v1 to the recipients.

The store may be a directory shared by several nodes (NFS or another POSIX file system):
a recording id is a random uuid4 (122 random bits, drawn by the node that records), so
two nodes never name a file alike, and each seal writes ``<id>.age.tmp`` and renames it
over nothing; deleting a recording on any node unlinks its one file there.

Sealing runs in worker processes (``seal_worker``) because pyrage holds the GIL for a
whole file; :meth:`Vault.seal` only waits on a pipe, so it blocks the calling greenlet
and nothing else. Opening (:meth:`Vault.decrypt_to`) is for the CLI and runs in-process.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path
from subprocess import PIPE

import gevent
import gevent.queue
import gevent.subprocess
import pyrage

from .files import create_private, fsync_dir
from .seal_worker import HashingWriter, Sealed, VaultError, discard, parse_recipients, seal_file
from .spool import check_recording_id, is_recording_id

__all__ = ["DecryptError", "Sealed", "Vault", "VaultError", "probe_writable", "seal_file", "why"]


def why(error: BaseException | str) -> str:
    """A failure as the log and ``check`` name it: ``ENOSPC on store`` and the like."""
    text = str(error)
    for code, marker in (("ENOSPC", "No space left"), ("EDQUOT", "Disk quota"), ("EROFS", "Read-only file system"),
                         ("EACCES", "Permission denied"), ("EIO", "Input/output error")):
        if marker in text:
            return f"{code} on store"
    return type(error).__name__ if isinstance(error, BaseException) else "seal failed"


def probe_writable(directory: Path, size: int = 4096) -> OSError | None:
    """Write, fsync and remove a small file in ``directory``; the error if that fails."""
    probe = directory / f".probe-{secrets.token_hex(8)}"
    try:
        fd = create_private(probe)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc
    finally:
        with contextlib.suppress(OSError):  # nothing to remove on a read-only file system (EROFS)
            probe.unlink(missing_ok=True)
    return None

_BUFFER = 1 << 20


class DecryptError(VaultError):
    """A recording cannot be opened: damaged, truncated, or not sealed to this identity."""


class _WorkerDied(Exception):
    pass


class _Worker:
    """One ``python -m fs_consent.secure.seal_worker`` child and its pipes."""

    def __init__(self) -> None:
        self.proc = gevent.subprocess.Popen(
            [sys.executable, "-m", "fs_consent.secure.seal_worker"],
            stdin=PIPE,
            stdout=PIPE,
            close_fds=True,
        )

    def ask(self, request: dict) -> dict:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except OSError:  # BrokenPipeError: it died while idle
            raise _WorkerDied from None
        try:
            return json.loads(line)
        except ValueError:  # no reply (it died) or not one (it is broken): replace it
            raise _WorkerDied from None

    def close(self, timeout: float) -> None:
        """Let it finish and exit (end of input); kill it if it takes longer."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except gevent.subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):  # closing flushes: the pipe may be broken
                pipe.close()


class Vault:
    """The store and its seal workers.

    ``workers=0`` or no recipients gives a vault that cannot seal (:meth:`seal` raises
    VaultError) but can still find, open and delete recordings: what the CLI needs.
    """

    def __init__(self, store_dir: Path, recipients: list[str], *, workers: int = 2):
        if workers < 0:
            raise ValueError("workers must not be negative")
        if recipients:
            parse_recipients(recipients)  # a bad one fails now, not at the first recording
        self.store_dir = store_dir
        self._recipients = list(recipients)
        self._size = workers
        self._workers: set[_Worker] = set()
        self._idle: gevent.queue.Queue | None = None
        self._running = False
        if not store_dir.exists():
            store_dir.mkdir(mode=0o700, parents=True)
            os.chmod(store_dir, 0o700)  # mkdir's mode is subject to the umask
        elif not store_dir.is_dir():
            raise VaultError(f"store {store_dir} is not a directory")

    def start(self) -> None:
        """Remove stray ``.age.tmp`` files a crash left (their plaintext is still in the
        spool), then start the workers."""
        if self._running:
            return
        for stray in self.store_dir.glob("*.age.tmp"):
            stray.unlink(missing_ok=True)
        self._idle = gevent.queue.Queue()
        for _ in range(self._size):
            self._spawn()
        self._running = True

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new seals, let the ones in progress finish (up to ``timeout`` s), stop
        the workers. A seal cut off by the timeout fails and keeps its plaintext."""
        if not self._running:
            return
        self._running = False
        with gevent.Timeout(timeout, False):
            while self._workers:
                worker = self._idle.get()
                if worker is not None:  # None: a worker died meanwhile (see _replace)
                    self._workers.discard(worker)
                    worker.close(timeout)
        for worker in list(self._workers):
            worker.kill()
        self._idle.put(None)  # wakes any seal still waiting for a worker; it re-puts it

    def path_for(self, recording_id: str) -> Path:
        return self.store_dir / f"{check_recording_id(recording_id)}.age"

    def verified_ciphertext(self, recording_id: str) -> tuple[int, str] | None:
        """(size, sha256) of the stored ciphertext if it is there and whole, else None.

        Whole: the seal writes ``.tmp``, fsyncs, then renames, so a file under the final
        name was complete; this also checks it reads as age v1 (header with its MAC line,
        then at least the payload nonce and one authenticated chunk).
        """
        path = self.path_for(recording_id)
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
                end = head.find(b"\n--- ")
                mac_end = head.find(b"\n", end + 1) if end >= 0 else -1
                if not head.startswith(b"age-encryption.org/v1\n") or mac_end < 0:
                    return None
                if os.fstat(f.fileno()).st_size - (mac_end + 1) < 16 + 16:
                    return None
                f.seek(0)
                digest = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
                return f.tell(), digest.hexdigest()
        except (FileNotFoundError, IsADirectoryError):
            return None

    def seal(self, plaintext: Path, recording_id: str) -> Sealed:
        """Encrypt the plaintext into the store and remove it; see :func:`seal_file`.

        Blocks only the calling greenlet. A worker that dies is replaced and the seal is
        tried once more. On failure (VaultError) the plaintext is kept for recovery.
        """
        out = self.path_for(recording_id)
        if not self._recipients:
            raise VaultError("no age recipients configured; recording not sealed")
        if not self._size:
            raise VaultError("this vault has no seal workers; recording not sealed")
        if not self._running:
            raise VaultError("the vault is not running; recording not sealed")
        if not plaintext.is_file():
            raise VaultError(f"plaintext of recording {recording_id} is missing: {plaintext}")
        request = {"plaintext": str(plaintext), "out": str(out), "recipients": self._recipients}
        deaths = 0
        while True:
            worker = self._take()
            try:
                reply = worker.ask(request)
            except _WorkerDied:
                self._replace(worker, out)
                deaths += 1
                if deaths == 2:
                    raise VaultError(
                        f"seal workers died twice sealing recording {recording_id}; plaintext kept"
                    ) from None
                continue
            except BaseException:  # e.g. the greenlet was killed: the worker's state is unknown
                self._replace(worker, out)
                raise
            self._idle.put(worker)
            if "error" in reply:
                raise VaultError(reply["error"])
            return Sealed(out, reply["size"], reply["sha256"])

    def delete(self, recording_id: str, *, sync: bool = True, tmp: bool = True) -> bool:
        """Remove the ciphertext and any stray ``.tmp``; True if something was removed.

        For the retention purge, which deletes many at once: ``sync=False`` leaves the
        directory fsync to the caller (:meth:`sync`, once per batch), and ``tmp=False``
        skips looking for a ``.tmp`` the caller knows is not there.
        """
        path = self.path_for(recording_id)
        removed = False
        for candidate in (path, path.with_name(path.name + ".tmp")) if tmp else (path,):
            try:
                candidate.unlink()
                removed = True
            except FileNotFoundError:
                pass
        if removed and sync:
            fsync_dir(self.store_dir)
        return removed

    def sync(self) -> None:
        """Make deletions done with ``sync=False`` durable."""
        fsync_dir(self.store_dir)

    def decrypt_to(self, recording_id_or_path: str | Path, identity, out: Path) -> str:
        """Decrypt a recording (id in this store, or a path to a ``.age`` file) to ``out``.

        ``identity`` is a ``pyrage.x25519.Identity`` or a list of them. ``out`` is created
        0600 and never overwritten; it appears only once the whole file has authenticated.
        Returns the sha256 (hex) of the plaintext. Runs in the calling thread (CLI use).
        """
        if isinstance(recording_id_or_path, str) and is_recording_id(recording_id_or_path):
            src_path = self.path_for(recording_id_or_path)
        else:
            src_path = Path(recording_id_or_path)
        identities = list(identity) if isinstance(identity, (list, tuple)) else [identity]
        if out.exists():
            raise VaultError(f"{out} already exists; not overwriting it")
        try:
            src = open(src_path, "rb", buffering=_BUFFER)
        except OSError as exc:
            raise VaultError(f"cannot read {src_path}: {exc.strerror}") from None
        part = out.with_name(f".{out.name}.{secrets.token_hex(4)}.part")
        try:
            with src, open(create_private(part), "wb", buffering=_BUFFER) as dst:
                writer = HashingWriter(dst)
                try:
                    pyrage.decrypt_io(src, writer, identities)
                except pyrage.DecryptError as exc:
                    raise DecryptError(_decrypt_message(src_path, str(exc))) from None
                except OSError as exc:
                    if exc.errno is not None:  # a real I/O error, handled below
                        raise
                    # a payload chunk failed authentication: age reports it as a bare io error
                    raise DecryptError(_decrypt_message(src_path, str(exc))) from None
                dst.flush()
                os.fsync(dst.fileno())
            try:
                os.link(part, out)
            except FileExistsError:
                raise VaultError(f"{out} already exists; not overwriting it") from None
            fsync_dir(out.parent)
        except OSError as exc:
            raise VaultError(f"cannot decrypt {src_path} to {out}: {exc.strerror or exc}") from None
        finally:
            discard(part)
        return writer.hash.hexdigest()

    def _spawn(self) -> None:
        worker = _Worker()
        self._workers.add(worker)
        self._idle.put(worker)

    def _take(self) -> _Worker:
        """An idle worker that is alive (dead ones found idle are replaced)."""
        while True:
            worker = self._idle.get()
            if worker is None:
                self._idle.put(None)
                raise VaultError("the vault stopped; recording not sealed")
            if worker.proc.poll() is None:
                return worker
            self._replace(worker)

    def _replace(self, worker: _Worker, out: Path | None = None) -> None:
        """Kill a worker whose state is unknown, clean up after it, start another."""
        worker.kill()
        self._workers.discard(worker)
        if out is not None:
            discard(out.with_name(out.name + ".tmp"))
        if self._running:
            self._spawn()
        else:
            self._idle.put(None)  # wakes stop() or a waiting seal


def _decrypt_message(path: Path, detail: str) -> str:
    if "no matching keys" in detail.lower():
        return (
            f"{path} cannot be opened with this identity: it was not sealed to it, "
            "or its header is damaged"
        )
    return f"{path} is damaged or truncated (authentication failed)"
