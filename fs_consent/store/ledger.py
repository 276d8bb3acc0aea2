"""The call ledger: calls, recordings, consent events and the audit trail (peewee).

SQLite in WAL mode is the embedded default; any ``playhouse.db_url`` URL selects
another engine. Personal fields are stored only as a keyed hash (look-up) plus an
AEAD-sealed value (see ``protect.py``); nothing here ever logs them.

The server writes through ``ledger_writer.LedgerWriter``, in a thread of its own, so
a locked or slow database never stalls the calls.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re

from peewee import (
    AutoField,
    BlobField,
    CharField,
    DatabaseProxy,
    DateField,
    DateTimeField,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    PostgresqlDatabase,
    SqliteDatabase,
    TextField,
)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 5  # migrations.py upgrades older databases

database = DatabaseProxy()

# recording states
RECORDING = "recording"
SEALED = "sealed"
DELETED = "deleted"
DISCARDED = "discarded"  # FreeSWITCH wrote no audio (the caller never reached staff)
FAILED = "failed"  # sealing failed; the plaintext stays in the spool for recovery


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


class BaseModel(Model):
    class Meta:
        database = database
        legacy_table_names = False


class Meta(BaseModel):
    key = CharField(primary_key=True)
    value = TextField()


class Call(BaseModel):
    # FreeSWITCH's channel uuid: the same channel can reach the socket twice (sent back into
    # the extension after a transfer), so it is not unique; ``instance`` is (schema 3)
    uuid = CharField(index=True, max_length=64)
    started_at = DateTimeField()
    answered_at = DateTimeField(null=True)
    bridged_at = DateTimeField(null=True)
    ended_at = DateTimeField(null=True, index=True)
    wait_seconds = FloatField(null=True)  # answer -> first bridge with staff
    duration_seconds = FloatField(null=True)  # answer (or start) -> end
    outcome = CharField(null=True, index=True)  # consent.OUTCOMES, None while undecided
    decided_by = CharField(null=True)
    decided_at = DateTimeField(null=True)
    withdrawn_by = CharField(null=True)
    withdrawn_at = DateTimeField(null=True)
    consent_mode = CharField()
    language = CharField()
    prompt_id = CharField()
    prompt_version = CharField()
    caller_hash = CharField(null=True, index=True)
    caller_sealed = BlobField(null=True)
    hangup_cause = CharField(null=True)
    recording_note = CharField(null=True)  # why a granted call has no recording (e.g. no-recipient)
    # schema 2: when and why the personal fields (number, CallDetail) were erased
    personal_erased_at = DateTimeField(null=True)
    personal_erased_reason = CharField(null=True)  # retention | erasure:<request ref>
    # schema 3: this connection on this server (a uuid4 hex the driver makes): every later
    # write of the call finds its row by it, never by an id carried over from an earlier batch
    instance = CharField(null=True, unique=True, max_length=32)
    # schema 4: the node (``[server] node``) that took the call; NULL for calls of earlier releases
    # (one node then). Recovery after a restart ends only its own node's open calls
    node = CharField(null=True, index=True, max_length=64)
    # schema 5: the route the call took (``[recording] route_variable``, e.g. a queue or department;
    # not personal): the route at its first bridge with staff, else at its end
    route = CharField(null=True, index=True, max_length=128)


def call_row(instance: str):
    """The id of the call row of ``instance``, as a subquery for the writes that follow it."""
    return Call.select(Call.id).where(Call.instance == instance)


class Recording(BaseModel):
    id = CharField(primary_key=True, max_length=32)  # uuid4 hex, also the file name
    call = ForeignKeyField(Call, backref="recordings", on_delete="CASCADE")
    state = CharField(index=True)
    state_reason = CharField(null=True)
    started_at = DateTimeField()
    sealed_at = DateTimeField(null=True)
    deleted_at = DateTimeField(null=True)
    size = IntegerField(null=True)
    sha256 = CharField(null=True)
    node = CharField(null=True, max_length=64)  # schema 4: the node that recorded it (its spool held it)


class ConsentEvent(BaseModel):
    """Every decision and withdrawal, as it happened, for the call's history."""

    call = ForeignKeyField(Call, backref="consent_events", on_delete="CASCADE")
    at = DateTimeField()
    kind = CharField()  # decision | withdrawal
    outcome = CharField()
    by = CharField()


class AuditEntry(BaseModel):
    """Append-only, hash-chained: ``hash = sha256(prev_hash + canonical entry)``."""

    seq = AutoField()
    at = DateTimeField()
    actor = CharField()  # "server" or the OS user
    action = CharField()
    object_type = CharField()
    object_id = CharField()
    detail = TextField()  # JSON, pseudonymous ids only
    prev_hash = CharField()
    hash = CharField()


GENESIS_HASH = "0" * 64


# --- retention, legal hold (holds.py, retention.py): new tables only ---------------


class CallFlag(BaseModel):
    """An agent's flag on a call (``aggression``), kept whatever became of the recording."""

    call = ForeignKeyField(Call, backref="flags")
    kind = CharField()
    at = DateTimeField()
    by = CharField()  # consent.BY_AGENT_KEY, or the OS user


class LegalHold(BaseModel):
    """A recording kept beyond its term and against erasure; active while ``released_at`` is NULL."""

    recording = ForeignKeyField(Recording, backref="holds")
    call = ForeignKeyField(Call, backref="holds")  # the recording's call: its record is kept too
    flag = ForeignKeyField(CallFlag, null=True)  # the agent flag that placed it, if any
    reason = CharField()  # aggression | intimidation | other
    case_ref = CharField(null=True)  # None for a hold placed by an agent flag
    note = TextField(null=True)
    placed_at = DateTimeField()
    placed_by = CharField()
    released_at = DateTimeField(null=True, index=True)
    released_by = CharField(null=True)
    release_note = TextField(null=True)


class PurgeRun(BaseModel):
    seq = AutoField()
    started_at = DateTimeField()
    finished_at = DateTimeField(null=True)
    actor = CharField()
    as_of = DateTimeField()
    status = CharField()  # running | done | interrupted
    recordings_deleted = IntegerField(default=0)
    calls_erased = IntegerField(default=0)
    pending_completed = IntegerField(default=0)  # deletions an interrupted run left
    node = CharField(null=True, max_length=64)  # schema 4: where it ran (the refusal of a second purge names it)


class PurgePending(BaseModel):
    """Recordings a purge marked deleted whose files it has not yet removed (crash safety)."""

    recording = ForeignKeyField(Recording, primary_key=True)
    run = ForeignKeyField(PurgeRun)
    batch = IntegerField()



# --- data subject rights (subject_requests.py, subjects.py): schema version 2 ----------------


class SubjectRequest(BaseModel):
    """A data subject's request in the register; every subject action names one."""

    ref = CharField(unique=True)
    kind = CharField()  # access | erase | restrict | rectify | object
    received_on = DateField()
    due_on = DateField(index=True)  # received + 1 calendar month; + 3 after an extension
    identity_verified_by = CharField()  # the OS user who recorded that the identity was checked
    registered_at = DateTimeField()
    note = TextField(null=True)
    extended_at = DateTimeField(null=True)
    extension_reason = TextField(null=True)
    decision = CharField(null=True, index=True)  # granted | refused; NULL while open
    decision_reason = TextField(null=True)
    decided_at = DateTimeField(null=True)
    decided_by = CharField(null=True)


class Restriction(BaseModel):
    """Art. 18: a call (record and recordings) that may only be stored; active while ``lifted_at`` is NULL.

    Retention still applies: a restriction never makes data live longer.
    """

    call = ForeignKeyField(Call, backref="restrictions", on_delete="CASCADE")
    request = ForeignKeyField(SubjectRequest)
    placed_at = DateTimeField()
    placed_by = CharField()
    lifted_at = DateTimeField(null=True, index=True)
    lifted_by = CharField(null=True)
    lift_request = ForeignKeyField(SubjectRequest, null=True)


class Objection(BaseModel):
    """Art. 21: calls from this number are not recorded while ``withdrawn_at`` is NULL."""

    caller_hash = CharField(index=True)  # protect.FieldProtector.lookup_hash("phone", ...)
    request = ForeignKeyField(SubjectRequest)
    placed_at = DateTimeField()
    placed_by = CharField()
    withdrawn_at = DateTimeField(null=True)
    withdrawn_by = CharField(null=True)
    withdraw_request = ForeignKeyField(SubjectRequest, null=True)

    #: ``caller_hash`` of a withdrawn objection once erased (by an erasure, or the purge after the
    #: call-record term): matches no number, the row stays as history
    ERASED_HASH = "erased"


class CallDetail(BaseModel):
    """A personal field of a call set by rectification (name, address, subject), sealed only."""

    call = ForeignKeyField(Call, backref="details", on_delete="CASCADE")
    field = CharField()  # name | address | subject; also the protect.py kind
    value_sealed = BlobField()
    updated_at = DateTimeField()
    updated_by = CharField()
    request = ForeignKeyField(SubjectRequest)

    class Meta:
        indexes = ((("call", "field"), True),)


class AuditCheckpoint(BaseModel):
    """A signed statement "the trail's entry ``seq`` has hash ``head_hash``"."""

    id = AutoField()
    seq = IntegerField(index=True)  # the newest entry covered
    head_hash = CharField()  # its hash
    signed_at = DateTimeField()  # UTC
    public_key = CharField()  # ed25519:<base64>, as keys.signing_public_key
    signature = CharField()  # base64 Ed25519 signature over checkpoint_message()


# --- nodes (nodes.py): schema version 4 -------------------------------------------------------


class Node(BaseModel):
    """A server sharing this ledger: each upserts its row at start and every ``nodes.HEARTBEAT_S``."""

    name = CharField(primary_key=True, max_length=64)  # [server] node
    version = CharField()  # its fs-consent release
    started_at = DateTimeField()  # its current (or last) run
    last_seen = DateTimeField()  # its last sign of life
    signing_key = CharField(null=True)  # ed25519:<base64>: its checkpoints' key (None: unreadable)
    stopped_at = DateTimeField(null=True)  # set by a clean stop, cleared by the next start


# --- staff on the call and the listening room: schema version 5 --------------------------------


class CallStaff(BaseModel):
    """A member of staff who took (part of) a call: one row per bridge, a transfer adds the next.

    The staff identifier (``[recording] staff_variable``, by default the bridged leg's callee
    number or extension) is personal data: stored as the caller's number is, a keyed hash of
    kind ``staff`` for look-up and a sealed value, never logged.
    """

    call = ForeignKeyField(Call, backref="staff", on_delete="CASCADE")
    seq = IntegerField()  # 1, 2, ... in bridge order
    staff_hash = CharField(index=True)
    staff_sealed = BlobField()
    route = CharField(null=True, index=True, max_length=128)  # the route variable at this bridge
    bridged_at = DateTimeField()
    unbridged_at = DateTimeField(null=True)

    class Meta:
        indexes = ((("call", "seq"), True),)

    #: ``staff_hash`` and ``staff_sealed`` of an erased member of staff (by an erasure, or the purge
    #: after the call-record term): the hash matches no identifier (hashes are hex), the row stays
    ERASED_HASH = "erased"
    ERASED_SEAL = b""


class StaffTeam(BaseModel):
    """A member of staff in a team (``fs-consent staff add``): a coach sees the recordings of
    the calls taken by the staff of their teams."""

    staff_hash = CharField(index=True)
    staff_sealed = BlobField()
    team = CharField(index=True, max_length=64)
    added_at = DateTimeField()
    added_by = CharField()

    class Meta:
        indexes = ((("staff_hash", "team"), True),)

    #: a team's name, here and in ``ListenAccountTeam`` (checked by ``staff add`` and the account commands)
    NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._ -]{0,62}[A-Za-z0-9._-])?")
    NAME_RULE = "1 to 64 letters, digits, spaces and . _ -, starting with a letter or digit, no trailing space"


class ListenAccount(BaseModel):
    """A listening room account (``fs-consent listen account ...``)."""

    name = CharField(primary_key=True, max_length=64)  # the sign-in name
    role = CharField()  # coach | privacy_officer
    password_hash = CharField(null=True)  # "scrypt$n$r$p$salt$hash"; None: reverse-proxy sign-in only
    failed_signins = IntegerField(default=0)  # bad passwords since the last good one
    locked_until = DateTimeField(null=True)
    created_at = DateTimeField()
    created_by = CharField()
    disabled_at = DateTimeField(null=True)


class ListenAccountTeam(BaseModel):
    """A team whose recordings a coach account may hear."""

    account = ForeignKeyField(ListenAccount, backref="teams", on_delete="CASCADE")
    team = CharField(max_length=64)

    class Meta:
        indexes = ((("account", "team"), True),)


class ListenSession(BaseModel):
    """A signed-in browser: the cookie holds a random token, the ledger only its SHA-256."""

    token_hash = CharField(primary_key=True, max_length=64)
    account = ForeignKeyField(ListenAccount, backref="sessions", on_delete="CASCADE")
    csrf_token = CharField()
    created_at = DateTimeField()
    last_seen = DateTimeField()
    expires_at = DateTimeField(index=True)


MODELS = [Meta, Call, Recording, ConsentEvent, AuditEntry, CallFlag, LegalHold, PurgeRun, PurgePending,
          SubjectRequest, Restriction, Objection, CallDetail, AuditCheckpoint, Node,
          CallStaff, StaffTeam, ListenAccount, ListenAccountTeam, ListenSession]


def entry_digest(prev_hash: str, at: dt.datetime, actor: str, action: str, object_type: str,
                 object_id: str, detail: str) -> str:
    canonical = json.dumps([at.isoformat(), actor, action, object_type, object_id, detail],
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def sql(text: str, params: tuple | list = ()):
    """Run hand-written SQL (``?`` placeholders) on the ledger; returns the cursor.

    For the server's hot writes, one statement per fact: peewee's query building costs more
    than SQLite's own work, and it runs in the database thread, which holds the GIL against
    the event loop. The text is standard SQL (SQLite 3.24+ and PostgreSQL): the placeholder
    is the engine's own.
    """
    db = database.obj
    if db.param != "?":
        text = _PARAMS.get(text) or _PARAMS.setdefault(text, text.replace("?", db.param))
    return db.execute_sql(text, params)


_PARAMS: dict[str, str] = {}
_LAST_HASH = "SELECT hash FROM audit_entry ORDER BY seq DESC LIMIT 1"
_INSERT_AUDIT = ("INSERT INTO audit_entry (at, actor, action, object_type, object_id, detail, prev_hash, hash) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")


CHAIN_LOCK = 0x66735F6175646974  # pg_advisory_xact_lock key of the audit chain's head ("fs_audit")


def lock_chain() -> None:
    """Hold the audit chain's head until this transaction ends: on PostgreSQL, where nodes
    append at once, two entries must never chain to the same head (a fork). SQLite already
    has one writer at a time (BEGIN IMMEDIATE). Taken again in the same transaction: a no-op."""
    db = database.obj
    if isinstance(db, PostgresqlDatabase):
        db.execute_sql(_LOCK_CHAIN, (CHAIN_LOCK,))


_LOCK_CHAIN = "SELECT pg_advisory_xact_lock(%s)"


def append_audit(actor: str, action: str, object_type: str, object_id: str, **detail) -> AuditEntry:
    """Append one audit entry, chained to the last one (call inside or outside a transaction)."""
    detail_json = json.dumps(detail, sort_keys=True, separators=(",", ":"), default=str)
    db = database.obj
    with db.atomic():
        lock_chain()  # before the head is read: it stays the head until this transaction commits
        # plain SQL: this runs for every decision and seal, and peewee's query building costs more
        last = db.execute_sql(_LAST_HASH).fetchone()
        prev = last[0] if last else GENESIS_HASH
        at = utcnow()
        digest = entry_digest(prev, at, actor, action, object_type, object_id, detail_json)
        values = dict(at=at, actor=actor, action=action, object_type=object_type, object_id=object_id,
                      detail=detail_json, prev_hash=prev, hash=digest)
        if not isinstance(db, SqliteDatabase):
            return AuditEntry.create(**values)  # RETURNING gives the seq there
        cursor = db.execute_sql(_INSERT_AUDIT, (at, actor, action, object_type, object_id, detail_json, prev,
                                                digest))
        return AuditEntry(seq=cursor.lastrowid, **values)


def os_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except Exception:  # no passwd entry (containers)
        return f"uid:{os.getuid()}"
