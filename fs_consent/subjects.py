"""Data subject rights on the ledger: find a number's calls, restriction, erasure, rectification, objection.

A number is found only through its keyed hash (``protect.FieldProtector.lookup_hash``),
never by opening every sealed value, so ``find`` is one indexed look-up whatever the
size of the ledger. Every written form of a number (``06 ...``, ``+316...``,
``0031 6 ...``, ``040-...``) normalises to the same E.164 value and so the same hash.
"""

from __future__ import annotations

from pathlib import Path

from . import keys
from .ledger import Call, Restriction
from .protect import FieldProtector, normalise_phone


class SubjectError(Exception):
    """Bad input for a subject command (unparseable number, unknown call...); nothing changed."""


class RecordingRestricted(SubjectError):
    """Playing or exporting was refused: the call is restricted (art. 18) and no legal claim was given."""


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
