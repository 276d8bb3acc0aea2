"""Data subject rights on the ledger: find a number's calls, restriction, erasure, rectification.

A number is found only through its keyed hash (``protect.FieldProtector.lookup_hash``),
never by opening every sealed value, so ``find`` is one indexed look-up whatever the
size of the ledger. Every written form of a number (``06 ...``, ``+316...``,
``0031 6 ...``, ``040-...``) normalises to the same E.164 value and so the same hash.
The number itself is never printed, logged or put in the audit trail.

Every action names a request of the register (``subject_requests.py``), checks all its
input before it writes, and leaves one audit entry with the request's reference and
pseudonymous ids (call uuids, recording ids, hold numbers) only.

* Erasure (art. 17) deletes recordings (files first, then the row, so a rerun after a
  crash completes it) and erases the personal fields of the calls: ``caller_hash`` and
  ``caller_sealed`` NULL, the rectified details deleted, ``personal_erased_at`` and
  ``personal_erased_reason`` = ``erasure:<ref>``. After that the calls cannot be found
  from the number again. A recording under legal hold is refused (the hold named) and
  its call keeps its number, as the hold keeps the record (``holds.py``). Calls still in
  progress, or whose recording is still being sealed, are skipped.
* Restriction (art. 18) is per call: while one is active the call's recordings are not
  played or exported (``refuse_if_restricted``), except an export for a legal claim.
  Retention ignores restrictions: restricted data is only stored, never kept longer.
* Rectification (art. 16) stores a corrected field (name, address, subject) of a call,
  sealed, in ``call_detail``.
* Objection (art. 21) lives in ``objections.py``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from ..secure import keys
from ..secure.protect import FieldProtector, normalise_phone
from ..store import audit_actions, holds, ledger
from ..store.ledger import Call, CallDetail, LegalHold, Objection, Recording, Restriction, SubjectRequest
from ..store.recordings import mark_deleted, remove_files
from .errors import RecordingRestricted, SubjectError

#: the call details a rectification may set; each is also its protect.py kind
FIELDS = ("name", "address", "subject")
ERASURE_REASON = "erasure"  # Recording.state_reason of a recording deleted by an erasure
#: recording states with nothing left to delete
GONE_STATES = (ledger.DELETED, ledger.DISCARDED)


def protector_for(keys_dir: Path) -> FieldProtector:
    return FieldProtector(keys.load_field_key(keys_dir))


def phone_hash(protector: FieldProtector, number: str) -> str:
    """The look-up hash of a written phone number; SubjectError (without the number) if it is not one."""
    try:
        normal = normalise_phone(number)
    except ValueError as exc:
        raise SubjectError(f"the phone number given is not usable: {exc}") from None
    if not normal:
        raise SubjectError("the phone number given is empty or anonymous")
    return protector.lookup_hash("phone", normal)


def calls_of(caller_hash: str):
    """The calls from a number (by its look-up hash), oldest first; indexed on ``call.caller_hash``."""
    return Call.select().where(Call.caller_hash == caller_hash).order_by(Call.started_at, Call.id)


def active_restriction(call_id: int) -> Restriction | None:
    return (Restriction.select()
            .where((Restriction.call == call_id) & Restriction.lifted_at.is_null())
            .order_by(Restriction.id).first())


def refuse_if_restricted(call_id: int, *, legal_claim: str | None) -> Restriction | None:
    """Raise RecordingRestricted unless the call is unrestricted or a legal claim is given.

    Returns the active restriction (or None), so the caller can audit a legal-claim override.
    """
    restriction = active_restriction(call_id)
    if restriction is not None and not (legal_claim and legal_claim.strip()):
        raise RecordingRestricted(
            f"call {restriction.call.uuid} is restricted (request {restriction.request.ref}, since "
            f"{restriction.placed_at.isoformat(timespec='seconds')}Z): its recordings cannot be played or "
            "exported; only an export for a legal claim is allowed (--legal-claim REASON)"
        )
    return restriction


def _ids(calls: list[Call]) -> list[int]:
    return [call.id for call in calls]


def _no_calls() -> SubjectError:
    return SubjectError("no calls from the number given (none were made, or their personal data was erased)")


# --- find -------------------------------------------------------------------------------


def overview(calls: list[Call]) -> list[dict]:
    """One row per call, for ``subject find``: three more queries whatever the number of calls."""
    ids = _ids(calls)
    recordings: dict[int, list[str]] = {}
    held: dict[int, list[str]] = {}
    restricted: dict[int, str] = {}
    details: dict[int, list[str]] = {}
    if ids:
        for rec in Recording.select().where(Recording.call.in_(ids)).order_by(Recording.started_at):
            recordings.setdefault(rec.call_id, []).append(f"{rec.id}:{rec.state}")
        for hold in holds.active_holds().where(LegalHold.call.in_(ids)).order_by(LegalHold.id):
            held.setdefault(hold.call_id, []).append(f"#{hold.id}")
        for restriction in (Restriction.select(Restriction, SubjectRequest).join(
                SubjectRequest, on=(Restriction.request == SubjectRequest.id))
                .where(Restriction.call.in_(ids) & Restriction.lifted_at.is_null())):
            restricted[restriction.call_id] = restriction.request.ref
        for detail in CallDetail.select(CallDetail.call, CallDetail.field).where(CallDetail.call.in_(ids)):
            details.setdefault(detail.call_id, []).append(detail.field)
    return [{
        "uuid": call.uuid, "started_at": call.started_at, "ended_at": call.ended_at, "outcome": call.outcome,
        "decided_by": call.decided_by, "recordings": " ".join(recordings.get(call.id, [])) or None,
        "held": " ".join(held.get(call.id, [])) or None, "restricted": restricted.get(call.id),
        "details": ",".join(sorted(details.get(call.id, []))) or None,
    } for call in calls]


# --- erasure (art. 17) ---------------------------------------------------------------------


@dataclass
class Erasure:
    """What an erasure did (or, for a refusal, would not do); pseudonymous ids only."""

    request: str
    recordings_only: bool
    calls: list[str] = field(default_factory=list)  # the ended calls it applied to
    in_progress: list[str] = field(default_factory=list)  # calls skipped: not ended, or still being sealed
    deleted: list[str] = field(default_factory=list)  # recording ids
    refused: list[LegalHold] = field(default_factory=list)  # active holds on recordings it could not delete
    erased: list[str] = field(default_factory=list)  # calls whose personal fields were erased
    kept: list[str] = field(default_factory=list)  # calls that keep their number: a recording is held
    objections_unlinked: int = 0  # withdrawn objections whose number hash was erased

    def audit_detail(self) -> dict:
        return {"calls": self.calls, "recordings_deleted": self.deleted, "personal_erased": self.erased,
                "refused": {hold.recording_id: hold.id for hold in self.refused}, "kept": self.kept,
                "in_progress": self.in_progress, "recordings_only": self.recordings_only,
                "objections_unlinked": self.objections_unlinked}


def _calls_to_erase(caller_hash: str, call_uuid: str | None) -> list[Call]:
    calls = list(calls_of(caller_hash))
    if call_uuid is None:
        if not calls:
            raise _no_calls()
        return calls
    call = Call.get_or_none(Call.uuid == call_uuid)
    if call is None:
        raise SubjectError(f"no call with uuid {call_uuid}")
    if call.caller_hash != caller_hash:
        if call.personal_erased_at is not None:
            raise SubjectError(f"the personal data of call {call_uuid} was already erased "
                               f"({call.personal_erased_reason}, {call.personal_erased_at.isoformat(timespec='seconds')}Z)")
        raise SubjectError(f"call {call_uuid} is not from the number given")
    return [call]


def erase(caller_hash: str, request: SubjectRequest, *, actor: str, spool_dir: Path, vault,
          call_uuid: str | None = None, recordings_only: bool = False) -> Erasure:
    """Erase the recordings and (unless ``recordings_only``) the personal fields of a number's calls.

    Raises SubjectError, changing nothing, when there is nothing it may erase: no such
    call, only calls in progress, nothing left, or only recordings under legal hold (the
    message names the holds). Otherwise it erases what it may and reports the rest
    (refused recordings, kept and skipped calls) in the returned :class:`Erasure`.
    """
    calls = _calls_to_erase(caller_hash, call_uuid)
    report = Erasure(request.ref, recordings_only)
    # a recording still "recording" on an ended call is being sealed (a crash's are settled at start-up):
    # the server may yet write its ciphertext, or hold it for the agent's flag, so its call waits too
    sealing = {rec.call_id for rec in Recording.select(Recording.call).where(
        Recording.call.in_(_ids(calls)) & (Recording.state == ledger.RECORDING))}
    ended = [call for call in calls if call.ended_at is not None and call.id not in sealing]
    report.in_progress = [call.uuid for call in calls if call.ended_at is None or call.id in sealing]
    if not ended:
        raise SubjectError(f"{_calls(report.in_progress)} still in progress (or its recording is being "
                           "sealed); erase once it has ended")
    report.calls = [call.uuid for call in ended]
    recordings = list(Recording.select().where(Recording.call.in_(_ids(ended)) & Recording.state.not_in(GONE_STATES))
                      .order_by(Recording.started_at))
    report.refused = holds.holds_on(rec.id for rec in recordings)
    refused_ids = {hold.recording_id for hold in report.refused}
    held_calls = {hold.call_id for hold in holds.active_holds().where(LegalHold.call.in_(_ids(ended)))}
    to_delete = [rec for rec in recordings if rec.id not in refused_ids]
    to_erase = [] if recordings_only else [call for call in ended if call.id not in held_calls]
    report.kept = [] if recordings_only else [call.uuid for call in ended if call.id in held_calls]
    if not to_delete and not to_erase:
        if report.refused:
            raise SubjectError("nothing was erased: " + "; ".join(refusals(report)))
        raise SubjectError(f"nothing left to erase: the recordings of {_calls(report.calls)} "
                           "are already deleted")
    now = ledger.utcnow()
    for rec in to_delete:  # files first: a crash before the transaction leaves rows that a rerun completes
        remove_files(rec.id, vault, spool_dir)
    report.deleted = [rec.id for rec in to_delete]
    report.erased = [call.uuid for call in to_erase]
    with ledger.database.atomic():
        if to_delete:
            mark_deleted(report.deleted, reason=ERASURE_REASON, at=now)
        if to_erase:
            Call.update(caller_hash=None, caller_sealed=None, personal_erased_at=now,
                        personal_erased_reason=f"{ERASURE_REASON}:{request.ref}").where(
                Call.id.in_(_ids(to_erase))).execute()
            CallDetail.delete().where(CallDetail.call.in_(_ids(to_erase))).execute()
        if not recordings_only:  # a withdrawn objection's hash would find the number again; a standing one stays
            report.objections_unlinked = Objection.update(caller_hash=Objection.ERASED_HASH).where(
                (Objection.caller_hash == caller_hash) & Objection.withdrawn_at.is_null(False)).execute()
        ledger.append_audit(actor, audit_actions.SUBJECT_ERASE, "request", request.ref, **report.audit_detail())
    return report


def refusals(report: Erasure) -> list[str]:
    """One line per refused recording, naming its hold."""
    return [f"recording {hold.recording_id} is under legal hold: {holds.describe(hold)}; release the hold "
            f"first (fs-consent hold release {hold.id})" for hold in report.refused]


def _calls(uuids: list[str]) -> str:
    return f"call {uuids[0]} is" if len(uuids) == 1 else f"calls {', '.join(uuids)} are"


# --- restriction (art. 18) -----------------------------------------------------------------


def restrict(caller_hash: str, request: SubjectRequest, *, actor: str) -> list[Restriction]:
    """Restrict every call of the number that is not restricted yet."""
    calls = list(calls_of(caller_hash))
    if not calls:
        raise _no_calls()
    active = {r.call_id for r in Restriction.select(Restriction.call).where(
        Restriction.call.in_(_ids(calls)) & Restriction.lifted_at.is_null())}
    todo = [call for call in calls if call.id not in active]
    if not todo:
        raise SubjectError(f"the {len(calls)} calls from the number given are all restricted already "
                           "(fs-consent subject find shows the requests)")
    now = ledger.utcnow()
    with ledger.database.atomic():
        placed = [Restriction.create(call=call.id, request=request.id, placed_at=now, placed_by=actor)
                  for call in todo]
        ledger.append_audit(actor, audit_actions.SUBJECT_RESTRICT, "request", request.ref,
                            calls=[call.uuid for call in todo])
    return placed


def unrestrict(caller_hash: str, request: SubjectRequest, *, actor: str) -> list[str]:
    """Lift every active restriction on the number's calls; returns the call uuids."""
    calls = list(calls_of(caller_hash))
    if not calls:
        raise _no_calls()
    active = list(Restriction.select(Restriction.id, Restriction.call).where(
        Restriction.call.in_(_ids(calls)) & Restriction.lifted_at.is_null()))
    if not active:
        raise SubjectError(f"none of the {len(calls)} calls from the number given is restricted")
    lifted = {r.call_id for r in active}
    uuids = [call.uuid for call in calls if call.id in lifted]
    with ledger.database.atomic():
        Restriction.update(lifted_at=ledger.utcnow(), lifted_by=actor, lift_request=request.id).where(
            Restriction.id.in_([r.id for r in active])).execute()
        ledger.append_audit(actor, audit_actions.SUBJECT_UNRESTRICT, "request", request.ref, calls=uuids)
    return uuids


# --- rectification (art. 16) ---------------------------------------------------------------


def rectify(call_uuid: str, field_name: str, value: str, request: SubjectRequest, *, actor: str,
            protector: FieldProtector, now: dt.datetime | None = None) -> CallDetail:
    """Set a call's ``name``, ``address`` or ``subject`` to ``value`` (sealed; the value is never audited)."""
    if field_name not in FIELDS:
        raise SubjectError(f"field {field_name!r} is not one of {', '.join(FIELDS)}")
    value = value.strip()
    if not value:
        raise SubjectError("the new value is empty")
    call = Call.get_or_none(Call.uuid == call_uuid)
    if call is None:
        raise SubjectError(f"no call with uuid {call_uuid}")
    if call.personal_erased_at is not None:
        raise SubjectError(f"the personal data of call {call_uuid} was erased ({call.personal_erased_reason}, "
                           f"{call.personal_erased_at.isoformat(timespec='seconds')}Z): there is nothing to rectify")
    now = now or ledger.utcnow()
    sealed = protector.seal(field_name, value)
    with ledger.database.atomic():
        detail = CallDetail.get_or_none((CallDetail.call == call.id) & (CallDetail.field == field_name))
        if detail is None:
            detail = CallDetail(call=call.id, field=field_name)
        detail.value_sealed, detail.updated_at, detail.updated_by, detail.request = sealed, now, actor, request.id
        detail.save()
        ledger.append_audit(actor, audit_actions.SUBJECT_RECTIFY, "request", request.ref, calls=[call.uuid],
                            field=field_name)
    return detail
