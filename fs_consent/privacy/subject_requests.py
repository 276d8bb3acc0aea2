"""The register of data subject requests (GDPR arts. 15-21) and their due dates.

Every subject-rights action names a request in this register. A request is registered
once the privacy officer has checked the requester's identity (DigiD in the
municipality's portal); its decision is due one calendar month after receipt, or three
after an extension (art. 12(3): "extended by two further months"). Months count as the
GDPR counts them (Regulation 1182/71): the same day of the month, or that month's last
day when it has no such day (31 January -> 28/29 February).

An action may act on a request that is granted, or undecided and not past its due date;
``require`` refuses the rest with a message saying what to do. Register, extension and
decision are audited with the request's reference, kind and dates only: notes and
reasons are free text that may hold personal data, so they stay out of the audit trail
and out of every error message.
"""

from __future__ import annotations

import calendar
import datetime as dt

from peewee import IntegrityError

from ..core.references import REFERENCE_RULE, is_reference
from ..store import audit_actions, ledger
from ..store.ledger import Call, CallDetail, Objection, Restriction, SubjectRequest

KINDS = ("access", "erase", "restrict", "rectify", "object")
DECISIONS = ("granted", "refused")
MONTHS = 1  # the decision is due one calendar month after receipt
EXTENDED_MONTHS = 3  # ... or three after an extension by two further months


class RequestError(Exception):
    """Bad input for the register, or an action its request does not allow; nothing was changed.

    The message never contains personal data (no note or reason text).
    """


def check_ref(ref: str) -> str:
    """A request reference: 1-64 of letters, digits, ``.``, ``_``, ``-``; no leading dot."""
    if not is_reference(ref):  # the value is not repeated: a mistyped reference could be a name
        raise RequestError(f"the request reference is not allowed: {REFERENCE_RULE}")
    return ref


def due_date(received: dt.date, months: int = 1) -> dt.date:
    """``received`` plus ``months`` calendar months, clamped to the last day of the month."""
    index = received.year * 12 + received.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    return dt.date(year, month, min(received.day, calendar.monthrange(year, month)[1]))


def _today(today: dt.date | None) -> dt.date:
    return today or dt.date.today()


def _day(at: dt.datetime) -> str:
    """The local calendar day of a ledger time (naive UTC), like the due dates."""
    return at.replace(tzinfo=dt.timezone.utc).astimezone().date().isoformat()


def status(req: SubjectRequest, today: dt.date) -> str:
    """``granted`` | ``refused`` | ``overdue`` (undecided past its due date) | ``open``."""
    if req.decision:
        return req.decision
    return "overdue" if today > req.due_on else "open"


def _check_text(value: str | None, what: str) -> str:
    if value is None or not value.strip():
        raise RequestError(f"{what} is required and must not be empty")
    return value.strip()


def get(ref: str) -> SubjectRequest:
    """The request with this reference; RequestError if there is none."""
    check_ref(ref)
    req = SubjectRequest.get_or_none(SubjectRequest.ref == ref)
    if req is None:
        raise RequestError(f"no request {ref} in the register (fs-consent requests list)")
    return req


# --- register, extend, decide ---------------------------------------------------------------


def add(ref: str, kind: str, received_on: dt.date, *, actor: str, note: str | None = None,
        today: dt.date | None = None) -> SubjectRequest:
    """Register a request whose requester's identity ``actor`` has checked."""
    check_ref(ref)
    if kind not in KINDS:
        raise RequestError(f"kind {kind!r} is not one of {', '.join(KINDS)}")
    today = _today(today)
    if received_on > today:
        raise RequestError(f"the received date {received_on.isoformat()} is in the future (today is "
                           f"{today.isoformat()})")
    due = due_date(received_on, MONTHS)
    with ledger.database.atomic():
        if SubjectRequest.select().where(SubjectRequest.ref == ref).exists():
            raise RequestError(f"request {ref} is already in the register (fs-consent requests show {ref})")
        try:
            req = SubjectRequest.create(ref=ref, kind=kind, received_on=received_on, due_on=due,
                                        identity_verified_by=actor, registered_at=ledger.utcnow(),
                                        note=(note or "").strip() or None)
        except IntegrityError:  # registered meanwhile by someone else
            raise RequestError(f"request {ref} is already in the register") from None
        ledger.append_audit(actor, audit_actions.REQUEST_ADD, "request", ref, kind=kind,
                            received_on=received_on.isoformat(), due_on=due.isoformat(), identity_verified=True)
    return req


def extend(ref: str, reason: str, *, actor: str, today: dt.date | None = None) -> SubjectRequest:
    """Extend the due date to three calendar months after receipt (once, while undecided)."""
    reason = _check_text(reason, "a reason for the extension")
    today = _today(today)
    with ledger.database.atomic():
        req = get(ref)
        if req.decision:
            raise RequestError(f"request {ref} was already decided ({req.decision} on "
                               f"{_day(req.decided_at)}): there is nothing to extend")
        if req.extended_at is not None:
            raise RequestError(f"request {ref} was already extended (on {_day(req.extended_at)}, "
                               f"due {req.due_on.isoformat()}); the GDPR allows one extension")
        due = due_date(req.received_on, EXTENDED_MONTHS)
        if today > due:
            raise RequestError(f"request {ref}: an extension would end on {due.isoformat()}, which has passed "
                               f"too; decide it (fs-consent requests decide {ref})")
        previous = req.due_on
        req.due_on, req.extended_at, req.extension_reason = due, ledger.utcnow(), reason
        req.save()
        ledger.append_audit(actor, audit_actions.REQUEST_EXTEND, "request", ref, kind=req.kind,
                            received_on=req.received_on.isoformat(), previous_due_on=previous.isoformat(),
                            due_on=due.isoformat())
    return req


def decide(ref: str, decision: str, reason: str, *, actor: str, today: dt.date | None = None) -> SubjectRequest:
    """Record the decision (once). A late decision is recorded too, and marked late in the audit."""
    if decision not in DECISIONS:
        raise RequestError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    reason = _check_text(reason, "a reason for the decision")
    today = _today(today)
    with ledger.database.atomic():
        req = get(ref)
        if req.decision:
            raise RequestError(f"request {ref} was already decided: {req.decision} on "
                               f"{_day(req.decided_at)} by {req.decided_by}")
        req.decision, req.decision_reason = decision, reason
        req.decided_at, req.decided_by = ledger.utcnow(), actor
        req.save()
        ledger.append_audit(actor, audit_actions.REQUEST_DECIDE, "request", ref, kind=req.kind, decision=decision,
                            received_on=req.received_on.isoformat(), due_on=req.due_on.isoformat(),
                            decided_on=today.isoformat(), late=today > req.due_on)
    return req


def require(ref: str, kind: str, *, today: dt.date | None = None) -> SubjectRequest:
    """The request an action of ``kind`` names, if it may be acted on; else RequestError saying why.

    Allowed: a granted request, or an undecided one not past its due date.
    """
    req = get(ref)
    if req.kind != kind:
        raise RequestError(f"request {ref} is of kind {req.kind}; this action needs a request of kind {kind}")
    if req.decision == "refused":
        raise RequestError(f"request {ref} was refused on {_day(req.decided_at)}: "
                           "nothing may be done under it")
    today = _today(today)
    if req.decision is None and today > req.due_on:
        if req.extended_at is None and today <= due_date(req.received_on, EXTENDED_MONTHS):
            how = (f"record an extension first (fs-consent requests extend {ref} --reason ...; two more "
                   "months, which the requester must be told of within the first month) or decide it")
        elif req.extended_at is None:
            how = "an extension would have ended too: decide it"
        else:
            how = "it was extended once already: decide it"
        raise RequestError(f"request {ref} was due on {req.due_on.isoformat()} and is undecided: {how} "
                           f"(fs-consent requests decide {ref})")
    return req


# --- reading ------------------------------------------------------------------------------------


def _row(req: SubjectRequest, today: dt.date) -> dict:
    return {
        "ref": req.ref, "kind": req.kind, "received": req.received_on.isoformat(), "due": req.due_on.isoformat(),
        "status": status(req, today),
        # negative: days overdue; None once decided
        "days_left": None if req.decision else (req.due_on - today).days,
        "extended": req.extended_at is not None, "decision": req.decision,
        "decided": _day(req.decided_at) if req.decided_at else None,
        "identity_verified_by": req.identity_verified_by,
    }


def _undecided_overdue(today: dt.date):
    return SubjectRequest.select().where(SubjectRequest.decision.is_null() & (SubjectRequest.due_on < today))


def rows(*, overdue_only: bool = False, today: dt.date | None = None) -> list[dict]:
    """The register for ``requests list``, soonest due first (no free text)."""
    today = _today(today)
    query = _undecided_overdue(today) if overdue_only else SubjectRequest.select()
    return [_row(req, today) for req in query.order_by(SubjectRequest.due_on, SubjectRequest.ref)]


def detail(ref: str, *, today: dt.date | None = None) -> dict:
    """One request with its note and reasons, and what was done under it (``requests show``)."""

    req = get(ref)
    row = _row(req, _today(today))
    row.update({
        "registered_at": req.registered_at, "note": req.note,
        "extended_at": req.extended_at, "extension_reason": req.extension_reason,
        "decided_at": req.decided_at, "decided_by": req.decided_by, "decision_reason": req.decision_reason,
        "calls_erased": Call.select().where(Call.personal_erased_reason == f"erasure:{ref}").count(),
        "restrictions": Restriction.select().where(Restriction.request == req.id).count(),
        "restrictions_lifted": Restriction.select().where(Restriction.lift_request == req.id).count(),
        "objections": Objection.select().where(Objection.request == req.id).count(),
        "objections_withdrawn": Objection.select().where(Objection.withdraw_request == req.id).count(),
        "fields_rectified": CallDetail.select().where(CallDetail.request == req.id).count(),
    })
    del row["decided"]
    return row


def counts(today: dt.date) -> dict:
    """For the report and compliance: open (undecided), overdue (of those), granted, refused, extended."""
    undecided = SubjectRequest.select().where(SubjectRequest.decision.is_null())
    return {
        "open": undecided.count(),
        "overdue": _undecided_overdue(today).count(),
        "granted": SubjectRequest.select().where(SubjectRequest.decision == "granted").count(),
        "refused": SubjectRequest.select().where(SubjectRequest.decision == "refused").count(),
        "extended": SubjectRequest.select().where(SubjectRequest.extended_at.is_null(False)).count(),
    }
