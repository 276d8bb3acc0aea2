"""The recordings repository: the only code that writes ``Recording.state`` or deletes a recording.

A recording's life: ``recording`` (:func:`started`) -> ``sealed`` (:func:`sealed`), or
``discarded``/``failed`` (:func:`not_sealed`), and from any of them ``deleted``.

Deleting is files first, then the ledger (state and audit entry in one transaction):
a kill between the two leaves a row that still says the recording exists, with fewer
bytes than it says, never a row that says "deleted" over bytes still on disk.
:func:`delete_recording` does both; the driver deletes the files mid-call and its
``facts.RecordingDeleted`` does the ledger's part later, in the writer's thread
(:func:`record_deleted`). An erasure removes the files of all its recordings
(:func:`remove_files`), then marks them in the one transaction that writes its request's
audit entry (:func:`mark_deleted`). The retention purge is the one deliberate exception
to "files first": it marks a whole batch deleted together with its ``purge_pending``
journal, then removes the files, so a kill is completed by the next run.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ..secure.spool import remove_plaintext
from . import audit_actions, holds, ledger
from .ledger import DELETED, FAILED, RECORDING, SEALED, Recording

# hand-written (``ledger.sql``): these run for every recording, in the database thread.
# No call row: call_id NULL fails (NOT NULL) rather than attach the recording by guesswork.
_STARTED = ("INSERT INTO recording (id, call_id, state, started_at, node) VALUES (?, (SELECT id FROM call WHERE "
            "instance = ?), ?, ?, ?) ON CONFLICT (id) DO NOTHING")
_SEALED = "UPDATE recording SET state = ?, sealed_at = ?, size = ?, sha256 = ? WHERE id = ? AND state IN (?, ?)"
_FLAGGED = ("SELECT 1 FROM call_flag WHERE call_id = (SELECT call_id FROM recording WHERE id = ?) "
            "AND kind IN (%s) LIMIT 1" % ", ".join("?" * len(holds.FLAG_KINDS)))


def started(recording_id: str, instance: str, at: dt.datetime, *, node: str | None = None) -> None:
    """The row of a recording FreeSWITCH was told to start (once; a replay changes nothing), on ``node``."""
    ledger.sql(_STARTED, (recording_id, instance, RECORDING, at, node))


def sealed(recording_id: str, *, size: int, sha256: str, at: dt.datetime | None = None,
           recovered: bool = False) -> bool:
    """Mark it sealed, audit it, and hold it for its call's agent flag; False if it was not
    ``recording`` (nor, for start-up ``recovered`` ones, ``failed``): deleted meanwhile, or sealed already."""
    also = FAILED if recovered else RECORDING
    if not ledger.sql(_SEALED, (SEALED, at or ledger.utcnow(), size, sha256, recording_id, RECORDING, also)).rowcount:
        return False
    detail = {"recovered": True} if recovered else {}
    ledger.append_audit("server", audit_actions.RECORDING_SEAL, "recording", recording_id, size=size, sha256=sha256,
                        **detail)
    if ledger.sql(_FLAGGED, (recording_id, *holds.FLAG_KINDS)).fetchone():
        holds.hold_flagged(recording_id)  # the agent flagged aggression during the call
    return True


def not_sealed(recording_id: str, state: str, reason: str) -> None:
    """A recording that will not be sealed (``discarded``: no audio, or ``failed``: its plaintext
    waits in the spool for recovery); only while it is still ``recording``."""
    Recording.update(state=state, state_reason=reason).where(
        (Recording.id == recording_id) & (Recording.state == RECORDING)).execute()


def remove_files(recording_id: str, vault, spool_dir: Path | None, *, sync: bool = True, tmp: bool = True) -> None:
    """Every byte of a recording: its plaintext in the spool (``spool_dir`` None: known gone)
    and its ciphertext in the store. ``sync``/``tmp``: see ``Vault.delete``."""
    if spool_dir is not None:
        remove_plaintext(spool_dir, recording_id)
    vault.delete(recording_id, sync=sync, tmp=tmp)


def mark_deleted(recording_ids, *, reason: str, at: dt.datetime) -> int:
    """Set-based: the recordings among ``recording_ids`` (ids, or a subquery of ids) not yet
    deleted are marked so; returns how many. No audit entry: the caller writes its own."""
    return Recording.update(state=DELETED, state_reason=reason, deleted_at=at).where(
        Recording.id.in_(recording_ids) & (Recording.state != DELETED)).execute()


def record_deleted(recording_id: str, *, reason: str, actor: str = "server", at: dt.datetime | None = None,
                   **detail) -> bool:
    """The ledger's part of a deletion whose files are gone: state and audit entry, together and once."""
    with ledger.database.atomic():
        if not mark_deleted([recording_id], reason=reason, at=at or ledger.utcnow()):
            return False
        ledger.append_audit(actor, audit_actions.RECORDING_DELETE, "recording", recording_id, reason=reason,
                            **detail)
    return True


def delete_recording(recording_id: str, *, reason: str, actor: str, vault, spool_dir: Path | None,
                     at: dt.datetime | None = None, **detail) -> bool:
    """Delete a recording: its files, then its state and audit entry. One under legal hold is
    kept, and the refusal audited. True if this call deleted it (False: held, or deleted already)."""
    held = holds.holds_on([recording_id])
    if held:
        ledger.append_audit(actor, audit_actions.RECORDING_DELETE_REFUSED, "recording", recording_id, reason=reason,
                            holds=[hold.id for hold in held])
        return False
    remove_files(recording_id, vault, spool_dir)
    return record_deleted(recording_id, reason=reason, actor=actor, at=at, **detail)

