"""Objection (GDPR art. 21): a number whose calls are not recorded while the objection stands.

An objection names the caller by the look-up hash of the number
(``subjects.phone_hash``), so every written form of the number matches, and a
request in the register (``subject_requests.py``). It is active until withdrawn
(by a request too); the rows stay as the history of what was decided.

While an objection is active the server refuses recording at the start of each call
from that number (``consent.BY_OBJECTION``: see ``driver.CallSession``). The objection
is about future processing only: recordings made before it stay until they are erased
(their own right) or their term ends. Placing and withdrawing are audited with the
request reference and the objection's id, never the number or its hash.
"""

from __future__ import annotations

from ..store import audit_actions, ledger
from ..store.ledger import Objection, SubjectRequest
from .subjects import SubjectError


def objects(caller_hash: str) -> bool:
    """Whether an objection for this number is in force: the driver asks this once per call.

    Plain SQL on the ``caller_hash`` index: peewee's query building would cost more than
    the look-up itself, on the path to the caller's first prompt.
    """
    db = ledger.database
    sql = (f"SELECT 1 FROM objection WHERE caller_hash = {db.param} AND withdrawn_at IS NULL LIMIT 1")
    return db.execute_sql(sql, (caller_hash,)).fetchone() is not None


def active(caller_hash: str) -> Objection | None:
    """The objection in force for this number (one indexed query), or None."""
    return (Objection.select()
            .where((Objection.caller_hash == caller_hash) & Objection.withdrawn_at.is_null())
            .order_by(Objection.id).first())


def _since(objection: Objection) -> str:
    return (f"since {objection.placed_at.isoformat(timespec='seconds')}Z, "
            f"request {objection.request.ref}")


def place(caller_hash: str, request: SubjectRequest, *, actor: str) -> Objection:
    """Record an objection for the number; SubjectError if one is already in force."""
    if not caller_hash:
        raise SubjectError("an objection needs a phone number")
    with ledger.database.atomic():
        standing = active(caller_hash)
        if standing is not None:
            raise SubjectError(f"this number already objects ({_since(standing)}); "
                               "its calls are not recorded")
        objection = Objection.create(caller_hash=caller_hash, request=request, placed_at=ledger.utcnow(),
                                     placed_by=actor)
        ledger.append_audit(actor, audit_actions.SUBJECT_OBJECT, "request", request.ref, objection=objection.id)
    return objection


def withdraw(caller_hash: str, request: SubjectRequest, *, actor: str) -> Objection:
    """End the objection in force for the number: its next call is asked for consent again."""
    with ledger.database.atomic():
        objection = active(caller_hash) if caller_hash else None
        if objection is None:
            raise SubjectError("this number has no objection in force: there is nothing to withdraw")
        objection.withdrawn_at, objection.withdrawn_by = ledger.utcnow(), actor
        objection.withdraw_request = request
        objection.save()
        ledger.append_audit(actor, audit_actions.SUBJECT_WITHDRAW_OBJECTION, "request", request.ref,
                            objection=objection.id)
    return objection
