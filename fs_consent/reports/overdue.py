"""What is stored past its term: the retention terms in force (the statement's, or the
``[retention]`` section's), the legal holds that suspend them, and the recordings and call
records overdue. Read by ``compliance`` (a violation) and ``report`` (listed)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from ..core.durations import format_duration, parse_duration
from ..privacy.retention import has_personal_fields
from ..store import ledger
from ..store.ledger import Call, Recording

DAY = 86400.0
# the privacy statement's terms (seed/000: "opnames 60 dagen", "belgegevens 1 jaar")
STATEMENT_TERMS = {"recordings": 60 * DAY, "calls": 365 * DAY}


# --- retention terms and legal holds (shared with the report) ------------------------------


@dataclass(frozen=True)
class RetentionTerms:
    recordings: float  # seconds
    calls: float
    source: str  # "config" or "defaults"

    def describe(self) -> str:
        return f"recordings {format_duration(self.recordings)}, call data {format_duration(self.calls)}"


def _seconds(value) -> float:
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    return float(value)


def retention_terms(config) -> RetentionTerms:
    """``[retention]`` from the config (``recordings``, and ``call_records`` or ``calls``) if
    it has that section, else the statement's terms (60 days, 1 year)."""
    section = getattr(config, "retention", None)
    if section is None:
        return RetentionTerms(STATEMENT_TERMS["recordings"], STATEMENT_TERMS["calls"], "defaults")
    values = {}
    for name, aliases in (("recordings", ("recordings",)), ("calls", ("call_records", "calls"))):
        value = next((v for v in (getattr(section, a, None) for a in aliases) if v is not None), None)
        values[name] = STATEMENT_TERMS[name] if value is None else _seconds(value)
    return RetentionTerms(values["recordings"], values["calls"], "config")


@dataclass(frozen=True)
class Holds:
    recording_ids: frozenset = frozenset()
    call_ids: frozenset = frozenset()  # Call.id (integer) of calls whose record is held
    present: bool = False  # a LegalHold table exists
    per_call: bool = False  # holds name calls only: a held call holds all its recordings

    def holds_recording(self, recording_id: str, call_id: int) -> bool:
        return recording_id in self.recording_ids or (self.per_call and call_id in self.call_ids)

    @property
    def count(self) -> int:
        return len(self.call_ids) if self.per_call else len(self.recording_ids)


def legal_holds() -> Holds:
    """Active legal holds, from ``ledger.LegalHold`` if that model and its table exist.

    Tolerates the shapes such a table is likely to have: a ``recording`` and/or ``call``
    foreign key (or ``*_id`` column), and ``released_at`` (active while null) or ``active``.
    """
    model = getattr(ledger, "LegalHold", None)
    if model is None or not model.table_exists():
        return Holds()
    fields = model._meta.fields
    query = model.select()
    if "released_at" in fields:
        query = query.where(fields["released_at"].is_null())
    elif "active" in fields:
        query = query.where(fields["active"] == True)  # noqa: E712 (peewee expression)
    columns = {}
    for name in ("recording", "call"):
        column = fields.get(name) or fields.get(f"{name}_id")
        if column is not None:
            columns[name] = {v for (v,) in query.select(column).tuples() if v is not None}
    return Holds(frozenset(columns.get("recording", ())), frozenset(columns.get("call", ())), True,
                 per_call="recording" not in columns)


@dataclass
class Overdue:
    count: int = 0
    rows: list[dict] = field(default_factory=list)  # the first ``limit``


# recording states that may still have bytes on disk: sealed (ciphertext), failed (plaintext
# kept for recovery), recording (a crash nobody recovered from); the purge's own list
RETAINED_STATES = (ledger.SEALED, ledger.FAILED, ledger.RECORDING)


def overdue_recordings(terms: RetentionTerms, holds: Holds, now: dt.datetime, *, grace: float = 0.0,
                       limit: int = 1000) -> Overdue:
    """Recordings that may still have bytes on disk, started longer ago than their term,
    not under a legal hold."""

    cutoff = now - dt.timedelta(seconds=terms.recordings + grace)
    found = Overdue()
    query = (Recording.select(Recording.id, Recording.started_at, Recording.call, Call.uuid).join(Call)
             .where(Recording.state.in_(RETAINED_STATES) & (Recording.started_at < cutoff))
             .order_by(Recording.started_at).tuples())
    for rec_id, started_at, call_id, call_uuid in query.iterator():
        if holds.holds_recording(rec_id, call_id):
            continue
        found.count += 1
        if len(found.rows) < limit:
            found.rows.append({"recording_id": rec_id, "call_uuid": call_uuid, "counted_from": started_at,
                               "age_days": round((now - started_at).total_seconds() / DAY, 1),
                               "term": format_duration(terms.recordings)})
    return found


def overdue_calls(terms: RetentionTerms, holds: Holds, now: dt.datetime, *, grace: float = 0.0,
                  limit: int = 1000) -> Overdue:
    """Call records that ended longer ago than their term and still hold personal fields
    (the caller's number or a rectified detail: ``retention.has_personal_fields``), not under a
    legal hold. What remains of a call once those are erased is anonymous statistics."""

    cutoff = now - dt.timedelta(seconds=terms.calls + grace)
    found = Overdue()
    query = (Call.select(Call.id, Call.uuid, Call.ended_at)
             .where((Call.ended_at < cutoff) & has_personal_fields())
             .order_by(Call.ended_at).tuples())
    for call_id, call_uuid, ended_at in query.iterator():
        if call_id in holds.call_ids:
            continue
        found.count += 1
        if len(found.rows) < limit:
            found.rows.append({"call_uuid": call_uuid, "counted_from": ended_at,
                               "age_days": round((now - ended_at).total_seconds() / DAY, 1),
                               "term": format_duration(terms.calls)})
    return found
