"""Legal hold: recordings kept beyond their term and against erasure (police cases).

The statement lets the municipality hand recordings of aggression or intimidation to
the police. A hold names a recording (and so its call), a reason and a case reference;
it is active until released. While a recording has an active hold:

* the retention purge skips it, and its call record keeps its personal fields;
* withdrawal of consent for the ended call is refused (command) or skipped (callback),
  with the hold named;
* it can still be exported for the police (``police_export.py``): that is the point.

During the call the agent's aggression key flags the call (``CallFlag``). The flag is
kept whatever happens to the recording; when a recording of the call is sealed, a hold
is placed for the flag (no case reference yet: the privacy officer adds a hold with the
case, or releases the flag's hold). Every flag, hold and release is audited, with
pseudonymous ids only (notes are free text and stay out of the audit detail).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from ..core.references import REFERENCE_RULE, is_reference
from ..secure.spool import is_recording_id
from . import audit_actions, ledger
from .ledger import Call, CallFlag, LegalHold, Recording

REASONS = ("aggression", "intimidation", "other")
FLAG_KINDS = ("aggression",)  # agent flags that put the sealed recording under hold
FLAG_NOTE = "placed by the agent's aggression key during the call"
# a reference (police case, subject request): it may name files of an export, so nothing path-like


class HoldError(Exception):
    """Bad input for a hold command; nothing was changed. The message says why."""


class RecordingHeld(HoldError):
    """An erasure was refused because the recording is under legal hold (named)."""


def check_case_ref(value: str) -> str:
    """A case reference: 1-64 of letters, digits, ``.``, ``_``, ``-``; no leading dot.

    It names files and directories of an export, so nothing path-like passes.
    """
    if not is_reference(value):
        raise HoldError(f"case reference {value!r} is not allowed: {REFERENCE_RULE}")
    return value


def check_reason(value: str) -> str:
    if value not in REASONS:
        raise HoldError(f"reason {value!r} is not one of {', '.join(REASONS)}")
    return value


# --- queries ------------------------------------------------------------------------


def active_holds():
    """All holds not released (a query)."""
    return LegalHold.select().where(LegalHold.released_at.is_null())


def held_recordings():
    """Subquery: the ids of recordings with an active hold."""
    return LegalHold.select(LegalHold.recording).where(LegalHold.released_at.is_null())


def held_calls():
    """Subquery: the ids of calls with a recording under an active hold."""
    return LegalHold.select(LegalHold.call).where(LegalHold.released_at.is_null())


def holds_on(recording_ids: Iterable[str]) -> list[LegalHold]:
    ids = list(recording_ids)
    if not ids:
        return []
    return list(active_holds().where(LegalHold.recording.in_(ids)).order_by(LegalHold.id))


def is_held(recording_id: str) -> bool:
    return active_holds().where(LegalHold.recording == recording_id).exists()


def describe(hold: LegalHold) -> str:
    """``hold #3 (case PV-2026-17, aggression, placed 2026-11-30T10:00:00Z by alice)``."""
    case = f"case {hold.case_ref}" if hold.case_ref else "agent flag, no case yet"
    return (f"hold #{hold.id} ({case}, {hold.reason}, placed "
            f"{hold.placed_at.isoformat(timespec='seconds')}Z by {hold.placed_by})")


def refuse_if_held(recording_ids: Iterable[str]) -> None:
    """Raise RecordingHeld naming the hold if any of these recordings is held."""
    held = holds_on(recording_ids)
    if held:
        hold = held[0]
        raise RecordingHeld(
            f"recording {hold.recording_id} is under legal hold: {describe(hold)}; it cannot be "
            f"erased until the hold is released (fs-consent hold release {hold.id})"
        )


# --- add, release, list -------------------------------------------------------------


def resolve(target: str) -> tuple[Call, list[Recording]]:
    """A recording id or a call uuid -> (the call, the recordings meant)."""
    if is_recording_id(target):
        rec = Recording.get_or_none(Recording.id == target)
        if rec is None:
            raise HoldError(f"no recording with id {target}")
        return rec.call, [rec]
    call = Call.get_or_none(Call.uuid == target)
    if call is None:
        raise HoldError(f"no recording or call with id {target!r}")
    return call, list(call.recordings.order_by(Recording.started_at))


def _not_holdable(rec: Recording) -> str:
    if rec.state == ledger.DELETED:
        when = f" on {rec.deleted_at.isoformat(timespec='seconds')}Z" if rec.deleted_at else ""
        return f"recording {rec.id} was deleted{when} ({rec.state_reason}): there is nothing left to hold"
    if rec.state == ledger.RECORDING:
        return (f"recording {rec.id} is still being recorded; hold it once the call has ended "
                "(or let the agent flag it with the aggression key)")
    if rec.state == ledger.DISCARDED:
        return f"recording {rec.id} has no audio (discarded): there is nothing to hold"
    return f"recording {rec.id} is {rec.state} ({rec.state_reason}), not sealed: there is nothing to hold"


def add(target: str, *, reason: str, case_ref: str, note: str | None, actor: str,
        now: dt.datetime | None = None) -> list[LegalHold]:
    """Place a hold on a recording, or on every sealed recording of a call."""
    check_reason(reason)
    check_case_ref(case_ref)
    now = now or ledger.utcnow()
    with ledger.database.atomic():
        call, recordings = resolve(target)
        if not recordings:
            raise HoldError(f"call {call.uuid} has no recording (outcome {call.outcome}): nothing to hold")
        sealed = [rec for rec in recordings if rec.state == ledger.SEALED]
        if not sealed:
            raise HoldError(_not_holdable(recordings[-1]))
        placed = []
        for rec in sealed:
            same = active_holds().where((LegalHold.recording == rec.id) & (LegalHold.case_ref == case_ref)).first()
            if same is not None:
                raise HoldError(f"recording {rec.id} is already under {describe(same)}")
            hold = LegalHold.create(recording=rec.id, call=call.id, reason=reason, case_ref=case_ref,
                                    note=note or None, placed_at=now, placed_by=actor)
            ledger.append_audit(actor, audit_actions.HOLD_ADD, "recording", rec.id, hold=hold.id, reason=reason,
                                case_ref=case_ref, call=call.uuid)
            placed.append(hold)
    return placed


def release(target: str, *, actor: str, case_ref: str | None = None, note: str | None = None,
            now: dt.datetime | None = None) -> list[LegalHold]:
    """Release a hold by its number, or the active holds on a recording or call (one case's
    with ``case_ref``). A recording past its term is deleted by the next purge."""
    if case_ref is not None:
        check_case_ref(case_ref)
    now = now or ledger.utcnow()
    with ledger.database.atomic():
        if target.isdigit():
            hold = LegalHold.get_or_none(LegalHold.id == int(target))
            if hold is None:
                raise HoldError(f"no hold #{target}")
            if hold.released_at is not None:
                raise HoldError(f"hold #{hold.id} was already released on "
                                f"{hold.released_at.isoformat(timespec='seconds')}Z by {hold.released_by}")
            if case_ref is not None and hold.case_ref != case_ref:
                raise HoldError(f"{describe(hold)} is not for case {case_ref}")
            holds = [hold]
        else:
            _call, recordings = resolve(target)
            query = active_holds().where(LegalHold.recording.in_([r.id for r in recordings]))
            if case_ref is not None:
                query = query.where(LegalHold.case_ref == case_ref)
            holds = list(query.order_by(LegalHold.id))
            if not holds:
                case = f" for case {case_ref}" if case_ref else ""
                raise HoldError(f"no active hold on {target}{case}")
        for hold in holds:
            hold.released_at, hold.released_by, hold.release_note = now, actor, note or None
            hold.save()
            ledger.append_audit(actor, audit_actions.HOLD_RELEASE, "recording", hold.recording_id, hold=hold.id,
                                case_ref=hold.case_ref, call=hold.call.uuid)
    return holds


def rows(*, include_released: bool = False, case_ref: str | None = None) -> list[dict]:
    """Holds for ``hold list``, newest first."""
    query = LegalHold.select(LegalHold, Recording, Call).join(Recording).switch(LegalHold).join(Call)
    if not include_released:
        query = query.where(LegalHold.released_at.is_null())
    if case_ref is not None:
        query = query.where(LegalHold.case_ref == case_ref)
    return [{
        "hold": h.id, "recording_id": h.recording.id, "call_uuid": h.call.uuid, "reason": h.reason,
        "case_ref": h.case_ref, "placed_at": h.placed_at, "placed_by": h.placed_by,
        "released_at": h.released_at, "released_by": h.released_by,
        "recording_state": h.recording.state, "recording_started_at": h.recording.started_at,
        "note": h.note,
    } for h in query.order_by(LegalHold.id.desc())]


# --- agent flags --------------------------------------------------------------------


def flag_call(call_id: int, call_uuid: str, kind: str, *, by: str, at: dt.datetime,
              actor: str = "server") -> CallFlag:
    """Record an agent's flag; hold a recording of the call that is already sealed."""
    flag = CallFlag.create(call=call_id, kind=kind, at=at, by=by)
    ledger.append_audit(actor, audit_actions.CALL_FLAG, "call", call_uuid, kind=kind, by=by)
    if kind in FLAG_KINDS:
        for rec in Recording.select().where((Recording.call == call_id) & (Recording.state == ledger.SEALED)):
            _hold_for_flag(rec, flag, actor)
    return flag


def hold_flagged(recording_id: str, *, actor: str = "server") -> list[LegalHold]:
    """The recording was just sealed: hold it for every flag its call carries."""
    rec = Recording.get_or_none(Recording.id == recording_id)
    if rec is None or rec.state != ledger.SEALED:
        return []
    flags = CallFlag.select().where((CallFlag.call == rec.call_id) & CallFlag.kind.in_(FLAG_KINDS))
    return [hold for flag in flags if (hold := _hold_for_flag(rec, flag, actor)) is not None]


def _hold_for_flag(rec: Recording, flag: CallFlag, actor: str) -> LegalHold | None:
    exists = LegalHold.select().where((LegalHold.recording == rec.id) & (LegalHold.flag == flag.id)).exists()
    if exists:
        return None
    hold = LegalHold.create(recording=rec.id, call=rec.call_id, flag=flag.id, reason=flag.kind, case_ref=None,
                            note=FLAG_NOTE, placed_at=ledger.utcnow(), placed_by=actor)
    ledger.append_audit(actor, audit_actions.HOLD_ADD, "recording", rec.id, hold=hold.id, reason=flag.kind,
                        flag=flag.id, call=rec.call.uuid)
    return hold
