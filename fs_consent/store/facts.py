"""The consent facts a call produces, as data, and how each is written to the ledger.

A fact names the rows it touches by what identifies them: the call by its
``instance`` (this connection on this server, ``Call.instance``), a recording by its
id. Never by an autoincrement id carried over from an earlier write, so a write that
failed and was retried, or one replayed from the journal after a crash, can only land
on its own call.

Every ``apply`` is idempotent (an insert that finds its row changes nothing; an
update sets the same values again), which is what makes replaying the journal safe.
Facts are plain JSON (``to_json`` / ``from_json``) so the journal can hold them.

The facts every call writes are one hand-written statement each (``ledger.sql``), the
idempotence in the statement itself (``ON CONFLICT DO NOTHING``, ``NOT EXISTS``), not a
SELECT before it: they run in the database thread, whose Python holds the GIL against
the event loop that plays every caller's prompt.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
from dataclasses import dataclass
from typing import ClassVar

from peewee import IntegrityError

from . import audit_actions, holds, ledger, recordings
from .ledger import Call, Recording


def _at(value: dt.datetime | str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if isinstance(value, str) else value


@dataclass(frozen=True)
class Fact:
    kind: ClassVar[str]

    def apply(self, vault) -> None:  # pragma: no cover - every fact defines it
        raise NotImplementedError

    def to_json(self) -> str:
        # the fields are flat (str, numbers, bool, datetime, bytes, None): no asdict (a deep copy)
        fields = {"kind": self.kind}
        for name in self._names():
            value = getattr(self, name)
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            elif isinstance(value, bytes):
                value = base64.b64encode(value).decode()
            fields[name] = value
        return _dumps(fields)

    @classmethod
    def _names(cls) -> tuple[str, ...]:
        names = cls.__dict__.get("_field_names")
        if names is None:
            names = tuple(f.name for f in dataclasses.fields(cls))
            cls._field_names = names  # a plain class attribute, not a dataclass field
        return names


_dumps = json.JSONEncoder(separators=(",", ":"), sort_keys=True).encode


@dataclass(frozen=True)
class CallOpened(Fact):
    kind: ClassVar[str] = "call.opened"
    instance: str
    uuid: str
    started_at: dt.datetime
    consent_mode: str
    language: str
    prompt_id: str
    prompt_version: str
    caller_hash: str | None
    caller_sealed: bytes | None
    recording_note: str | None
    node: str | None = None  # [server] node (None: a journal line written before schema 4)

    SQL: ClassVar[str] = (
        "INSERT INTO call (uuid, instance, started_at, consent_mode, language, prompt_id, prompt_version, "
        "caller_hash, caller_sealed, recording_note, node) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (instance) DO NOTHING")

    def apply(self, vault) -> None:
        ledger.sql(self.SQL, (self.uuid, self.instance, _at(self.started_at), self.consent_mode, self.language,
                              self.prompt_id, self.prompt_version, self.caller_hash, self.caller_sealed,
                              self.recording_note, self.node))


@dataclass(frozen=True)
class ConsentDecided(Fact):
    """A decision (``kind`` decision) or a withdrawal (``kind`` withdrawal) during the call."""

    kind: ClassVar[str] = "consent.decided"
    instance: str
    uuid: str
    what: str  # decision | withdrawal
    outcome: str
    by: str
    at: dt.datetime

    # the event once: not again when the journal replays it (the same call, moment and kind)
    INSERT: ClassVar[str] = (
        "INSERT INTO consent_event (call_id, at, kind, outcome, by) SELECT c.id, ?, ?, ?, ? FROM call c "
        "WHERE c.instance = ? AND NOT EXISTS (SELECT 1 FROM consent_event e WHERE e.call_id = c.id "
        "AND e.at = ? AND e.kind = ?)")
    DECIDED: ClassVar[str] = "UPDATE call SET outcome = ?, decided_by = ?, decided_at = ? WHERE instance = ?"
    WITHDRAWN: ClassVar[str] = "UPDATE call SET outcome = ?, withdrawn_by = ?, withdrawn_at = ? WHERE instance = ?"

    def apply(self, vault) -> None:
        at = _at(self.at)
        if not ledger.sql(self.INSERT, (at, self.what, self.outcome, self.by, self.instance, at,
                                        self.what)).rowcount:
            if ledger.sql("SELECT 1 FROM call WHERE instance = ?", (self.instance,)).fetchone() is None:
                raise IntegrityError("consent fact for a call that has no row")  # said, never dropped unseen
            return  # written before: the journal replays it
        ledger.sql(self.WITHDRAWN if self.what == "withdrawal" else self.DECIDED,
                   (self.outcome, self.by, at, self.instance))
        ledger.append_audit("server", audit_actions.CONSENT_WITHDRAWAL if self.what == "withdrawal" else audit_actions.CONSENT_DECISION, "call", self.uuid, outcome=self.outcome, by=self.by)


@dataclass(frozen=True)
class RecordingStarted(Fact):
    kind: ClassVar[str] = "recording.started"
    instance: str
    recording_id: str
    at: dt.datetime
    node: str | None = None  # the node whose spool holds it (None: a journal line from before schema 4)

    def apply(self, vault) -> None:
        recordings.started(self.recording_id, self.instance, _at(self.at), node=self.node)


@dataclass(frozen=True)
class CallEnded(Fact):
    kind: ClassVar[str] = "call.ended"
    instance: str
    answered_at: dt.datetime | None
    bridged_at: dt.datetime | None
    ended_at: dt.datetime
    duration_seconds: float | None
    wait_seconds: float | None
    hangup_cause: str | None

    SQL: ClassVar[str] = (
        "UPDATE call SET answered_at = ?, bridged_at = ?, ended_at = ?, duration_seconds = ?, wait_seconds = ?, "
        "hangup_cause = ? WHERE instance = ?")

    def apply(self, vault) -> None:
        ledger.sql(self.SQL, (_at(self.answered_at), _at(self.bridged_at), _at(self.ended_at),
                              self.duration_seconds, self.wait_seconds, self.hangup_cause, self.instance))


@dataclass(frozen=True)
class CallFlagged(Fact):
    kind: ClassVar[str] = "call.flagged"
    instance: str
    uuid: str
    flag: str
    by: str
    at: dt.datetime

    def apply(self, vault) -> None:
        call = Call.select(Call.id).where(Call.instance == self.instance).scalar()
        if ledger.CallFlag.select().where((ledger.CallFlag.call == call) & (ledger.CallFlag.kind == self.flag)
                                          ).exists():
            return
        holds.flag_call(call, self.uuid, self.flag, by=self.by, at=_at(self.at))


@dataclass(frozen=True)
class RecordingDeleted(Fact):
    """The files are gone already (the driver deletes them first); this is the ledger's part.

    ``sealed``: the recording was sealed during the call and may be under a legal hold
    (the agent's flag): then the ciphertext is kept and the refusal is audited instead.
    """

    kind: ClassVar[str] = "recording.deleted"
    recording_id: str
    reason: str
    at: dt.datetime
    sealed: bool = False

    def apply(self, vault) -> None:
        if self.sealed:  # its plaintext left the spool when it was sealed
            recordings.delete_recording(self.recording_id, reason=self.reason, actor="server", vault=vault,
                                        spool_dir=None, at=_at(self.at))
        else:
            recordings.record_deleted(self.recording_id, reason=self.reason, at=_at(self.at))


@dataclass(frozen=True)
class RecordingDiscarded(Fact):
    kind: ClassVar[str] = "recording.discarded"
    recording_id: str

    def apply(self, vault) -> None:
        recordings.not_sealed(self.recording_id, ledger.DISCARDED, "no-audio")


@dataclass(frozen=True)
class RecordingSealed(Fact):
    kind: ClassVar[str] = "recording.sealed"
    recording_id: str
    size: int
    sha256: str
    at: dt.datetime

    def apply(self, vault) -> None:
        if recordings.sealed(self.recording_id, size=self.size, sha256=self.sha256, at=_at(self.at)):
            return
        rec = Recording.get_or_none(Recording.id == self.recording_id)
        if rec is None or rec.state == ledger.DELETED:  # withdrawn while it was being sealed
            recordings.remove_files(self.recording_id, vault, None)


@dataclass(frozen=True)
class RecordingNotSealed(Fact):
    """Sealing failed for good (the plaintext is gone) or is waiting (``failed``: kept for recovery)."""

    kind: ClassVar[str] = "recording.not-sealed"
    recording_id: str
    state: str
    reason: str

    def apply(self, vault) -> None:
        recordings.not_sealed(self.recording_id, self.state, self.reason)


@dataclass(frozen=True)
class StaffBridged(Fact):
    """A bridge to a member of staff (``CallStaff``, the ``seq``-th of the call): the identifier
    as a keyed hash (kind ``staff``) and sealed, never in the clear."""

    kind: ClassVar[str] = "staff.bridged"
    instance: str
    seq: int
    staff_hash: str
    staff_sealed: bytes
    route: str | None
    at: dt.datetime

    SQL: ClassVar[str] = (
        "INSERT INTO call_staff (call_id, seq, staff_hash, staff_sealed, route, bridged_at) "
        "SELECT c.id, ?, ?, ?, ?, ? FROM call c WHERE c.instance = ? ON CONFLICT (call_id, seq) DO NOTHING")

    def apply(self, vault) -> None:
        if not ledger.sql(self.SQL, (self.seq, self.staff_hash, self.staff_sealed, self.route, _at(self.at),
                                     self.instance)).rowcount:
            if ledger.sql("SELECT 1 FROM call WHERE instance = ?", (self.instance,)).fetchone() is None:
                raise IntegrityError("staff fact for a call that has no row")  # said, never dropped unseen


@dataclass(frozen=True)
class StaffUnbridged(Fact):
    """The bridge ``seq`` ended (CHANNEL_UNBRIDGE, the next bridge, or the end of the call)."""

    kind: ClassVar[str] = "staff.unbridged"
    instance: str
    seq: int
    at: dt.datetime

    SQL: ClassVar[str] = (
        "UPDATE call_staff SET unbridged_at = ? WHERE seq = ? AND call_id = (SELECT id FROM call WHERE instance = ?)")

    def apply(self, vault) -> None:
        ledger.sql(self.SQL, (_at(self.at), self.seq, self.instance))


@dataclass(frozen=True)
class CallRouted(Fact):
    """The route the call took (``[recording] route_variable``): at its first bridge, else at its end."""

    kind: ClassVar[str] = "call.routed"
    instance: str
    route: str

    SQL: ClassVar[str] = "UPDATE call SET route = ? WHERE instance = ?"

    def apply(self, vault) -> None:
        ledger.sql(self.SQL, (self.route, self.instance))


KINDS: dict[str, type[Fact]] = {cls.kind: cls for cls in (
    CallOpened, ConsentDecided, RecordingStarted, CallEnded, CallFlagged, RecordingDeleted, RecordingDiscarded,
    RecordingSealed, RecordingNotSealed, StaffBridged, StaffUnbridged, CallRouted)}


def from_json(text: str) -> Fact:
    data = json.loads(text)
    cls = KINDS[data.pop("kind")]
    for field in dataclasses.fields(cls):
        if "bytes" in str(field.type) and isinstance(data.get(field.name), str):
            data[field.name] = base64.b64decode(data[field.name])
    return cls(**data)
