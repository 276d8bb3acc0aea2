"""Withdrawal of consent for calls that have already ended.

Used by the callback rule (a refusal from the same number deletes its recent
recordings), by ``fs-consent withdraw`` for an ended call, and by the server's
control socket. A live call is withdrawn by its own driver instead.

A recording under legal hold (``holds.py``) is not erased: the withdrawal of an ended
call is refused with the hold named, and the callback rule skips held calls.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from ..core import consent
from ..store import audit_actions, holds, ledger, recordings
from ..store.ledger import Call, ConsentEvent, Recording


def withdraw_ended_call(call: Call, *, by: str, actor: str, spool_dir: Path, vault) -> list[str]:
    """Delete the call's recordings and record the withdrawal. Returns the deleted ids.

    Raises ``holds.RecordingHeld`` (naming the hold), changing nothing, if a recording
    of the call is under legal hold.
    """
    now = ledger.utcnow()
    remaining = list(call.recordings.where(Recording.state != ledger.DELETED))
    holds.refuse_if_held(rec.id for rec in remaining)
    deleted = [rec.id for rec in remaining if recordings.delete_recording(
        rec.id, reason="withdrawn", actor=actor, vault=vault, spool_dir=spool_dir, at=now, by=by)]
    if call.outcome != consent.WITHDRAWN:
        call.outcome, call.withdrawn_by, call.withdrawn_at = consent.WITHDRAWN, by, now
        call.save()
        ConsentEvent.create(call=call, at=now, kind="withdrawal", outcome=consent.WITHDRAWN, by=by)
        ledger.append_audit(actor, audit_actions.CONSENT_WITHDRAW, "call", call.uuid, by=by, after_call=True)
    return deleted


_ANY_RECENT = ("SELECT 1 FROM call c JOIN recording r ON r.call_id = c.id WHERE c.caller_hash = ? AND c.uuid != ? "
               "AND c.outcome = ? AND c.started_at >= ? AND r.state != ? LIMIT 1")


def any_recent_recorded_call(caller_hash: str, window: dt.timedelta, *, exclude_uuid: str) -> bool:
    """Whether :func:`recent_recorded_calls` can find anything (held or not): one indexed
    read, for the refusal of a number that has no such call (nearly every refusal)."""
    since = ledger.utcnow() - window
    return ledger.sql(_ANY_RECENT, (caller_hash, exclude_uuid, consent.GRANTED, since,
                                    ledger.DELETED)).fetchone() is not None


def recent_recorded_calls(caller_hash: str, window: dt.timedelta, *, exclude_uuid: str,
                          held: bool = False) -> list[Call]:
    """This number's ended, granted calls within the window that still have a recording.

    Calls with a recording under legal hold are left out (the callback rule skips them);
    ``held=True`` returns just those instead, for the audit trail.
    """
    since = ledger.utcnow() - window
    held_calls = holds.held_calls()
    return list(
        Call.select()
        .join(Recording)
        .where(
            (Call.caller_hash == caller_hash)
            & (Call.uuid != exclude_uuid)
            & (Call.outcome == consent.GRANTED)
            & (Call.started_at >= since)
            & (Recording.state != ledger.DELETED)
            & (Call.id.in_(held_calls) if held else Call.id.not_in(held_calls))
        )
        .distinct()
    )
