"""The plaintext spool: where FreeSWITCH writes a recording while the call lasts.

Plaintext lives nowhere else. A recording is ``<spool>/<recording_id>.wav`` where the id
is a uuid4 in hex; a sealed recording has left the spool (see ``vault``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .files import fsync_dir

log = logging.getLogger(__name__)

_RECORDING_ID = re.compile(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}")


class SpoolError(Exception):
    """The spool directory is unusable; the message says why and how to fix it."""


def is_recording_id(value: str) -> bool:
    """True for a uuid4 in lowercase hex (``uuid.uuid4().hex``), the only ids we accept."""
    return isinstance(value, str) and _RECORDING_ID.fullmatch(value) is not None


def check_recording_id(value: str) -> str:
    """Return ``value`` if it is a recording id; raise ValueError otherwise (path safety)."""
    if not is_recording_id(value):
        raise ValueError(f"not a recording id (expected uuid4 hex): {value!r}")
    return value


def prepare_spool(spool_dir: Path) -> None:
    """Create the spool 0700, or accept an existing one private to us or shared with a group.

    0770 (shared with FreeSWITCH's group) is fine; any access for others is refused.
    """
    if not spool_dir.exists():
        spool_dir.mkdir(mode=0o700, parents=True)
        os.chmod(spool_dir, 0o700)  # mkdir's mode is subject to the umask
        return
    st = spool_dir.stat()
    if not stat.S_ISDIR(st.st_mode):
        raise SpoolError(f"spool {spool_dir} is not a directory")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o007:
        raise SpoolError(
            f"spool {spool_dir} is accessible by others (mode {mode:04o}); plaintext "
            f"recordings must not be; run: chmod o-rwx {spool_dir}"
        )
    if not os.access(spool_dir, os.W_OK | os.X_OK):
        raise SpoolError(
            f"spool {spool_dir} is not writable by this user; recordings could not be "
            "sealed or deleted"
        )


def recording_path(spool_dir: Path, recording_id: str) -> Path:
    return spool_dir / f"{check_recording_id(recording_id)}.wav"


def remove_plaintext(spool_dir: Path, recording_id: str) -> None:
    """The one place a recording's plaintext leaves the spool unsealed (withdrawn, refused,
    discarded, settled by recovery); ``store.recordings.remove_files`` adds the ciphertext."""
    recording_path(spool_dir, recording_id).unlink(missing_ok=True)


@dataclass
class RecoveryReport:
    sealed: list[str] = field(default_factory=list)  # recording ids
    deleted: list[str] = field(default_factory=list)  # recording ids
    deferred: list[str] = field(default_factory=list)  # recording ids still being written: left for later
    failed: dict[str, str] = field(default_factory=dict)  # recording id -> error; file left
    unknown: list[str] = field(default_factory=list)  # names of other entries, untouched

    def summary(self) -> str:
        return (
            f"{len(self.sealed)} sealed, {len(self.deleted)} deleted, "
            + (f"{len(self.deferred)} still being written (sealed once closed), " if self.deferred else "")
            + f"{len(self.failed)} failed (left in place), "
            f"{len(self.unknown)} unknown entries left untouched"
        )


def recover(
    spool_dir: Path,
    decide: Callable[[str], str],
    seal: Callable[[Path, str], object],
    ready: Callable[[Path], bool] | None = None,
) -> RecoveryReport:
    """Seal or delete the plaintext a crash left in the spool. Run before accepting calls.

    ``decide(recording_id)`` answers ``'seal'`` (consent held) or ``'delete'`` (refused,
    withdrawn, unknown). A recording whose decision or seal fails, or whose decision is
    anything else, stays where it is and is reported as failed, so a later run can retry.
    Entries that are not ``<recording id>.wav`` are reported by name and not touched;
    their names are never logged (a misconfigured dialplan could put a phone number in one).
    A recording to be sealed for which ``ready(path)`` is False (still being written) is left
    alone and reported as deferred; one to be deleted goes at once.
    """
    report = RecoveryReport()
    for entry in sorted(spool_dir.iterdir()):
        recording_id = entry.name[: -len(".wav")] if entry.name.endswith(".wav") else ""
        if not is_recording_id(recording_id) or not entry.is_file() or entry.is_symlink():
            report.unknown.append(entry.name)
            continue
        try:
            decision = decide(recording_id)
            if decision == "seal" and ready is not None and not ready(entry):
                report.deferred.append(recording_id)  # sealing now would keep half of it
            elif decision == "seal":
                seal(entry, recording_id)
                report.sealed.append(recording_id)
            elif decision == "delete":
                remove_plaintext(spool_dir, recording_id)
                fsync_dir(spool_dir)
                report.deleted.append(recording_id)
            else:
                raise ValueError(f"decide() returned {decision!r}, not 'seal' or 'delete'")
        except Exception as exc:
            report.failed[recording_id] = f"{type(exc).__name__}: {exc}"
            log.error("recovery of recording %s failed (%s); left in the spool",
                      recording_id, type(exc).__name__)
    log.info("spool recovery: %s", report.summary())
    return report


def wav_closed(path: Path) -> bool:
    """Whether the recorder has closed this WAV: its header counts every byte of the file.

    FreeSWITCH (libsndfile) writes the RIFF and ``data`` sizes when it closes the file; while
    it records they say less than the file holds (capture s21: the file grows, the header
    says 0).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return False
    if int.from_bytes(head[4:8], "little") != size - 8:
        return False
    at = 12
    while at + 8 <= len(head):
        name, length = head[at:at + 4], int.from_bytes(head[at + 4:at + 8], "little")
        if name == b"data":
            return at + 8 + length == size
        at += 8 + length + (length & 1)
    return False

